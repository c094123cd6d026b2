"""How much memory a job may still take: free host memory, and free GPU memory where it can be asked.

slangpy 0.43.1 reports no memory figures for its devices (``device.info.limits``
has none, ``report_heaps`` is empty on the CPU device), so: the CPU device's
buffers live in host memory, read from the OS; a CUDA device's free memory is
asked of torch's CUDA runtime when torch was built with CUDA (the same GPU);
otherwise (Vulkan, Metal, a CPU-only torch) it is unknown and only host memory
and buffer limits are checked.
"""

from __future__ import annotations

import os

import slangpy as spy


def host_available_bytes() -> int | None:
    """Memory the OS can still give this process (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def device_available_bytes(device: spy.Device | None) -> int | None:
    """Free memory of ``device``'s own memory (None for the CPU device, whose memory is the host's, or unknown)."""
    if device is None or device.info.type != spy.DeviceType.cuda:
        return None
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return int(free)
    except Exception:  # noqa: BLE001 - no CUDA runtime in this torch: unknown
        pass
    return None
