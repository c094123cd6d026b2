"""Training points drawn on the device: the draw rule of :class:`PointSampler` from a Philox generator.

Point i of micro-batch m at step s is a pure function of (seed, s, m, i): the Philox4x32-10 words
of counter (s, m, i, 0) under the seed pick its slot (uniform over the pool's slots) and its voxel
(the first round(foreground_ratio * n) points of a micro-batch at a tumour voxel of their slot,
uniform over its list, or uniform over the volume when the slot has no tumour; the others uniform
over the volume). :meth:`DeviceSampler.sample` only dispatches, so it records into a step's
command buffer (:func:`neumours.device.recording`); the CPU device draws the same points as any
GPU. :func:`reference_points` is the same rule in numpy, bit for bit.

No generator state: a resumed run draws the points of an uninterrupted one by passing the same
step numbers (with the pool rebuilt as it was at that step, :meth:`CasePool.state`).
"""

from __future__ import annotations

import numpy as np
import slangpy as spy

from neumours.device import ScratchBuffers, upload_into
from neumours.kernels import sampler as kernels
from neumours.kernels.sampler import STREAM_POINTS
from neumours.train.philox import philox4x32, seed_key, uniform_below
from neumours.train.pool import HostCase
from neumours.train.sampler import CaseTable, foreground_count

_LIMIT = 1 << 32


