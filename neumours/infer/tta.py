"""Test-time augmentation over flips: the INR's class probabilities averaged over mirrored copies of a case.

A coordinate network's raw labels are speckled: each voxel is decided alone. Averaging
the probabilities of several views of the same case smooths decisions that flip
on noise, at the cost of one inference pass per view.

What a flip means for the INR (docs/phantom.md, "What the coordinate input allows"):
the network sees a voxel through its normalised coordinate p = 2 i / (D - 1) - 1
and the 3 x 3 x 3 patch around it. Running the ordinary volume cache on the
mirrored volume gives, at mirrored voxel D - 1 - i, the coordinate -p and the patch
mirrored: exactly the inputs of the mirrored case, the inputs that flip augmentation
trains on (``[augment] flip``). Mirroring that output back puts it on voxel i. (Mirroring
the patch but keeping +p would show the network a mirrored tumour at an unmirrored
place, a case that does not exist.) So a view = flip the volume, cache, flip the
probabilities back; all views are averaged, then arg-maxed.

Left-right (axis 0 in BraTS' layout) is the flip a brain is nearly symmetric under;
the other axes show the network upside-down or back-to-front heads, useful only for a
network trained with those flips.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

#: Axes a flip may mirror (array axes of a (X, Y, Z) volume).
FLIP_AXES = (0, 1, 2)


def check_flip_axes(axes: Sequence[int]) -> tuple[int, ...]:
    """``axes`` as a sorted tuple of distinct array axes (empty: no test-time augmentation).

    Raises:
        ValueError: an axis outside 0, 1, 2 or named twice.
    """
    axes = tuple(int(a) for a in axes)
    if any(a not in FLIP_AXES for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"flip axes must be distinct among 0, 1, 2, got {list(axes)}")
    return tuple(sorted(axes))


def flip_views(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, the identity first: the 2^len(axes) views that are averaged."""
    axes = check_flip_axes(axes)
    return [c for k in range(len(axes) + 1) for c in combinations(axes, k)]


def flip_ensemble(segmenter, images: np.ndarray, grid: Sequence[int], axes: Sequence[int], raw: bool = True,
                  timer=None) -> np.ndarray:
    """Mean softmax probabilities of ``segmenter``'s INR over the flipped views of one case.

    Args:
        segmenter: a :class:`~neumours.infer.segment.Segmenter`.
        images: (4, X, Y, Z) float32: raw intensities (``raw``: z-scored on the device, which
            a flip does not change) or already normalised ones.
        grid: output grid (G0, G1, G2) (the case's shape, or finer: a flip of the grid maps
            grid point g to G - 1 - g, the mirrored position in the same field of view).
        axes: the axes to flip (:func:`flip_views`).
        timer: optional :class:`~neumours.infer.cache.StageTimer`.

    Returns:
        (num_classes, G0, G1, G2) float32, the mean over views.
    """
    views = flip_views(axes)
    total = None
    for flips in views:
        dims = tuple(a + 1 for a in flips)
        view = np.ascontiguousarray(np.flip(images, axis=dims)) if flips else images
        probs = segmenter.cache(view, grid, keep_probs=True, timer=timer, raw=raw).probabilities()
        probs = np.flip(probs, axis=dims) if flips else probs
        total = probs.astype(np.float32, copy=True) if total is None else total + probs
    return np.ascontiguousarray(total / np.float32(len(views)), dtype=np.float32)
