"""Evaluation regions and label colours (docs/method.md), defined once.

Labels (:data:`neumours.conventions.CLASS_NAMES`): 0 background, 1 necrotic core
(NCR), 2 peritumoral edema (ED), 3 enhancing tumour (ET). Regions: NCR={1},
ED={2}, ET={3}, TC={1,3}, WT={1,2,3}.
"""

from __future__ import annotations

import numpy as np

from neumours.conventions import CLASS_KEYS, CLASS_NAMES, NUM_CLASSES

__all__ = ["CLASS_KEYS", "CLASS_NAMES", "LABEL_COLOURS", "NUM_CLASSES", "REGIONS", "region_mask", "region_volumes_ml"]

#: Evaluation region -> the labels it contains.
REGIONS: dict[str, tuple[int, ...]] = {
    "NCR": (1,),
    "ED": (2,),
    "ET": (3,),
    "TC": (1, 3),
    "WT": (1, 2, 3),
}

#: RGB colours (0..1) for labels 1..3, used in figures and as renderer defaults.
LABEL_COLOURS = {1: (0.90, 0.20, 0.20), 2: (0.20, 0.80, 0.30), 3: (1.00, 0.85, 0.10)}


def region_mask(label: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of ``region`` ("NCR", "ED", "ET", "TC" or "WT") in a label volume."""
    return np.isin(label, REGIONS[region])


def region_volumes_ml(label: np.ndarray, spacing) -> dict[str, float]:
    """Volume of every region in millilitres, from the voxel spacing in mm."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(label.reshape(-1).astype(np.int64), minlength=NUM_CLASSES)
    return {name: float(counts[list(labels)].sum()) * voxel_ml for name, labels in REGIONS.items()}
