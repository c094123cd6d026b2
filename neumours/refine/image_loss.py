"""The image loss of render-loss refinement: mean squared error with "don't care" pixels."""

from __future__ import annotations

import numpy as np


def image_loss(image: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean squared error over pixels and channels, and its gradient.

    Args:
        image, target: (H, W, 3). weight: (H, W) per-pixel weight (0 = don't care), or None.

    Returns:
        (loss, dL/dimage (H, W, 3) float32).
    """
    w = np.ones(image.shape[:2]) if weight is None else np.asarray(weight, np.float64)
    diff = (np.asarray(image, np.float64) - target) * w[..., None]
    n = max(float(w.sum()) * 3.0, 1.0)
    return float((diff * diff).sum() / n), (2.0 * diff * w[..., None] / n).astype(np.float32)
