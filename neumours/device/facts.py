"""What work splits need to know about a device, asked in one place.

slangpy 0.43.1's ``DeviceInfo`` has no multiprocessor count, so a CUDA device's
is asked of torch's CUDA runtime (the same GPU, as :mod:`neumours.device.memory`
does for free memory). Where it cannot be asked (Vulkan, Metal, a CPU-only
torch) the count is :data:`DEFAULT_MULTIPROCESSORS`, the GPUs the split
heuristics were measured on. slangpy's CPU target runs a dispatch's groups one
after another, so there more groups only add work.
"""

from __future__ import annotations

from dataclasses import dataclass

import slangpy as spy

#: Multiprocessors assumed where the device cannot be asked: an H100 SXM or H200 (132 SMs).
DEFAULT_MULTIPROCESSORS = 132


@dataclass(frozen=True)
class DeviceFacts:
    """Attributes:
        multiprocessors: streaming multiprocessors (compute units) that run groups at once.
        concurrent: whether a dispatch's groups run at the same time (False on the CPU target).
    """

    multiprocessors: int = DEFAULT_MULTIPROCESSORS
    concurrent: bool = True


def _cuda_multiprocessors() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count)
    except Exception:  # noqa: BLE001 - no CUDA runtime in this torch: unknown
        pass
    return None


def device_facts(device: spy.Device) -> DeviceFacts:
    """The facts of ``device``: the CPU target runs groups in turn; a CUDA GPU reports its multiprocessors."""
    kind = device.info.type
    if kind == spy.DeviceType.cpu:
        return DeviceFacts(multiprocessors=1, concurrent=False)
    count = _cuda_multiprocessors() if kind == spy.DeviceType.cuda else None
    return DeviceFacts(multiprocessors=count or DEFAULT_MULTIPROCESSORS)
