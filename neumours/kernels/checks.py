"""Shared checks of the kernel wrappers: buffer sizes and the device's features."""

from __future__ import annotations

import slangpy as spy


def require(buffer: spy.Buffer, elements: int, name: str, element_bytes: int = 4) -> None:
    """Raise ValueError if ``buffer`` holds fewer than ``elements`` values of ``element_bytes`` each.

    A kernel writing past the end of a buffer corrupts memory silently on the
    GPU; the wrappers check every buffer against the counts they are given.
    """
    needed = int(elements) * element_bytes
    if buffer.size < needed:
        raise ValueError(f"{name}: buffer of {buffer.size} bytes, the kernel needs {needed} ({int(elements)} values)")


def uses_groupshared(device: spy.Device) -> bool:
    """Whether kernels may use group-shared memory, barriers and wave operations.

    slangpy's CPU target runs the threads of a dispatch one after another and
    has no group barriers, so kernels there take a plain path (USE_GROUPSHARED 0).
    """
    return device.info.type != spy.DeviceType.cpu
