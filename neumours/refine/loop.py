"""Render-loss refinement: correct an INR's weights from an image loss on rendered views.

The loop (:func:`refine`): per step, the gradient of the image loss with
respect to the INR's weights by one of two paths, plus an optional
:class:`Anchor` penalty, then one AdamW step through the torch bridge.

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

from neumours.device import download, empty_buffer, upload
from neumours.kernels.probabilities import argmax_labels
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.refine.cache_path import cache_path_gradients
from neumours.refine.direct_path import direct_path_gradients
from neumours.render.camera import Camera
from neumours.render.transfer import RenderSettings

#: The gradient paths by name.
PATHS = {"cache": cache_path_gradients, "direct": direct_path_gradients}
__all__ = ["PATHS", "Anchor", "refine", "weight_gradients"]


def weight_gradients(inr: INR) -> dict[str, np.ndarray]:
    """The gradient buffer as named arrays (docs/method.md names and shapes)."""
    inr.bridge.pull_grads()
    flat = download(inr.bridge.grads_buffer, (inr.layout.total,))
    return {name: view.copy() for name, view in inr.layout.views(flat).items()}


class Anchor:
    """Keeps predictions on other cases close to the original model while refining.

    Holds points sampled from other cases and the original model's class
    probabilities there; :meth:`add_gradients` adds ``weight`` x the mean
    cross-entropy of the current model against those soft targets (zero at the
    start, growing as predictions drift).
    """

    def __init__(self, inr: INR, vols: CaseVolumes, points: int = 4096, weight: float = 1.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        cfg = inr.config
        case_ids = rng.integers(0, len(vols.shapes), points).astype(np.uint32)
        dims = np.array(vols.shapes)[case_ids]
        positions = np.floor(rng.random((points, 3)) * dims).astype(np.float32)
        self.inr, self.weight, self.count = inr, float(weight), points
        self.coords = empty_buffer(inr.device, points * 3)
        self.patches = empty_buffer(inr.device, points * cfg.patch_dim)
        gather_inputs(cfg, vols, upload(inr.device, positions), upload(inr.device, case_ids, np.uint32), points,
                      self.coords, self.patches)
        self.logits = empty_buffer(inr.device, points * cfg.num_classes)
        self._labels = empty_buffer(inr.device, points, np.uint32)
        self._probs = empty_buffer(inr.device, points * cfg.num_classes)
        self.targets = self._probabilities()

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


def refine(inr: INR, vols: CaseVolumes, spacing, cameras: Sequence[Camera], settings: RenderSettings,
           targets: Sequence[np.ndarray], steps: int = 20, lr: float = 1e-4, anchor: Anchor | None = None,
           weights: Sequence[np.ndarray | None] | None = None, path: str = "cache",
           progress: bool = False, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Optimise the INR's weights in place so its rendered probabilities match the targets.

    Each step: the image loss's weight gradients summed over views by ``path``
    (``"cache"`` or ``"direct"``, see the module docstring), plus the anchor's
    penalty, then one AdamW step (torch, through the bridge) with gradients
    clipped to norm 1. ``on_step`` is called with each step's row as soon as
    it is done (progress to a page).

    Returns:
        one ``{"step", "image_loss", "anchor", "seconds"}`` row per step (losses before the step).
    """
    import time

    if path not in PATHS:
        raise ValueError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    gradients = PATHS[path]
    import torch
    from tqdm import tqdm

    params = inr.bridge.torch_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rows = []
    for step in tqdm(range(steps), desc="refine", unit="step", disable=not progress):
        start = time.perf_counter()
        inr.zero_grad()
        loss, _ = gradients(inr, vols, spacing, cameras, settings, targets, weights)
        penalty = anchor.add_gradients() if anchor is not None else 0.0
        inr.bridge.pull_grads()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        inr.bridge.push_params()
        rows.append({"step": step, "image_loss": loss, "anchor": penalty, "seconds": time.perf_counter() - start})
        if on_step is not None:
            on_step(rows[-1])
    return rows
