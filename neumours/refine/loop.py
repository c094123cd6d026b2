"""Render-loss refinement: correct an INR's weights from an image loss on rendered views.

The loop (:func:`refine`): per step, the gradient of the image loss with
respect to the INR's weights by one of two paths, plus an optional
:class:`Anchor` penalty, then one AdamW step; a short torch loop over
:mod:`neumours.torch` (INR, cache, renderer as autograd functions).

- path ``"cache"`` (a), :mod:`neumours.refine.cache_path`: render the cached
  class-probability volume, back-propagate to it, then through the INR over the
  voxels that received gradient;
- path ``"direct"`` (b), :mod:`neumours.refine.direct_path`: evaluate the INR
  at the ray samples themselves and back-propagate straight to the weights.

Targets are images from given cameras (:func:`neumours.render.views.render_label_views`
makes them from a corrected label volume) with optional per-pixel weights (0 = don't care).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from neumours.device import download, empty_buffer, upload
from neumours.kernels.probabilities import argmax_labels
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.refine.cache_path import cache_path_gradients, cache_path_loss, view_tensors
from neumours.refine.direct_path import direct_path_gradients, direct_path_loss
from neumours.render.camera import Camera
from neumours.render.transfer import RenderSettings
from neumours.torch import INRModule
from neumours.train.optim import apply_gradients

#: The gradient paths by name, in their device-buffer form (add into the INR's gradient buffer).
PATHS = {"cache": cache_path_gradients, "direct": direct_path_gradients}
__all__ = ["LOSSES", "PATHS", "Anchor", "add_terms", "anchor_gradients", "refine", "weight_gradients"]


def weight_gradients(inr: INR) -> dict[str, np.ndarray]:
    """The gradient buffer as named arrays (docs/method.md names and shapes)."""
    inr.bridge.pull_grads()
    flat = download(inr.bridge.grads_buffer, (inr.layout.total,))
    return {name: view.copy() for name, view in inr.layout.views(flat).items()}


class Anchor:
    """Keeps the model's predictions at fixed points close to what they were when the anchor was made.

    Holds points (voxel positions of cases in ``vols``) and the model's class
    probabilities there at construction; :meth:`add_gradients` adds ``weight`` x
    the mean KL divergence of the current model's probabilities from those soft
    targets (zero at the start, growing as predictions drift). Two uses: points
    on *other* cases (the correction of one case must not spoil the rest of the
    data set: :meth:`sample`), and points on the *corrected case itself* away
    from the correction (a stroke on one slice must not relabel the whole
    volume: :meth:`keep_rest`).

    Args:
        positions: (P, 3) voxel indices; case_ids: (P,) index into ``vols`` of each point.
    """

    def __init__(self, inr: INR, vols: CaseVolumes, positions: np.ndarray, case_ids: np.ndarray,
                 weight: float = 1.0):
        cfg = inr.config
        positions = np.asarray(positions, dtype=np.float32)
        case_ids = np.asarray(case_ids, dtype=np.uint32)
        if positions.ndim != 2 or positions.shape[1] != 3 or case_ids.shape != (len(positions),) or not len(positions):
            raise ValueError(f"anchor points must be (P, 3) positions with (P,) case ids, got "
                             f"{positions.shape} and {case_ids.shape}")
        points = len(positions)
        self.inr, self.weight, self.count = inr, float(weight), points
        self.coords = empty_buffer(inr.device, points * 3)
        self.patches = empty_buffer(inr.device, points * cfg.patch_dim)
        gather_inputs(cfg, vols, upload(inr.device, positions), upload(inr.device, case_ids, np.uint32), points,
                      self.coords, self.patches)
        self.logits = empty_buffer(inr.device, points * cfg.num_classes)
        self._labels = empty_buffer(inr.device, points, np.uint32)
        self._probs = empty_buffer(inr.device, points * cfg.num_classes)
        self.targets = self._probabilities()

    @classmethod
    def sample(cls, inr: INR, vols: CaseVolumes, points: int = 4096, weight: float = 1.0, seed: int = 0) -> Anchor:
        """``points`` voxels drawn uniformly from all cases of ``vols``."""
        rng = np.random.default_rng(seed)
        case_ids = rng.integers(0, len(vols.shapes), points).astype(np.uint32)
        dims = np.array(vols.shapes)[case_ids]
        positions = np.floor(rng.random((points, 3)) * dims)
        return cls(inr, vols, positions, case_ids, weight)

    @classmethod
    def keep_rest(cls, inr: INR, vols: CaseVolumes, labels: np.ndarray, corrected: np.ndarray,
                  points: int = 8192, weight: float = 1.0, near: float = 0.5, radius: float = 8.0,
                  seed: int = 0, case_index: int = 0) -> Anchor:
        """Voxels of case ``case_index`` outside ``corrected``: a share ``near`` of ``points``
        within ``radius`` voxels of the correction, the rest from the whole case.

        The ring around a correction is where its change spreads first (the INR
        sees the same intensities there), so it is held most densely. Each share
        is stratified by the current labels: every class present gets an equal
        part (all its voxels where it has fewer), so a small class (enhancing
        tumour next to a correction) is held as firmly as the background.

        Args:
            labels: (X, Y, Z) the model's current labels of that case.
            corrected: (X, Y, Z) bool, the voxels the correction sets (never anchored).
        """
        from scipy import ndimage

        rng = np.random.default_rng(seed)
        corrected = np.asarray(corrected, dtype=bool)
        free = ~corrected
        if not free.any():
            raise ValueError("every voxel is corrected: nothing left to keep")
        ring = free & (ndimage.distance_transform_edt(free) <= radius) if corrected.any() else np.zeros_like(free)
        n_near = int(round(points * near)) if ring.any() else 0
        chosen = [_stratified(rng, ring, labels, n_near, inr.config.num_classes)] if n_near else []
        chosen.append(_stratified(rng, free & ~ring, labels, points - n_near, inr.config.num_classes))
        flat = np.concatenate(chosen)
        positions = np.stack(np.unravel_index(flat, labels.shape), axis=1)
        return cls(inr, vols, positions, np.full(len(flat), case_index, np.uint32), weight)

    def _probabilities(self) -> np.ndarray:
        """The current model's class probabilities at the anchor points, (points, num_classes) float64."""
        classes = self.inr.config.num_classes
        self.workspace = self.inr.forward_device(self.coords, self.patches, self.count, self.logits)
        argmax_labels(self.inr.device, self.logits, self._labels, 0, self.count, self.count, classes,
                      probs=self._probs)
        return download(self._probs, (classes, self.count)).T.astype(np.float64)

    def add_gradients(self) -> float:
        """Add the penalty's weight gradients into the INR's buffer; returns the penalty (CE - entropy)."""
        p = self._probabilities()
        q = self.targets
        penalty = float(self.weight * (q * (np.log(q + 1e-12) - np.log(p + 1e-12))).sum(axis=1).mean())
        grad = (self.weight * (p - q) / self.count).astype(np.float32)
        self.inr.backward_device(self.coords, self.patches, self.count, upload(self.inr.device, grad), self.workspace)
        return penalty


