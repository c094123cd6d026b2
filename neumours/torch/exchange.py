"""Torch tensors in and out of slangpy device buffers, and the order between torch's and slangpy's work.

On CUDA a tensor that Neumours returns *is* its device buffer (``Buffer.to_torch``,
zero-copy); a tensor made by torch is copied device-to-device into a buffer when a
kernel needs it (one memcpy, no host round trip). On every other device (the CPU
device of tests and CI) tensors live on the host and cross by explicit copies.

Stream order (CUDA): torch queues its kernels on its current stream, slangpy submits
to its own queue, so each crossing waits for the other side, as the torch bridge
does (:class:`neumours.model.bridge.TorchBridge`): :func:`before_kernels` waits for
torch's stream before Slang kernels read what torch wrote, :func:`after_kernels`
waits for the device before torch reads what the kernels wrote.
"""

from __future__ import annotations

import numpy as np
import slangpy as spy
import torch

from neumours.device import download, empty_buffer, get_device, upload
from neumours.device.buffers import ScratchBuffers
from neumours.errors import NeumoursError

#: Attribute of a returned tensor naming the device buffer it mirrors, with the tensor's
#: version then; a later call reuses the buffer while the tensor is unchanged.
_BUFFER_ATTR = "_neumours_buffer"


def is_cuda(device: spy.Device) -> bool:
    return device.info.type == spy.DeviceType.cuda


def torch_device(device: spy.Device) -> torch.device:
    """Where tensors of ``device`` live: CUDA memory for the CUDA device, else the host."""
    return torch.device("cuda", torch.cuda.current_device()) if is_cuda(device) else torch.device("cpu")


def device_for(*tensors: torch.Tensor | None) -> spy.Device:
    """The slangpy device of tensors: the one that made them, else CUDA for CUDA tensors, else the CPU device."""
    for t in tensors:
        mirrored = getattr(t, _BUFFER_ATTR, None)
        if mirrored is not None:
            return mirrored[2]
    return get_device("cuda" if any(t is not None and t.is_cuda for t in tensors) else "cpu")


def before_kernels(device: spy.Device) -> None:
    """Wait for torch's queued work before Slang kernels read tensors torch wrote (CUDA only)."""
    if is_cuda(device):
        torch.cuda.current_stream().synchronize()


def after_kernels(device: spy.Device) -> None:
    """Wait for the device before torch reads buffers the Slang kernels wrote (CUDA only)."""
    if is_cuda(device):
        device.wait_for_idle()


def check(name: str, tensor: torch.Tensor, device: spy.Device, shape: tuple | None = None) -> torch.Tensor:
    """``tensor`` as float32, after checking its shape (None entries match any size) and where it lives.

    Raises:
        NeumoursError: a tensor of another shape, or on the wrong side (a CPU tensor for the CUDA device).
    """
    if not isinstance(tensor, torch.Tensor):
        raise NeumoursError(f"{name}: expected a torch tensor, got {type(tensor).__name__}")
    if shape is not None and (tensor.ndim != len(shape) or any(s is not None and s != t
                                                                for s, t in zip(shape, tensor.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise NeumoursError(f"{name}: expected shape {want}, got {tuple(tensor.shape)}")
    if tensor.is_cuda != is_cuda(device):
        kind = str(device.info.type).rsplit(".", 1)[-1]
        raise NeumoursError(f"{name}: a {tensor.device.type} tensor cannot feed the {kind} device; "
                            f"use tensors on {torch_device(device)}")
    if not tensor.dtype.is_floating_point:
        raise NeumoursError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor


def to_buffer(device: spy.Device, tensor: torch.Tensor, dtype=np.float32,
              scratch: ScratchBuffers | None = None, name: str = "") -> spy.Buffer:
    """A device buffer holding ``tensor``'s elements (C order) as ``dtype``.

    The buffer of a tensor Neumours returned is reused as long as the tensor was not
    modified since; otherwise a buffer is filled (device-to-device on CUDA): the
    ``scratch`` buffer ``name`` when given (kept between calls: creating a buffer costs
    more than the copy on CUDA), else a new one.
    Call :func:`before_kernels` before a kernel reads it.
    """
    mirrored = getattr(tensor, _BUFFER_ATTR, None)
    if mirrored is not None and mirrored[1] == tensor._version and mirrored[2] is device:
        return mirrored[0]
    t = tensor.detach()
    count = t.numel()
    if is_cuda(device):
        t = t.to(torch.float32 if dtype == np.float32 else torch.int32).contiguous().reshape(-1)
        buffer = scratch.get(name, count, dtype) if scratch is not None else empty_buffer(device, max(count, 1), dtype)
        kind = spy.DataType.float32 if dtype == np.float32 else spy.DataType.int32
        if count:
            buffer.to_torch(kind, [count]).copy_(t)
        return buffer
    if scratch is not None:
        return scratch.upload(name, t.cpu().numpy(), dtype)
    return upload(device, t.cpu().numpy(), dtype)


def from_buffer(device: spy.Device, buffer: spy.Buffer, shape) -> torch.Tensor:
    """A float32 tensor of ``shape`` with the buffer's first elements: the buffer itself on CUDA
    (the caller hands it over and must not write it again), a host copy elsewhere.
    Waits for the device first (:func:`after_kernels`)."""
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape))
    after_kernels(device)
    if is_cuda(device):
        tensor = buffer.to_torch(spy.DataType.float32, [max(count, 1)])[:count].view(shape)
    else:
        tensor = torch.from_numpy(download(buffer, shape) if count else np.zeros(shape, np.float32))
    setattr(tensor, _BUFFER_ATTR, (buffer, tensor._version, device))
    return tensor


def zeros(device: spy.Device, count: int) -> spy.Buffer:
    """A float32 buffer of ``count`` zeros, cleared on the device (no host upload of zeros)."""
    buffer = empty_buffer(device, max(int(count), 1))
    encoder = device.create_command_encoder()
    encoder.clear_buffer(buffer)
    device.submit_command_buffer(encoder.finish())
    return buffer


def first_order(backward):
    """Mark an autograd ``backward`` as first-order only: asked for a graph of its own
    (``create_graph=True``, double backward) it raises a clear error instead of returning
    gradients that would silently lack their second derivative."""
    import functools

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("neumours.torch: double backward (create_graph=True) is not supported: the Slang "
                               "kernels give first derivatives only")
        return backward(ctx, *grads)

    return wrapped
