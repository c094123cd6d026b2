"""Fourier features of docs/method.md, computed by the Slang kernels of ``slang/encoding*.slang``.

gamma(p) = [p, sin(pi*1*p), cos(pi*1*p), ..., sin(pi*K*p), cos(pi*K*p)], each
sin/cos block holding the three axes, so a point has 3 + 6K features (387 for
K = 64). These host functions are for tests, scripts and gradient checks; the
INR kernels evaluate the same Slang code on the device without a round trip.
"""

from __future__ import annotations

import numpy as np

from neumours.conventions import fourier_dim
from neumours.device import download, empty_buffer, get_device, upload
from neumours.kernels.encoding import encode_backward, encode_forward

__all__ = ["fourier_dim", "fourier_features", "fourier_features_backward"]


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points contain NaN or Inf")
    return np.ascontiguousarray(points, dtype=np.float32)


def _check_freqs(num_freqs: int) -> int:
    num_freqs = int(num_freqs)
    if not 1 <= num_freqs <= 1024:
        raise ValueError(f"K must be between 1 and 1024, got {num_freqs}")
    return num_freqs


def fourier_features(points: np.ndarray, K: int = 64, device=None) -> np.ndarray:
    """Encode points with the Slang kernel.

    Args:
        points: (N, 3) coordinates, normally in [-1, 1].
        K: number of frequencies.
        device: a slangpy device; default :func:`neumours.device.get_device`.

    Returns:
        (N, 3 + 6K) float32 features in docs/method.md order.
    """
    points = _check_points(points)
    K = _check_freqs(K)
    device = device or get_device()
    n, dim = len(points), fourier_dim(K)
    features = empty_buffer(device, n * dim)
    encode_forward(device, upload(device, points), features, n, K)
    return download(features, (n, dim))


def fourier_features_backward(
    points: np.ndarray, grad_features: np.ndarray, K: int = 64, device=None
) -> np.ndarray:
    """Gradient of a loss w.r.t. the points, given its gradient w.r.t. the features.

    Args:
        points: (N, 3) coordinates.
        grad_features: (N, 3 + 6K) upstream gradient dL/dgamma.
        K: number of frequencies.
        device: a slangpy device; default :func:`neumours.device.get_device`.

    Returns:
        (N, 3) float32 dL/dp.
    """
    points = _check_points(points)
    K = _check_freqs(K)
    n, dim = len(points), fourier_dim(K)
    grad_features = np.asarray(grad_features)
    if grad_features.shape != (n, dim):
        raise ValueError(f"grad_features must have shape {(n, dim)}, got {grad_features.shape}")
    device = device or get_device()
    grad_points = empty_buffer(device, n * 3)
    encode_backward(device, upload(device, points), upload(device, grad_features), grad_points, n, K)
    return download(grad_points, (n, 3))
