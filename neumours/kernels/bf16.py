"""Wrapper of ``slang/bf16_kernels.slang``: float32 tensors packed as padded bf16 matrices."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import load_kernel, upload
from neumours.kernels.checks import require

FILE = "bf16_kernels.slang"
#: Most tensors one table may hold (a compile-time bound of the kernel's loop).
MAX_TENSORS = 16
#: Rows are padded to a multiple of this many values (the tensor-core product's 16-byte chunks).
ROW_MULTIPLE = 8


def padded(cols: int) -> int:
    """Row length of a packed matrix of ``cols`` columns."""
    return -(-int(cols) // ROW_MULTIPLE) * ROW_MULTIPLE


def pack_table(device: spy.Device, entries: Sequence[tuple[int, int, int, int]]) -> tuple[spy.Buffer, int]:
    """The kernel's table for tensors given as (source offset, rows, cols, output offset), and the pairs in all.

    Output offsets count bf16 values; each must be a multiple of :data:`ROW_MULTIPLE`.
    """
    if not 0 < len(entries) <= MAX_TENSORS:
        raise ValueError(f"a table holds 1 to {MAX_TENSORS} tensors, got {len(entries)}")
    rows = []
    end = 0
    for source, count, cols, out in entries:
        if out % ROW_MULTIPLE:
            raise ValueError(f"output offset {out} is not a multiple of {ROW_MULTIPLE}")
        rows.append((source, count, cols, padded(cols), out))
        end = max(end, out + count * padded(cols))
    return upload(device, np.array(rows, np.uint32), np.uint32), -(-end // 2)


def pack_bf16(device: spy.Device, source: spy.Buffer, table: spy.Buffer, tensors: int, packed: spy.Buffer,
              pairs: int) -> None:
    """packed (pairs,) uint32 = the tensors of ``table`` (from :func:`pack_table`) as padded bf16 rows."""
    require(packed, pairs, "packed")
    require(table, 5 * tensors, "table")
    load_kernel(device, FILE, "pack_bf16", {"MAX_TENSORS": MAX_TENSORS})(
        pairs, params={"source": source, "table": table, "packed": packed, "tensors": int(tensors),
                       "pairs": int(pairs)})