class DeviceSampler:
    """Voxel positions, slots, labels (and signed distances) of micro-batches, drawn on the device.

    Args:
        device: slangpy device.
        foreground_ratio: share of each micro-batch drawn from tumour voxels.
        seed: the generator's key, in [0, 2^64).
        slot_voxels: voxels reserved per slot in the label buffer (CasePool: ``slot_floats //
            num_modalities``), so a case swapped in never outgrows its slot; 0: the largest case given.
    """

    def __init__(self, device: spy.Device, foreground_ratio: float, seed: int = 0, slot_voxels: int = 0):
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
        seed_key(seed)
        self.device = device
        self.foreground_ratio = float(foreground_ratio)
        self.seed = int(seed)
        self.slot_voxels = int(slot_voxels)
        self._buffers = ScratchBuffers(device)
        self._cases: list[HostCase] = []
        self._distances: np.ndarray | None = None
        self._stride = 0   # label bytes per slot, a multiple of 4
        self.table: kernels.PointTable | None = None

    def update(self, cases: list[HostCase], distances: np.ndarray | None = None) -> None:
        """Upload what the kernel reads of the pool's ``cases`` (one per slot), after what changed.

        Call it once, and again after every :meth:`CasePool.refresh` that swapped a case in. A slot
        whose case is the same object as last time is not uploaded again; a changed slot costs its
        label bytes (and distances); the tumour lists (4 bytes a tumour voxel, every slot) and the
        slot table go up whole each time. Not inside a recording block.

        Args:
            distances: (slots, voxels, C - 1) float32 signed distances (:attr:`CasePool.distances`), or None.
        """
        cases = list(cases)
        if not cases:
            raise ValueError("the sampler needs at least one case")
        sizes = [int(np.prod(c.shape)) for c in cases]
        if any(c.label.size != size for c, size in zip(cases, sizes)):
            raise ValueError("every case's label must have X * Y * Z voxels")
        stride = -(-max(self.slot_voxels, self._stride, *sizes) // 4) * 4
        changed = [slot for slot, case in enumerate(cases)
                   if slot >= len(self._cases) or case is not self._cases[slot]]
        if stride != self._stride or len(cases) != len(self._cases):
            changed = list(range(len(cases)))
        if len(cases) * stride >= _LIMIT:
            raise ValueError(f"{len(cases)} slots of {stride} voxels exceed the 2^32 label bytes the kernel addresses")
        labels = self._buffers.get("labels", len(cases) * stride // 4, np.uint32)
        for slot in changed:
            padded = np.zeros(stride, np.uint8)
            padded[:sizes[slot]] = cases[slot].label
            upload_into(self.device, labels, padded.view(np.uint32), np.uint32, slot * stride // 4)
        counts = np.array([c.tumour.size for c in cases], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if counts.sum() >= _LIMIT:
            raise ValueError("more than 2^32 tumour voxels in the pool")
        tumour = np.concatenate([c.tumour for c in cases]).astype(np.uint32)
        table = np.array([(*c.shape, slot * stride, offset, count)
                          for slot, (c, offset, count) in enumerate(zip(cases, offsets, counts))], np.uint32)
        point_table = kernels.PointTable(self._buffers.upload("table", table, np.uint32), labels,
                                         self._buffers.upload("tumour", tumour, np.uint32), len(cases))
        if distances is not None:
            point_table.distances = self._upload_distances(distances, cases, sizes, changed)
            point_table.distance_columns, point_table.distance_stride = distances.shape[2], distances[0].size
        self.table = point_table
        self._cases, self._stride = cases, stride
        self._distances = distances

    def _upload_distances(self, distances: np.ndarray, cases: list[HostCase], sizes: list[int],
                          changed: list[int]) -> spy.Buffer:
        if distances.dtype != np.float32 or distances.ndim != 3 or distances.shape[0] != len(cases) \
                or distances.shape[1] < max(sizes) or distances.size >= _LIMIT:
            raise ValueError(f"distances must be (slots, voxels >= {max(sizes)}, C - 1) float32 with fewer than "
                             f"2^32 values, got {distances.dtype} {distances.shape}")
        previous = self._distances
        if previous is None or previous is not distances:
            changed = list(range(len(cases)))
        buffer = self._buffers.get("distances", distances.size)
        for slot in changed:
            upload_into(self.device, buffer, distances[slot], np.float32, slot * distances[0].size)
        return buffer

    def sample(self, step: int, micro_batch: int, n: int, positions: spy.Buffer, slots: spy.Buffer,
               labels: spy.Buffer, phi: spy.Buffer | None = None, micro_batches: int = 1) -> None:
        """Draw micro-batches ``micro_batch .. micro_batch + micro_batches - 1`` of step ``step``, ``n`` points each,
        one after another in the outputs. Only dispatches: may run inside :func:`neumours.device.recording`.

        Args:
            positions: output (N, 3) float32 voxel indices X, Y, Z; slots, labels: output (N,) uint32,
                N = n * micro_batches.
            phi: output (N, C) float32 signed distances, background's 0 (needs ``distances`` in :meth:`update`).
        """
        if self.table is None:
            raise ValueError("DeviceSampler.sample before update: no cases on the device")
        kernels.sample_points(self.device, self.table, self.seed, step, micro_batch, n, micro_batches,
                              foreground_count(self.foreground_ratio, n), positions, slots, labels, phi)


def reference_points(cases: list[HostCase], foreground_ratio: float, seed: int, step: int, micro_batch: int, n: int,
                     distances: np.ndarray | None = None, micro_batches: int = 1) -> tuple[np.ndarray, ...]:
    """What :meth:`DeviceSampler.sample` draws, in numpy (its test's reference): positions (N, 3) float32,
    slots (N,) uint32, labels (N,) uint32 and with ``distances`` phi (N, C) float32, N = n * micro_batches."""
    t = CaseTable(list(cases))
    index = np.tile(np.arange(n, dtype=np.int64), micro_batches)
    batch = np.repeat(np.arange(micro_batch, micro_batch + micro_batches, dtype=np.int64), n)
    counters = np.stack([np.full_like(index, step), batch, index, np.full_like(index, STREAM_POINTS)], axis=1)
    r = philox4x32(counters.astype(np.uint32), seed_key(seed))
    slots = uniform_below(r[:, 0], r[:, 3], len(cases))
    counts = t.tumour_counts[slots]
    tumour = (index < foreground_count(foreground_ratio, n)) & (counts > 0)
    pick = t.tumour_offsets[slots] + uniform_below(r[:, 1], r[:, 2], np.maximum(counts, 1))
    flat = np.where(tumour, t.tumour[np.where(tumour, pick, 0)], uniform_below(r[:, 1], r[:, 2], t.sizes[slots]))
    return t.points(slots, flat, distances)
