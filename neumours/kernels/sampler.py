"""Wrappers of ``slang/sampler_kernels.slang``: training points drawn on the device with Philox4x32-10.

The pool's cases sit in a :class:`PointTable` (one row per slot, packed labels, tumour voxel
lists, optionally signed distances), filled by :class:`neumours.train.device_sampler.DeviceSampler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "sampler_kernels.slang"
#: uint32 values per slot in :attr:`PointTable.table`: X, Y, Z, label byte offset, tumour offset, tumour count.
TABLE_WIDTH = 6
#: Counter word 3 of the training points' draws (other draws would take other streams).
STREAM_POINTS = 0
_WORD = 1 << 32


def _constants(distance_columns: int) -> dict:
    return {"DISTANCE_COLUMNS": int(distance_columns), "STREAM_POINTS": STREAM_POINTS, "TABLE_WIDTH": TABLE_WIDTH}


@dataclass
class PointTable:
    """The pool's cases as the sampling kernel reads them.

    Attributes:
        table: uint32 (num_slots, TABLE_WIDTH).
        label_bytes: uint32 words holding the uint8 label volumes, 4 voxels a word (byte k = voxel k).
        tumour: uint32 flat voxel indices of the slots' tumour voxels, slot after slot.
        num_slots: slots the points are drawn over.
        distances: None, or float32 (num_slots, distance_stride): each slot's (voxels, distance_columns)
            signed distances, for the boundary loss.
    """

    table: spy.Buffer
    label_bytes: spy.Buffer
    tumour: spy.Buffer
    num_slots: int
    distances: spy.Buffer | None = None
    distance_columns: int = 0
    distance_stride: int = 0


def _key(seed: int) -> dict:
    seed = int(seed)
    if not 0 <= seed < _WORD * _WORD:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return {"seed_low": seed % _WORD, "seed_high": seed // _WORD}


def _word(value: int, name: str) -> int:
    value = int(value)
    if not 0 <= value < _WORD:
        raise ValueError(f"{name} must be in [0, 2^32), got {value}")
    return value


def sample_points(device: spy.Device, pool: PointTable, seed: int, step: int, first_micro_batch: int, count: int,
                  micro_batches: int, foreground: int, positions: spy.Buffer, slots: spy.Buffer, labels: spy.Buffer,
                  phi: spy.Buffer | None = None) -> None:
    """Draw ``micro_batches`` micro-batches of ``count`` points, one after another in the outputs.

    Args:
        foreground: points at the start of each micro-batch drawn from their slot's tumour voxels.
        positions: output (N, 3) float32 voxel indices; slots, labels: output (N,) uint32, N = count * micro_batches.
        phi: output (N, distance_columns + 1) float32 signed distances (column 0 zero); needs ``pool.distances``.
    """
    total = int(count) * int(micro_batches)
    if pool.num_slots < 1:
        raise ValueError("the point table has no slots")
    if not 0 <= foreground <= count:
        raise ValueError(f"foreground must be in [0, {count}], got {foreground}")
    _word(int(first_micro_batch) + int(micro_batches), "first_micro_batch + micro_batches")
    _word(total, "count * micro_batches")
    require(positions, 3 * total, "positions")
    require(slots, total, "slots")
    require(labels, total, "labels")
    params = {"table": pool.table, "label_bytes": pool.label_bytes, "tumour": pool.tumour, "positions": positions,
              "slots": slots, "labels": labels, **_key(seed), "step": _word(step, "step"),
              "first_micro_batch": int(first_micro_batch), "count": int(count), "total": total,
              "foreground": int(foreground), "num_slots": int(pool.num_slots)}
    columns = 0
    if phi is not None:
        if pool.distances is None:
            raise ValueError("phi asks for signed distances, but the point table has none")
        columns = int(pool.distance_columns)
        require(phi, (columns + 1) * total, "phi")
        params.update(distances=pool.distances, phi=phi, distance_stride=int(pool.distance_stride))
    load_kernel(device, FILE, "sample_points", _constants(columns))(total, params=params)


def random_words(device: spy.Device, seed: int, counter: Sequence[int], count: int, words: spy.Buffer) -> None:
    """The Philox4x32-10 words of ``count`` counters (c0, c1, c2 + i, c3) under ``seed``: (count, 4) uint32."""
    c = [_word(v, "counter") for v in counter]
    if len(c) != 4:
        raise ValueError(f"counter must have 4 words, got {len(c)}")
    _word(c[2] + max(int(count) - 1, 0), "counter word 2 + count - 1")
    require(words, 4 * count, "words")
    load_kernel(device, FILE, "random_words", _constants(0))(
        count, params={"words": words, "counter": c, **_key(seed), "total": int(count)})
