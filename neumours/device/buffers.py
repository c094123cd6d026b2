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


def _upload_through_torch(buffer: spy.Buffer, array: np.ndarray, offset: int = 0) -> None:
    """Copy ``array`` (its elements in C order) into a CUDA buffer through the buffer's zero-copy
    torch view, then wait for it.

    An array stored in another memory order (NIfTI data is Fortran-ordered) crosses
    to the GPU in its own order and is reordered there: for a 240 x 240 x 155 x 4
    case that is ~20 ms against ~200 ms for reordering on the host first.
    """
    import torch

    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    if array.dtype != np.float32:  # 32-bit integers travel as their int32 bit patterns
        array = array.view(np.int32)
    kind = spy.DataType.float32 if array.dtype == np.float32 else spy.DataType.int32
    view = buffer.to_torch(kind, [offset + array.size])[offset:].view(array.shape)
    source = torch.from_numpy(array)
    if not array.flags.c_contiguous:
        source = source.to(view.device)  # keeps the memory order of a dense array: one plain copy
    view.copy_(source)
    torch.cuda.current_stream(view.device).synchronize()


def _through_torch(device: spy.Device, array: np.ndarray) -> bool:
    return device.info.type == spy.DeviceType.cuda and array.nbytes >= _TORCH_UPLOAD_BYTES


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _SUPPORTED:
        raise TypeError(f"device buffers hold float32, int32 or uint32, not {dtype}")
    return dtype


def upload(device: spy.Device, array: np.ndarray, dtype=np.float32) -> spy.Buffer:
    """Copy ``array`` (any shape, any memory order) into a new buffer of ``array.size`` elements of ``dtype``."""
    dtype = _check_dtype(dtype)
    array = np.asarray(array).astype(dtype, order="K", copy=False)
    if array.size == 0:
        return empty_buffer(device, 1, dtype)
    if _through_torch(device, array):
        buffer = empty_buffer(device, array.size, dtype)
        _upload_through_torch(buffer, array)
        return buffer
    data = np.ascontiguousarray(array).reshape(-1)
    return device.create_buffer(element_count=data.size, struct_size=dtype.itemsize, usage=_USAGE, data=data)


def upload_into(device: spy.Device, buffer: spy.Buffer, array: np.ndarray, dtype=np.float32,
                offset: int = 0) -> spy.Buffer:
    """Copy ``array`` (its elements in C order) into elements ``offset .. offset + array.size`` of an existing
    ``buffer``; returns it. An offset lets a case's modalities go up one by one as they are decoded."""
    dtype = _check_dtype(dtype)
    array = np.asarray(array).astype(dtype, order="K", copy=False)
    offset = int(offset)
    if offset < 0 or (offset * dtype.itemsize + array.nbytes) > buffer.size:
        raise ValueError(f"{array.nbytes} bytes at element {offset} do not fit a {buffer.size}-byte buffer")
    if array.size == 0:
        return buffer
    if _through_torch(device, array):
        _upload_through_torch(buffer, array, offset)
    else:
        encoder = device.create_command_encoder()
        encoder.upload_buffer_data(buffer, offset * dtype.itemsize, np.ascontiguousarray(array).reshape(-1))
        device.submit_command_buffer(encoder.finish())
    return buffer


class ScratchBuffers:
    """Device buffers kept between calls and handed out again by name.

    Creating a buffer of a size the process has not freed before is slow on
    CUDA (~0.2 ms per MB on an H100 with slangpy 0.43.1; a freed block of the
    same size comes back in ~0.1 ms), so work repeated per case on cases of
    varying shapes (segmenting a mixed dataset) takes its working buffers from
    here. A buffer is reallocated only when a request outgrows it; whoever asks
    for a name owns its contents until the next request for that name.
    """

    def __init__(self, device: spy.Device):
        self.device = device
        self._buffers: dict[tuple[str, str], spy.Buffer] = {}

    def get(self, name: str, count: int, dtype=np.float32) -> spy.Buffer:
        """A buffer of at least ``count`` elements of ``dtype`` (contents undefined)."""
        dtype = _check_dtype(dtype)
        key = (name, dtype.str)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < max(int(count), 1) * dtype.itemsize:
            self._buffers.pop(key, None)  # free the old one before allocating its successor
            buffer = self._buffers[key] = empty_buffer(self.device, count, dtype)
        return buffer

    def upload(self, name: str, array: np.ndarray, dtype=np.float32) -> spy.Buffer:
        """``array`` copied into the buffer ``name`` (grown if needed)."""
        return upload_into(self.device, self.get(name, np.asarray(array).size, dtype), array, dtype)


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
