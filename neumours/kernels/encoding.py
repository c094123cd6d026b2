"""Wrappers of ``slang/encoding_kernels.slang``: the Fourier features gamma(p) and their gradient."""

from __future__ import annotations

import slangpy as spy

from neumours.conventions import fourier_dim
from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "encoding_kernels.slang"


def encode_forward(device: spy.Device, points: spy.Buffer, features: spy.Buffer, count: int, num_freqs: int) -> None:
    """features = gamma(points): (count, 3) -> (count, 3 + 6K) float32, docs/method.md order."""
    require(points, 3 * count, "points")
    require(features, fourier_dim(num_freqs) * count, "features")
    load_kernel(device, FILE, "encode_forward", {"NUM_FREQS": int(num_freqs)})(
        count, params={"points": points, "features": features, "count": int(count)})


def encode_backward(device: spy.Device, points: spy.Buffer, grad_features: spy.Buffer, grad_points: spy.Buffer,
                    count: int, num_freqs: int) -> None:
    """grad_points = dL/dp given dL/dgamma: (count, 3 + 6K) -> (count, 3) float32 (overwritten)."""
    require(points, 3 * count, "points")
    require(grad_features, fourier_dim(num_freqs) * count, "grad_features")
    require(grad_points, 3 * count, "grad_points")
    load_kernel(device, FILE, "encode_backward", {"NUM_FREQS": int(num_freqs)})(
        count, params={"points": points, "grad_features": grad_features, "grad_points": grad_points,
                       "count": int(count)})
