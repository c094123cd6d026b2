"""Probability smoothing before the arg-max: a cheap spatial prior for a network that decides each voxel alone.

The INR has no local connectivity prior, so a voxel whose class probabilities sit near a
tie flips on noise and leaves a speck. Blurring each class's probability map with the
same Gaussian (``sigma_mm`` in millimetres, per axis divided by the voxel spacing)
before the arg-max lets a voxel follow its neighbourhood: single-voxel specks vanish,
boundaries move by less than a voxel. Every class gets the same kernel, so the
probabilities still sum to one at every voxel (the filter is linear; ``nearest``
edges keep a constant map constant).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def check_smooth_mm(sigma_mm: float) -> float:
    """``sigma_mm`` as a float, >= 0 and finite (0: no smoothing).

    Raises:
        ValueError: a negative or non-finite value.
    """
    value = float(sigma_mm)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the smoothing sigma must be a finite number of mm >= 0, got {sigma_mm!r}")
    return value


def smooth_probabilities(probs: np.ndarray, sigma_mm: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Each class map of (C, X, Y, Z) ``probs`` blurred by a Gaussian of ``sigma_mm`` (float32, same shape)."""
    sigma_mm = check_smooth_mm(sigma_mm)
    if sigma_mm == 0:
        return np.asarray(probs, np.float32)
    sigma = tuple(sigma_mm / float(s) for s in spacing)
    return np.stack([ndimage.gaussian_filter(np.asarray(p, np.float32), sigma, mode="nearest") for p in probs])
