"""Device selection, the kernel cache and the accumulation helper."""

from __future__ import annotations

import numpy as np
import pytest

from neumours.device import download, get_device, load_kernel, upload, zeros_buffer
from neumours.kernels.accumulate import scatter_add
from neumours.errors import DeviceUnavailableError


def test_cpu_device_has_slang_include_path(cpu_device):
    kernel = load_kernel(cpu_device, "encoding_kernels.slang", "encode_forward", {"NUM_FREQS": 2})
    assert kernel.program is not None


def test_devices_are_reused():
    assert get_device("cpu") is get_device("cpu")


def test_auto_falls_back_and_env_overrides(monkeypatch):
    monkeypatch.setenv("NEUMOURS_DEVICE", "cpu")
    assert get_device("cuda") is get_device("cpu")


def test_unknown_kind_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NEUMOURS_DEVICE", raising=False)   # else every request gets the kind it names
    with pytest.raises(DeviceUnavailableError, match="not one of"):
        get_device("tpu")


def test_unavailable_kind_is_a_clear_error(monkeypatch):
    # Make every backend fail, as on a machine without it; the kind asked for is the one refused (not the
    # one NEUMOURS_DEVICE names when the kernel tests run on another device kind).
    import neumours.device.select as select

    monkeypatch.delenv("NEUMOURS_DEVICE", raising=False)
    def fail(kind):
        raise RuntimeError("Failed to create device!")

    monkeypatch.setattr(select, "_create", fail)
    monkeypatch.setattr(select, "_DEVICES", {})
    with pytest.raises(DeviceUnavailableError, match="'metal' is not available"):
        get_device("metal")
    with pytest.raises(DeviceUnavailableError, match="no compute device"):
        get_device("auto")


def test_kernel_cache_keys_on_constants(cpu_device):
    a = load_kernel(cpu_device, "encoding_kernels.slang", "encode_forward", {"NUM_FREQS": 2})
    b = load_kernel(cpu_device, "encoding_kernels.slang", "encode_forward", {"NUM_FREQS": 2})
    c = load_kernel(cpu_device, "encoding_kernels.slang", "encode_forward", {"NUM_FREQS": 3})
    assert a is b and a is not c


def test_scatter_add_accumulates_collisions(cpu_device, rng):
    n, bins = 5000, 17
    values = rng.normal(size=n).astype(np.float32)
    indices = rng.integers(0, bins, n).astype(np.uint32)
    out = zeros_buffer(cpu_device, bins)
    scatter_add(cpu_device, upload(cpu_device, values), upload(cpu_device, indices, np.uint32), out, n)
    expected = np.zeros(bins)
    np.add.at(expected, indices, values.astype(np.float64))
    np.testing.assert_allclose(download(out, (bins,)), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_scatter_add_gpu_atomics(cuda_device, rng):
    n, bins = 1 << 20, 64
    values = rng.normal(size=n).astype(np.float32)
    indices = rng.integers(0, bins, n).astype(np.uint32)
    out = zeros_buffer(cuda_device, bins)
    scatter_add(cuda_device, upload(cuda_device, values), upload(cuda_device, indices, np.uint32), out, n)
    expected = np.zeros(bins)
    np.add.at(expected, indices, values.astype(np.float64))
    np.testing.assert_allclose(download(out, (bins,)), expected, rtol=1e-3, atol=1e-2)


@pytest.mark.gpu
def test_cuda_device_works_from_another_thread(cuda_device, rng):
    """A reused Ray trial process trains each trial in a new thread: the cached device must work there
    (without get_device making its context current, the first copy fails: CUDA_ERROR_INVALID_CONTEXT)."""
    import threading

    data = rng.normal(size=1 << 20).astype(np.float32)
    box = {}

    def work():
        try:
            device = get_device("cuda")
            box["out"] = download(upload(device, data), (data.size,))
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(box["out"], data)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.uint32, np.int32])
def test_large_upload_through_torch(cuda_device, rng, dtype):
    data = rng.integers(0, 1 << 30, 1 << 20).astype(dtype)  # 4 MiB: the torch path
    np.testing.assert_array_equal(download(upload(cuda_device, data, dtype), dtype=dtype), data)


def test_scratch_buffers_reuse_and_grow(cpu_device):
    from neumours.device import ScratchBuffers, download

    scratch = ScratchBuffers(cpu_device)
    a = scratch.upload("x", np.arange(10, dtype=np.float32))
    assert scratch.get("x", 8) is a  # fits: the same buffer
    b = scratch.upload("x", np.arange(4, dtype=np.float32) + 100)
    assert b is a and download(b, (10,))[:5].tolist() == [100, 101, 102, 103, 4]
    c = scratch.get("x", 20)
    assert c is not a and c.size >= 80
    assert scratch.get("x", 5, np.uint32) is not c  # another dtype, another buffer


@pytest.mark.parametrize("order", ["C", "F", "reversed"])
def test_upload_any_memory_order(cpu_device, order, rng):
    _check_upload_orders(cpu_device, order, rng, shape=(3, 5, 4, 6))


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["C", "F", "reversed"])
def test_gpu_upload_any_memory_order(cuda_device, order, rng):
    # Over 1 MB: the torch route, where non-C-ordered arrays are reordered on the GPU.
    _check_upload_orders(cuda_device, order, rng, shape=(4, 60, 50, 40))


def _check_upload_orders(device, order, rng, shape):
    from neumours.device import ScratchBuffers, download, upload

    values = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 2**32 - 1, size=shape, dtype=np.uint32)
    for array, dtype in ((values, np.float32), (labels, np.uint32)):
        host = {"C": array, "F": np.asfortranarray(array), "reversed": array[::-1]}[order]
        expected = np.ascontiguousarray(host).reshape(-1)
        np.testing.assert_array_equal(download(upload(device, host, dtype), dtype=dtype), expected)
        scratch = ScratchBuffers(device)
        np.testing.assert_array_equal(download(scratch.upload("v", host, dtype), dtype=dtype), expected)
    # float64 input converts on the way, keeping its memory order.
    np.testing.assert_array_equal(download(upload(device, np.asfortranarray(values.astype(np.float64)))),
                                  values.reshape(-1))