def _stratified(rng: np.random.Generator, where: np.ndarray, labels: np.ndarray, points: int,
                num_classes: int) -> np.ndarray:
    """Up to ``points`` flat indices of ``where``, an equal share per class of ``labels`` present there."""
    present = [c for c in range(num_classes) if (where & (labels == c)).any()]
    if not present or points < 1:
        return np.zeros(0, np.int64)
    share = max(1, points // len(present))
    chosen = []
    for c in present:
        flat = np.flatnonzero(where & (labels == c))
        chosen.append(flat if len(flat) <= share else rng.choice(flat, share, replace=False))
    return np.concatenate(chosen)


def anchor_gradients(anchors: Anchor | Sequence[Anchor] | None) -> float:
    """Add every anchor's penalty gradients into the INR's buffer; returns the summed penalty.

    Any term with ``add_gradients() -> float`` may be among them (e.g. a
    :class:`neumours.refine.voxel_loss.VoxelLoss` refined together with the image loss)."""
    if anchors is None:
        return 0.0
    if isinstance(anchors, Anchor):
        anchors = [anchors]
    return float(sum(anchor.add_gradients() for anchor in anchors))


#: The torch losses of the gradient paths by name (what :func:`refine` steps on).
LOSSES = {"cache": cache_path_loss, "direct": direct_path_loss}


def add_terms(net: INRModule, terms: Anchor | Sequence[Anchor] | None) -> float:
    """Add the weight gradients of device-side terms (anchors, a voxel loss) into ``net``'s ``.grad``;
    returns their summed penalty. The terms run their own Slang backward into the INR's gradient buffer."""
    if terms is None:
        return 0.0
    inr = net.inr
    inr.zero_grad()
    penalty = anchor_gradients(terms)
    inr.bridge.pull_grads()
    with torch.no_grad():
        for param, grad in zip(net.ordered_parameters(), inr.layout.views(inr.bridge.grads).values()):
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)
    return penalty


def refine(inr: INR, vols: CaseVolumes, spacing, cameras: Sequence[Camera], settings: RenderSettings,
           targets: Sequence[np.ndarray], steps: int = 20, lr: float = 1e-4,
           anchor: Anchor | Sequence[Anchor] | None = None,
           weights: Sequence[np.ndarray | None] | None = None, path: str = "cache",
           progress: bool = False, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Optimise the INR's weights in place so its rendered probabilities match the targets.

    Each step, in torch over :mod:`neumours.torch`: the image loss summed over views
    by ``path`` (``"cache"`` or ``"direct"``, see the module docstring), computed where
    the images live (no host copy), ``backward()``, plus the anchor's penalty
    gradients (or the sum of several anchors'), then one AdamW step with gradients
    clipped to norm 1. ``on_step`` is called with each step's row as soon as it is
    done (progress to a page).

    Returns:
        one ``{"step", "image_loss", "anchor", "seconds"}`` row per step (losses before the step).
    """
    import time

    from tqdm import tqdm

    if path not in LOSSES:
        raise ValueError(f"path must be one of {sorted(LOSSES)}, got {path!r}")
    net = INRModule.wrap(inr)
    params = net.ordered_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ts, ws = view_tensors(inr, targets, weights)
    extra = {"host_weights": weights} if path == "direct" else {}
    rows = []
    for step in tqdm(range(steps), desc="refine", unit="step", disable=not progress):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, _ = LOSSES[path](net, vols, spacing, cameras, settings, ts, ws, **extra)
        loss.backward()
        penalty = add_terms(net, anchor)
        apply_gradients(inr.bridge, [optimizer], 1.0, params, pull=False)
        rows.append({"step": step, "image_loss": float(loss.detach()), "anchor": penalty,
                     "seconds": time.perf_counter() - start})
        if on_step is not None:
            on_step(rows[-1])
    return rows
