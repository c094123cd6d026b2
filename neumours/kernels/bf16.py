"""Wrapper of ``slang/bf16_kernels.slang``: float32 weights copied as bf16 for the tensor-core kernels.

:func:`pack_bf16`: matrices with padded rows (the layer-by-layer products);
:func:`pack_fragments` and :func:`pack_padded_biases`: the fused inference kernel's weights in
mma.sync B-fragment order and its biases padded to whole 8-column tiles
(:mod:`neumours.model.fused` builds their layer table).
"""

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
#: Most layers a fragment table may hold, and the uint32 words of one layer's entry: weight offset,
#: n, k, fragment word offset, n8, k16, bias offset, padded bias offset.
MAX_LAYERS = 16
LAYER_WORDS = 8
_CONSTANTS = {"MAX_TENSORS": MAX_TENSORS, "MAX_LAYERS": MAX_LAYERS, "LAYER_WORDS": LAYER_WORDS}


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
    load_kernel(device, FILE, "pack_bf16", _CONSTANTS)(
        pairs, params={"source": source, "table": table, "packed": packed, "tensors": int(tensors),
                       "pairs": int(pairs)})


def _pack_layers(device: spy.Device, entry: str, source: spy.Buffer, layers: spy.Buffer, count: int, total: int,
                 **output: spy.Buffer) -> None:
    if not 0 < count <= MAX_LAYERS:
        raise ValueError(f"a fragment table holds 1 to {MAX_LAYERS} layers, got {count}")
    require(layers, LAYER_WORDS * count, "layers")
    if total:
        load_kernel(device, FILE, entry, _CONSTANTS)(
            total, params={"source": source, "table": layers, "tensors": int(count), "pairs": int(total), **output})


def pack_fragments(device: spy.Device, source: spy.Buffer, layers: spy.Buffer, count: int, words: spy.Buffer,
                   total: int) -> None:
    """words (total,) uint32 = the weights of ``layers`` (``count`` entries of :data:`LAYER_WORDS`) as bf16
    pairs in mma.sync B-fragment order (slang/bf16_kernels.slang says the order)."""
    require(words, total, "words")
    _pack_layers(device, "pack_fragments", source, layers, count, total, packed=words)


def pack_padded_biases(device: spy.Device, source: spy.Buffer, layers: spy.Buffer, count: int, biases: spy.Buffer,
                       total: int) -> None:
    """biases (total,) float32 = the biases of ``layers``, each padded with zeros to whole 8-value tiles."""
    require(biases, total, "biases")
    _pack_layers(device, "pack_padded_biases", source, layers, count, total, biases=biases)
