"""Brain mask and per-modality z-score normalisation (docs/method.md "Intensities").

MRI intensities have no absolute scale, so each modality is standardised over
the brain only: the skull-stripped background (exactly 0 in BraTS-style data)
would otherwise dominate the statistics. The background stays exactly 0 so the
network (and the renderer) can still tell brain from air.
"""

from __future__ import annotations

import numpy as np

# Below this standard deviation a modality is treated as constant inside the
# brain: it is only centred (divided by 1), never blown up by a tiny divisor.
_MIN_STD = 1e-6


def _as_volumes(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"images must have shape (C, X, Y, Z), got {arr.shape}")
    return arr


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Voxels where any modality is nonzero.

    Args:
        images: shape (C, X, Y, Z) (C = 4 modalities), any numeric dtype.

    Returns:
        bool array of shape (X, Y, Z).
    """
    return np.any(_as_volumes(images) != 0, axis=0)


def normalise(images: np.ndarray) -> np.ndarray:
    """Z-score each modality over the brain voxels; background stays exactly 0.

    Mean and standard deviation are accumulated in float64 (9 million float32
    voxels summed in float32 lose digits), the result is float32.

    Args:
        images: raw intensities, shape (C, X, Y, Z) (C = 4, MODALITIES order).

    Returns:
        float32 array of shape (C, X, Y, Z): inside :func:`brain_mask` each
        modality has mean 0 and standard deviation 1 (unless constant there,
        then it is 0), outside it is 0.

    Raises:
        ValueError: ``images`` is not 4-D or holds NaN/Inf.
    """
    arr = _as_volumes(images)
    mask = brain_mask(arr)
    out = np.zeros(arr.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(arr.shape[0]):
        vals = arr[c][mask]
        mean = vals.mean(dtype=np.float64)
        std = vals.std(dtype=np.float64)
        if not (np.isfinite(mean) and np.isfinite(std)):
            raise ValueError(f"channel {c} holds NaN/Inf values")
        scale = 1.0 / std if std > _MIN_STD else 1.0
        out[c][mask] = ((vals - mean) * scale).astype(np.float32)
    return out
