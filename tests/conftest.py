"""Shared fixtures: the CPU device for kernel tests, a CUDA device for `gpu` tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def cpu_device():
    """slangpy's CPU device: every kernel test runs on it at a small size."""
    from neumours.device import get_device

    return get_device("cpu")


@pytest.fixture(scope="session")
def cuda_device():
    """A CUDA device, or skip: `gpu` tests run on the GPU machine only."""
    from neumours.device import get_device
    from neumours.errors import DeviceUnavailableError

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
