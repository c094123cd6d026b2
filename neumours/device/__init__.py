"""Compute devices and compiled Slang kernels.

``select`` (``get_device``) picks a slangpy device (CUDA, Vulkan, Metal or the
CPU target), ``kernels`` (``load_kernel``) compiles an explicit compute entry
point of ``slang/`` once per device and set of compile-time constants,
``buffers`` moves numpy arrays in and out of device buffers (``ScratchBuffers``
keeps working buffers between calls), and ``facts`` (``device_facts``) says what
work splits need to know of a device (its multiprocessor count). Everything
heavy in Neumours runs through these; the rest of the package dispatches
kernels through :mod:`neumours.kernels`.
"""

from neumours.device.buffers import (
    ScratchBuffers,
    copy_elements,
    download,
    empty_buffer,
    upload,
    upload_into,
    zeros_buffer,
)
from neumours.device.facts import DeviceFacts, device_facts
from neumours.device.kernels import Kernel, load_kernel, recording, slang_dir
from neumours.device.select import DEVICE_KINDS, describe, get_device

__all__ = [
    "DEVICE_KINDS",
    "DeviceFacts",
    "ScratchBuffers",
    "copy_elements",
    "Kernel",
    "describe",
    "device_facts",
    "download",
    "empty_buffer",
    "get_device",
    "load_kernel",
    "recording",
    "slang_dir",
    "upload",
    "upload_into",
    "zeros_buffer",
]
