"""Empty-space skipping of the raymarcher: the box of voxels that can be seen, and when skipping is exact.

A skull-stripped case is exactly 0 outside the brain, and its labels are 0 there
too. A sample whose 8 trilinear corners (and nearest voxel) are all such empty
voxels has zero medium under any settings for which an empty voxel is
transparent (:func:`empty_is_transparent`), so it changes neither the colour
nor the transmittance of its ray. The kernels (``slang/raymarch_kernels.slang``)
therefore march only the samples inside a clip box, at the very positions of
the full march, and the image is the same to the bit.

The clip box in voxel positions is the occupied bounding box [a, b] grown by one
voxel on each side, [a - 1, b + 1] clamped to the volume: a sample at voxel
position v with v < a - 1 on some axis has floor(v) + 1 < a there, so neither
its trilinear corners nor its nearest voxel reach an occupied voxel (likewise
above b + 1).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.transfer import RenderSettings

#: Inclusive voxel-index bounds ((x0, y0, z0), (x1, y1, z1)) of the occupied voxels;
#: x0 > x1 means no voxel is occupied.
OccupiedBox = tuple[tuple[int, int, int], tuple[int, int, int]]
#: What an empty volume's box is: lower bounds above upper ones.
EMPTY_BOX: OccupiedBox = ((1, 1, 1), (0, 0, 0))


def nonzero_box(mask: np.ndarray) -> OccupiedBox:
    """Inclusive bounds of the True voxels of a (X, Y, Z) boolean mask (:data:`EMPTY_BOX` if none)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return EMPTY_BOX
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]))
    return tuple(lo), tuple(hi)  # type: ignore[return-value]


def union_box(a: OccupiedBox, b: OccupiedBox) -> OccupiedBox:
    """The smallest box holding both (an empty box adds nothing)."""
    if is_empty(a):
        return b
    if is_empty(b):
        return a
    return (tuple(min(x, y) for x, y in zip(a[0], b[0])),  # type: ignore[return-value]
            tuple(max(x, y) for x, y in zip(a[1], b[1])))


def is_empty(box: OccupiedBox) -> bool:
    return any(lo > hi for lo, hi in zip(*box))


def occupied_box(volumes: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                 probabilities: Optional[np.ndarray] = None) -> OccupiedBox:
    """Bounds of every voxel that is not empty in any of the given volumes.

    Args:
        volumes: (C, X, Y, Z) MRI intensities: a voxel is occupied where any channel is non-zero.
        labels: (X, Y, Z) class indices: occupied where non-zero.
        probabilities: (K, X, Y, Z) class probabilities: occupied where a tumour
            class (k >= 1) is non-zero (the background class is transparent
            whenever skipping applies, see :func:`empty_is_transparent`).
    """
    box = EMPTY_BOX
    if volumes is not None:
        box = union_box(box, nonzero_box(np.any(np.asarray(volumes) != 0, axis=0)))
    if labels is not None:
        box = union_box(box, nonzero_box(np.asarray(labels) != 0))
    if probabilities is not None:
        box = union_box(box, nonzero_box(np.any(np.asarray(probabilities)[1:] != 0, axis=0)))
    return box


def empty_is_transparent(settings: RenderSettings, uses_mri: bool, uses_labels: bool) -> bool:
    """Whether a sample of all-zero MRI values and background labels has exactly zero medium.

    The MRI medium of zero intensities is zero when every enabled window starts at
    or above 0 (each windowed value is ramp((0 - lo) / width) = 0) and the density
    ramp starts at or above 0; the label medium of the background class is zero
    when its opacity is 0 (the default).
    """
    if uses_mri:
        if settings.transfer.density_lo < 0 or any(w.enabled and w.lo < 0 for w in settings.windows):
            return False
    if uses_labels and float(settings.lut.opacities[0]) != 0.0:
        return False
    return True


def clip_bounds(shape, spacing, box: Optional[OccupiedBox]) -> tuple[list[float], list[float]]:
    """Box-space (lo, hi) corners of the clip box of an occupied box; the whole volume for None.

    An empty occupied box gives lo > hi (the kernels then march no sample).
    """
    half = volume_box(shape, spacing)
    if box is None:
        return (-half).tolist(), half.tolist()
    if is_empty(box):
        return half.tolist(), (-half).tolist()
    dims = np.asarray(shape, np.float64)
    lo = np.clip(np.asarray(box[0], np.float64) - 1.0, 0.0, dims - 1)
    hi = np.clip(np.asarray(box[1], np.float64) + 1.0, 0.0, dims - 1)
    scale = to_voxel_scale(shape, half)
    return (lo / scale - half).tolist(), (hi / scale - half).tolist()
