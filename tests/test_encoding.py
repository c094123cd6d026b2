"""Fourier encoding kernel against float64 formulas and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from neumours.model.encoding import fourier_dim, fourier_features, fourier_features_backward
from neumours.model.reference import fourier_features_grad_np, fourier_features_np


def rel_err(x, ref):
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


def random_points(rng, n):
    # Include the box corners and centre: the extremes of the argument range.
    corners = np.array([[-1, -1, -1], [1, 1, 1], [0, 0, 0], [1, -1, 0.5]], np.float32)
    return np.concatenate([corners, rng.uniform(-1, 1, (n, 3)).astype(np.float32)])


def test_dimension():
    assert fourier_dim(64) == 387


@pytest.mark.parametrize("K", [1, 8, 64])
def test_forward_matches_float64(cpu_device, rng, K):
    p = random_points(rng, 300)
    out = fourier_features(p, K, device=cpu_device)
    ref = fourier_features_np(p, K)
    assert out.shape == (len(p), 3 + 6 * K) and out.dtype == np.float32
    assert rel_err(out, ref) <= 1e-5
    # Order of docs/method.md: p first, then sin/cos blocks of the three axes.
    np.testing.assert_array_equal(out[:, :3], p)
    np.testing.assert_allclose(out[:, 3:6], np.sin(np.pi * p.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(out[:, 6:9], np.cos(np.pi * p.astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize("K", [2, 64])
def test_backward_matches_analytic(cpu_device, rng, K):
    p = random_points(rng, 200)
    g = rng.normal(size=(len(p), fourier_dim(K))).astype(np.float32)
    grad = fourier_features_backward(p, g, K, device=cpu_device)
    assert grad.shape == (len(p), 3)
    assert rel_err(grad, fourier_features_grad_np(p, g, K)) <= 1e-5


def test_backward_matches_finite_differences_of_kernel(cpu_device, rng):
    # Central differences of L = <g, gamma(p)> through the fp32 forward kernel.
    K, h = 3, 1e-3
    p = rng.uniform(-0.9, 0.9, (40, 3)).astype(np.float32)
    g = rng.normal(size=(len(p), fourier_dim(K))).astype(np.float32)
    grad = fourier_features_backward(p, g, K, device=cpu_device)
    fd = np.zeros_like(grad, dtype=np.float64)
    for axis in range(3):
        step = np.zeros_like(p)
        step[:, axis] = h
        plus = fourier_features(p + step, K, device=cpu_device).astype(np.float64)
        minus = fourier_features(p - step, K, device=cpu_device).astype(np.float64)
        fd[:, axis] = ((plus - minus) * g).sum(axis=1) / (2 * h)
    assert rel_err(grad, fd) <= 2e-3


def test_analytic_gradient_matches_finite_differences_float64(rng):
    # The analytic reference itself, at full K, in float64.
    K, h = 64, 1e-6
    p = rng.uniform(-1, 1, (30, 3))
    g = rng.normal(size=(len(p), fourier_dim(K)))
    fd = np.zeros((len(p), 3))
    for axis in range(3):
        step = np.zeros_like(p)
        step[:, axis] = h
        diff = fourier_features_np(p + step, K) - fourier_features_np(p - step, K)
        fd[:, axis] = (diff * g).sum(axis=1) / (2 * h)
    assert rel_err(fourier_features_grad_np(p, g, K), fd) <= 1e-6


def test_rejects_bad_shapes(cpu_device):
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        fourier_features(np.zeros((4, 2)), 4, device=cpu_device)
    with pytest.raises(ValueError, match="grad_features"):
        fourier_features_backward(np.zeros((4, 3)), np.zeros((4, 5)), 4, device=cpu_device)
    with pytest.raises(ValueError, match="NaN"):
        fourier_features(np.full((1, 3), np.nan), 4, device=cpu_device)


@pytest.mark.gpu
def test_gpu_full_size(cuda_device, rng):
    # Full-size check on the GPU: 65,536 points, K = 64.
    K = 64
    p = rng.uniform(-1, 1, (1 << 16, 3)).astype(np.float32)
    out = fourier_features(p, K, device=cuda_device)
    assert rel_err(out, fourier_features_np(p, K)) <= 1e-5
    g = rng.normal(size=out.shape).astype(np.float32)
    grad = fourier_features_backward(p, g, K, device=cuda_device)
    assert rel_err(grad, fourier_features_grad_np(p, g, K)) <= 1e-5
