"""Shared fixtures: the device for kernel tests (the CPU, or NEUMOURS_DEVICE's kind), a CUDA device for `gpu` tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

#: The device kind kernel tests run on: ``NEUMOURS_DEVICE=vulkan pytest tests/test_inr.py`` runs
#: them on Vulkan (or cuda); default the CPU device, as in CI.
CHOSEN = os.environ.get("NEUMOURS_DEVICE", "").strip().lower()
KERNEL_DEVICE = CHOSEN or "cpu"


@pytest.fixture(scope="session")
def cpu_device():
    """The kernel-test device: slangpy's CPU device (every kernel test runs on it at a small size), or
    the kind ``NEUMOURS_DEVICE`` names; a kind that is not available fails with its reason."""
    from neumours.device import get_device

    return get_device(KERNEL_DEVICE)


@pytest.fixture(autouse=True)
def _fp32_kernel_tests_on_cuda(request, monkeypatch):
    """Kernel tests check the fp32 kernels against float64 at fp32 tolerances: on CUDA, where precision
    "auto" means the bf16 tensor cores (tested at bf16 tolerances by the `gpu` tests), they pin it to fp32."""
    if KERNEL_DEVICE == "cuda" and "cpu_device" in request.fixturenames and "cuda_device" not in request.fixturenames:
        import neumours.model.inr as inr

        resolve = inr.resolve_precision
        monkeypatch.setattr(inr, "resolve_precision",
                            lambda precision, device: resolve("fp32" if precision == "auto" else precision, device))


@pytest.fixture(scope="session")
def cuda_device():
    """A CUDA device, or skip: `gpu` tests run on the GPU machine only (not while NEUMOURS_DEVICE names
    another kind, which every device request would then get)."""
    from neumours.device import get_device
    from neumours.errors import DeviceUnavailableError

    if CHOSEN not in ("", "cuda"):
        pytest.skip(f"NEUMOURS_DEVICE={CHOSEN}: the gpu tests need CUDA")
    try:
        return get_device("cuda")
    except DeviceUnavailableError as exc:
        pytest.skip(f"no CUDA device: {exc}")


@pytest.fixture
def rng(request):
    """A fresh random generator per test; the seed is printed on failure."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)
