"""The volume's box in world space and the ray-box intersection (numpy, float64).

The box is ``[-half, half]`` with ``half = extent / max(extent)`` and
``extent = (shape - 1) * spacing``: its corners are the corner voxel centres
(as in docs/method.md's coordinates), the longest physical axis spans [-1, 1] and
anisotropic voxels keep their true proportions. ``slang/raymarch.slang``
implements the same maps on the device.
"""

from __future__ import annotations

import numpy as np


def volume_box(shape, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Half extents of the box of a volume.

    Args:
        shape: (X, Y, Z), each >= 2.
        spacing: voxel size along the three axes (> 0, any unit).

    Returns:
        (3,) float64 half extents; the largest is 1.
    """
    shape = np.asarray(shape, np.float64)
    spacing = np.asarray(spacing, np.float64)
    if shape.shape != (3,) or (shape < 2).any():
        raise ValueError(f"volume shape must be three sizes >= 2, got {tuple(shape.astype(int))}")
    if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    extent = (shape - 1) * spacing
    return extent / extent.max()


def to_voxel_scale(shape, half: np.ndarray) -> np.ndarray:
    """(3,) factors s with voxel position v = (q + half) * s for a box point q."""
    return (np.asarray(shape, np.float64) - 1) / (2 * np.asarray(half, np.float64))


def intersect_box(origins: np.ndarray, directions: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays against ``[-half, half]``.

    Args:
        origins, directions: (..., 3) float64.
        half: (3,) half extents.

    Returns:
        ``(t_enter, t_exit)``, each (...,): entry clamped to 0 (camera inside
        the box); a ray misses where ``t_exit <= t_enter``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / directions
        t0 = (-half - origins) * inv
        t1 = (half - origins) * inv
    lo = np.fmin(t0, t1)
    hi = np.fmax(t0, t1)
    return np.maximum(lo.max(axis=-1), 0.0), hi.min(axis=-1)
