"""Validation during training: segment whole cases with the current weights, Dice per class.

Every class (background, NCR, ED, ET) as in the paper's Table II. Empty classes
follow the BraTS rule, MONAI's ``DiceMetric(ignore_empty=False)``: a class absent
from both the prediction and the ground truth of a case scores 1 for that case
(nothing to find, nothing found), absent from exactly one scores 0. The rule is
stated, not hidden: :attr:`Validator.cases_without` counts, per class, the
validation cases whose ground truth lacks it, and the training summary names
how many cases the scores rest on.

Validation sized for the run: with ``max_voxels`` (the trainer passes
:data:`CPU_VOXEL_BUDGET` on the CPU device, where evaluating every voxel of a
few 96 x 96 x 64 cases took most of a tiny run), every case is evaluated on a
coarser grid of the same field of view whose voxels together stay within the
budget; its labels are compared with the ground truth at the nearest voxel.
"""

from __future__ import annotations

import math

import numpy as np

from neumours.conventions import NUM_CLASSES
from neumours.eval.metrics import dice
from neumours.infer.cache import VolumeCache, forward_cost
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR

#: Voxels of one validation, all cases together, on the CPU device: about 10 s for the tiny
#: network on 2 cores (the INR costs ~40 us a voxel there), so validation stays a small part of a run.
CPU_VOXEL_BUDGET = 1 << 18


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) hard Dice of every class; 1 where a class is absent from both (BraTS rule)."""
    return np.array([dice(pred == c, truth == c) for c in range(num_classes)])


def validation_grid(shape, budget: int | None) -> tuple[int, int, int]:
    """The case's own grid, or the same field of view scaled down evenly to at most ``budget`` voxels."""
    shape = tuple(int(s) for s in shape)
    if budget is None or math.prod(shape) <= budget:
        return shape
    factor = (budget / math.prod(shape)) ** (1 / 3)
    grid = [max(2, min(s, int(s * factor))) for s in shape]
    while math.prod(grid) > budget and max(grid) > 2:  # rounding: shrink the longest axis until it fits
        grid[grid.index(max(grid))] -= 1
    return tuple(grid)


def nearest_voxels(label: np.ndarray, grid) -> np.ndarray:
    """``label`` at the voxel nearest each point of ``grid`` (point i at voxel i * (D - 1) / (G - 1))."""
    index = [np.rint(np.arange(g) * ((d - 1) / (g - 1) if g > 1 else 0)).astype(np.int64)
             for d, g in zip(label.shape, grid)]
    return label[np.ix_(*index)]


class Validator:
    """Normalised validation volumes on the device and their labels on the host.

    Args:
        inr: the network being trained.
        images, labels: normalised (modalities, X, Y, Z) volumes and (X, Y, Z) labels per case.
        max_voxels: most voxels evaluated per validation, all cases together (None: every voxel).

    Attributes:
        grids: the grid each case is evaluated on.
        cases_without: (num_classes,) validation cases whose ground truth lacks each class.
    """

    def __init__(self, inr: INR, images: list[np.ndarray], labels: list[np.ndarray], max_voxels: int | None = None):
        self.inr = inr
        self.vols = CaseVolumes.upload(inr.device, images) if images else None
        budget = None if max_voxels is None or not labels else max(8, int(max_voxels) // len(labels))
        self.grids = [validation_grid(label.shape, budget) for label in labels]
        self.labels = [label if tuple(label.shape) == grid else nearest_voxels(label, grid)
                       for label, grid in zip(labels, self.grids)]
        self.full_voxels = sum(int(np.prod(label.shape)) for label in labels)
        classes = inr.config.num_classes
        self.cases_without = np.array([sum(not np.any(label == c) for label in labels) for c in range(classes)])

    @property
    def cases(self) -> int:
        return len(self.labels)

    @property
    def voxels(self) -> int:
        """Voxels evaluated per validation (all cases)."""
        return sum(int(np.prod(g)) for g in self.grids)

    def describe(self) -> str:
        """How big a validation is, e.g. ``2 cases, 262,144 of 1,179,648 voxels (coarser grid)``."""
        if not self.cases:
            return "no validation cases"
        text = f"{self.cases} case{'s' if self.cases != 1 else ''}, {self.voxels:,} voxels"
        if self.voxels < self.full_voxels:
            text = (f"{self.cases} case{'s' if self.cases != 1 else ''}, {self.voxels:,} of {self.full_voxels:,} "
                    f"voxels (a coarser grid)")
        return text

    def seconds(self) -> float:
        """Estimated seconds of one validation, from the INR timed on small grids of the first case
        (:func:`~neumours.infer.cache.forward_cost`)."""
        if self.vols is None:
            return 0.0
        self.inr.bridge.push_params()
        per_voxel, per_case = forward_cost(self.inr, self.vols)
        return per_voxel * self.voxels + per_case * self.cases

    def __call__(self) -> np.ndarray:
        """Mean over validation cases of Dice per class, (num_classes,)."""
        if self.vols is None:
            return np.full(self.inr.config.num_classes, np.nan)
        self.inr.bridge.push_params()
        scores = [dice_per_class(VolumeCache(self.inr, self.vols, case_index=i, grid_shape=grid).labels(), label,
                                 self.inr.config.num_classes)
                  for i, (label, grid) in enumerate(zip(self.labels, self.grids))]
        return np.mean(scores, axis=0)
