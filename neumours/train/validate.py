"""Validation during training: segment whole cases with the current weights, Dice per class.

Every class (background, NCR, ED, ET) as in the paper's Table II; a class
absent from both prediction and ground truth scores 1.
"""

from __future__ import annotations

import numpy as np

from neumours.conventions import NUM_CLASSES
from neumours.eval.metrics import dice
from neumours.infer.cache import VolumeCache
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) hard Dice of every class; 1 where a class is absent from both."""
    return np.array([dice(pred == c, truth == c) for c in range(num_classes)])


class Validator:
    """Normalised validation volumes on the device and their labels on the host."""

    def __init__(self, inr: INR, images: list[np.ndarray], labels: list[np.ndarray]):
        self.inr = inr
        self.labels = labels
        self.vols = CaseVolumes.upload(inr.device, images) if images else None

    def __call__(self) -> np.ndarray:
        """Mean over validation cases of Dice per class, (num_classes,)."""
        if self.vols is None:
            return np.full(self.inr.config.num_classes, np.nan)
        self.inr.bridge.push_params()
        scores = [dice_per_class(VolumeCache(self.inr, self.vols, case_index=i).labels(), label,
                                 self.inr.config.num_classes)
                  for i, label in enumerate(self.labels)]
        return np.mean(scores, axis=0)
