"""The image loss of render-loss refinement: mean squared error with "don't care" pixels, in torch.

Computed where the rendered image lives (on CUDA, the frame's own device buffer),
so a refinement step never copies images to the host.
"""

from __future__ import annotations

import numpy as np
import torch


def masked_mse(image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over pixels and channels, pixels weighted by ``weight``.

    Args:
        image, target: (H, W, 3). weight: (H, W) per-pixel weight (0 = don't care), or None.

    Returns:
        0-d tensor: sum(((image - target) * w)^2) / max(3 * sum(w), 1).
    """
    w = torch.ones(image.shape[:2], dtype=image.dtype, device=image.device) if weight is None else weight
    diff = (image - target) * w[..., None]
    return (diff * diff).sum() / torch.clamp(w.sum() * 3.0, min=1.0)


def image_loss(image: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """:func:`masked_mse` of host arrays in float64, and its gradient (for scripts and tests).

    Returns:
        (loss, dL/dimage (H, W, 3) float32).
    """
    x = torch.as_tensor(np.asarray(image, np.float64)).requires_grad_()
    w = None if weight is None else torch.as_tensor(np.asarray(weight, np.float64))
    loss = masked_mse(x, torch.as_tensor(np.asarray(target, np.float64)), w)
    loss.backward()
    return float(loss.detach()), x.grad.numpy().astype(np.float32)
