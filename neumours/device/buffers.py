"""Moving numpy arrays in and out of slangpy device buffers.

Structured buffers of 32-bit elements (float32, int32, uint32) are what every
Neumours kernel reads and writes; these helpers keep the usage flags and the
byte views in one place.
"""

from __future__ import annotations

import numpy as np
import slangpy as spy

_USAGE = spy.BufferUsage.shader_resource | spy.BufferUsage.unordered_access
_SUPPORTED = (np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint32))
#: From this size, uploads to a CUDA device go through torch (measured ~0.5 GB/s
#: through slangpy's create-with-data on an H100 host, ~8 GB/s through torch).
_TORCH_UPLOAD_BYTES = 1 << 20


def _upload_through_torch(buffer: spy.Buffer, data: np.ndarray) -> None:
    """Copy ``data`` into a CUDA buffer through its zero-copy torch view, then wait for it."""
    import torch

    if data.dtype == np.float32:
        view = buffer.to_torch(spy.DataType.float32, [data.size])
    else:  # 32-bit integers travel as their int32 bit patterns
        view, data = buffer.to_torch(spy.DataType.int32, [data.size]), data.view(np.int32)
    view.copy_(torch.from_numpy(data))
    torch.cuda.current_stream(view.device).synchronize()


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _SUPPORTED:
        raise TypeError(f"device buffers hold float32, int32 or uint32, not {dtype}")
    return dtype


def upload(device: spy.Device, array: np.ndarray, dtype=np.float32) -> spy.Buffer:
    """Copy ``array`` (any shape) into a new buffer of ``array.size`` elements of ``dtype``."""
    dtype = _check_dtype(dtype)
    data = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    if data.size == 0:
        return empty_buffer(device, 1, dtype)
    if device.info.type == spy.DeviceType.cuda and data.nbytes >= _TORCH_UPLOAD_BYTES:
        buffer = empty_buffer(device, data.size, dtype)
        _upload_through_torch(buffer, data)
        return buffer
    return device.create_buffer(element_count=data.size, struct_size=dtype.itemsize, usage=_USAGE, data=data)


def empty_buffer(device: spy.Device, count: int, dtype=np.float32) -> spy.Buffer:
    """A buffer of ``count`` uninitialised elements of ``dtype`` (at least one)."""
    dtype = _check_dtype(dtype)
    return device.create_buffer(element_count=max(int(count), 1), struct_size=dtype.itemsize, usage=_USAGE)


def zeros_buffer(device: spy.Device, count: int, dtype=np.float32) -> spy.Buffer:
    """A buffer of ``count`` zeros of ``dtype``."""
    return upload(device, np.zeros(max(int(count), 1), dtype=dtype), dtype)


def copy_elements(device: spy.Device, dst: spy.Buffer, src: spy.Buffer, src_start: int, count: int,
                  element_bytes: int = 4) -> None:
    """Copy elements ``src_start .. src_start + count`` of ``src`` to the start of ``dst`` on the device."""
    encoder = device.create_command_encoder()
    encoder.copy_buffer(dst, 0, src, int(src_start) * element_bytes, int(count) * element_bytes)
    device.submit_command_buffer(encoder.finish())


def download(buffer: spy.Buffer, shape=None, dtype=np.float32) -> np.ndarray:
    """Read ``buffer`` back as a new numpy array of ``dtype``, reshaped to ``shape``."""
    dtype = _check_dtype(dtype)
    flat = buffer.to_numpy().view(dtype).copy()
    if shape is None:
        return flat
    count = int(np.prod(shape))
    return flat[:count].reshape(shape)
