"""Voxel-loss refinement: correct an INR's weights from classes painted on voxels of one case.

A slice correction (a pen of class NCR, ED or ET, or the eraser = background,
drawn on voxels of the case) says what the INR should predict there. The loss is
the mean cross-entropy of the INR's softmax against the painted classes over the
painted voxels, run through the same Slang kernels as training:
``gather_inputs`` (coordinates and 3x3x3x4 patches at the voxel positions, once),
``INR.forward_device``, the training loss's softmax-CE gradient
(:class:`neumours.train.loss.DeviceLoss` with the Dice share 0) and
``INR.backward_device``; one AdamW step per iteration through the torch bridge,
gradients clipped to norm 1, as in the render-loss loop
(:func:`neumours.refine.loop.refine`), with the same optional :class:`Anchor`.

    points = PaintedVoxels.upload(inr, vols, positions, classes)
    rows = refine_voxels(inr, points, steps=20, lr=1e-3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import slangpy as spy

from neumours.device import empty_buffer, upload
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR, Workspace
from neumours.refine.loop import Anchor, anchor_gradients
from neumours.train.loss import DeviceLoss, LossConfig
from neumours.train.optim import apply_gradients

__all__ = ["PaintedVoxels", "VoxelLoss", "refine_voxels", "voxel_loss_gradients"]


@dataclass
class PaintedVoxels:
    """The INR inputs and target classes of painted voxels, on the device.

    Attributes:
        count: N painted voxels.
        positions: (N, 3) int64 voxel indices (host copy, for callers).
        classes: (N,) uint8 target classes 0 .. num_classes - 1.
        coords, patches: device inputs of the INR, (N, 3) and (N, patch_dim).
        labels: (N,) uint32 device copy of ``classes``.
    """

    count: int
    positions: np.ndarray
    classes: np.ndarray
    coords: spy.Buffer
    patches: spy.Buffer
    labels: spy.Buffer

    @classmethod
    def upload(cls, inr: INR, vols: CaseVolumes, positions: np.ndarray, classes: np.ndarray,
               case_index: int = 0) -> PaintedVoxels:
        """Gather the inputs at painted voxels of case ``case_index`` of ``vols``.

        Args:
            positions: (N, 3) integer voxel indices inside the case.
            classes: (N,) target class of each voxel.

        Raises:
            ValueError: no voxel, positions outside the case, classes out of range
                or shapes that disagree.
        """
        positions = np.asarray(positions)
        classes = np.asarray(classes)
        cfg = inr.config
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.dtype.kind not in "iu":
            raise ValueError(f"positions must be (N, 3) integers, got {positions.dtype} {positions.shape}")
        if classes.shape != (len(positions),) or classes.dtype.kind not in "iu":
            raise ValueError(f"classes must be ({len(positions)},) integers, got {classes.dtype} {classes.shape}")
        if len(positions) == 0:
            raise ValueError("no painted voxels")
        dims = np.array(vols.shapes[case_index])
        if (positions < 0).any() or (positions >= dims).any():
            raise ValueError(f"painted voxels must lie inside the case {tuple(dims)}")
        if classes.min() < 0 or classes.max() >= cfg.num_classes:
            raise ValueError(f"classes must be 0..{cfg.num_classes - 1}, found {classes.min()}..{classes.max()}")
        n = len(positions)
        coords = empty_buffer(inr.device, n * 3)
        patches = empty_buffer(inr.device, n * cfg.patch_dim)
        gather_inputs(cfg, vols, upload(inr.device, positions.astype(np.float32)),
                      upload(inr.device, np.full(n, case_index, np.uint32), np.uint32), n, coords, patches)
        return cls(n, positions.astype(np.int64), classes.astype(np.uint8), coords, patches,
                   upload(inr.device, classes.astype(np.uint32), np.uint32))


class VoxelLoss:
    """The painted voxels' mean CE as a term of a refinement: device buffers (logits,
    dL/dlogits, the CE sums, the INR workspace) and :meth:`add_gradients`, so it
    can also join the render-loss loop (:func:`neumours.refine.loop.refine`'s
    ``anchor`` terms) when slice paint and a 3-D mask are refined together."""

    def __init__(self, inr: INR, points: PaintedVoxels, class_weights=None):
        cfg = inr.config
        weights = tuple(float(w) for w in (class_weights or (1.0,) * cfg.num_classes))
        self.inr, self.points = inr, points
        self.loss = DeviceLoss(inr.device, LossConfig(dice_weight=0.0, class_weights=weights), slots=1)
        self.logits = empty_buffer(inr.device, points.count * cfg.num_classes)
        self.grad_logits = empty_buffer(inr.device, points.count * cfg.num_classes)
        self.workspace: Workspace | None = None

    def gradients(self) -> float:
        """Add dCE/dweights into the INR's gradient buffer; returns the CE before the step."""
        inr, p = self.inr, self.points
        self.workspace = inr.forward_device(p.coords, p.patches, p.count, self.logits, inr.workspace(p.count))
        self.loss.reset()
        self.loss.backward(self.logits, p.labels, p.count, self.grad_logits, slot=0)
        inr.backward_device(p.coords, p.patches, p.count, self.grad_logits, self.workspace)
        return float(self.loss.values()["ce"])

    add_gradients = gradients


def voxel_loss_gradients(inr: INR, points: PaintedVoxels, class_weights=None) -> float:
    """Add d(mean CE over the painted voxels)/d(weights) into ``inr``'s gradient buffer.

    Returns:
        The loss (class-weighted mean CE, torch's ``cross_entropy(weight=...)``).
    """
    return VoxelLoss(inr, points, class_weights).gradients()


def refine_voxels(inr: INR, points: PaintedVoxels, steps: int = 20, lr: float = 1e-3,
                  anchor: Anchor | Sequence[Anchor] | None = None, class_weights=None,
                  on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Optimise the INR's weights in place towards the painted classes.

    Each step: the CE's weight gradients, plus the anchors' penalties (e.g.
    :meth:`Anchor.keep_rest` so the rest of the case keeps its labels), then one
    AdamW step (weight decay 0) with gradients clipped to norm 1.

    Args:
        on_step: called with each step's row as soon as it is done (progress to a page).

    Returns:
        one ``{"step", "voxel_loss", "anchor", "seconds"}`` row per step (losses before the step).
    """
    import torch

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    loss = VoxelLoss(inr, points, class_weights)
    params = inr.bridge.torch_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rows = []
    for step in range(steps):
        start = time.perf_counter()
        inr.zero_grad()
        value = loss.gradients()
        penalty = anchor_gradients(anchor)
        apply_gradients(inr.bridge, [optimizer], 1.0, params)
        row = {"step": step, "voxel_loss": value, "anchor": penalty, "seconds": time.perf_counter() - start}
        rows.append(row)
        if on_step is not None:
            on_step(row)
    return rows
