"""Validation during training: segment whole cases with the current weights, Dice per class.

Every class (background, NCR, ED, ET) as in the paper's Table II; a class
absent from both prediction and ground truth scores 1.
"""

from __future__ import annotations

import numpy as np

from neumours.device import download, empty_buffer
from neumours.model.inputs import DeviceVolumes, grid_inputs
from neumours.model.inr import INR


def predict_labels(inr: INR, vols: DeviceVolumes, case_id: int, chunk: int = 1 << 18) -> np.ndarray:
    """Arg-max labels (X, Y, Z) uint8 of case ``case_id`` of ``vols`` on its own grid."""
    cfg = inr.config
    shape = vols.shapes[case_id]
    total = int(np.prod(shape))
    chunk = min(chunk, total)
    ws = inr.workspace(chunk)
    coords, patches = empty_buffer(inr.device, chunk * 3), empty_buffer(inr.device, chunk * cfg.patch_dim)
    logits = empty_buffer(inr.device, chunk * cfg.num_classes)
    labels = np.empty(total, np.uint8)
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        grid_inputs(cfg, vols, case_id, shape, start, count, coords, patches)
        inr.forward_device(coords, patches, count, logits, ws)
        labels[start:start + count] = download(logits, (count, cfg.num_classes)).argmax(axis=1)
    return labels.reshape(shape)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """(num_classes,) hard Dice of every class; 1 where a class is absent from both."""
    scores = np.empty(num_classes)
    for c in range(num_classes):
        p, t = pred == c, truth == c
        total = p.sum() + t.sum()
        scores[c] = 1.0 if total == 0 else 2.0 * np.logical_and(p, t).sum() / total
    return scores


class Validator:
    """Normalised validation volumes on the device and their labels on the host."""

    def __init__(self, inr: INR, images: list[np.ndarray], labels: list[np.ndarray]):
        self.inr = inr
        self.labels = labels
        self.vols = DeviceVolumes.upload(inr.device, images) if images else None

    def __call__(self) -> np.ndarray:
        """Mean over validation cases of Dice per class, (num_classes,)."""
        if self.vols is None:
            return np.full(self.inr.config.num_classes, np.nan)
        self.inr.bridge.push_params()
        scores = [dice_per_class(predict_labels(self.inr, self.vols, i), label, self.inr.config.num_classes)
                  for i, label in enumerate(self.labels)]
        return np.mean(scores, axis=0)
