"""Wrapper of ``slang/accumulate_kernels.slang``: ``out[index[i]] += value[i]``."""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "accumulate_kernels.slang"


def scatter_add(device: spy.Device, values: spy.Buffer, indices: spy.Buffer, out: spy.Buffer, count: int) -> None:
    """``out[indices[i]] += values[i]`` for i < count (float atomics on the GPU, plain adds on the CPU).

    Args:
        values: (count,) float32. indices: (count,) uint32, each < len(out). out: float32, added to.
    """
    require(values, count, "values")
    require(indices, count, "indices")
    load_kernel(device, FILE, "scatter_add")(count, params={"values": values, "indices": indices, "out": out,
                                                            "count": int(count)})
