"""Drawing training points from the case pool (docs/method.md: foreground ratio 0.1).

Each micro-batch: a case per point, uniformly over the pool; a
``foreground_ratio`` share of the points at tumour voxels (label > 0) of their
case, the rest uniformly over the whole volume. Seeded; the generator state is
saved with checkpoints so a resumed run draws the same points. With the boundary
loss (``[loss] boundary_weight``) the points' signed distances are gathered with
their labels, from the same draws: the points are those of the run without it.
"""

from __future__ import annotations

import numpy as np

from neumours.train.pool import HostCase


def foreground_count(foreground_ratio: float, n: int) -> int:
    """Points of an ``n``-point micro-batch drawn from tumour voxels: round(ratio * n)."""
    return int(round(foreground_ratio * n))


class CaseTable:
    """The pool's cases concatenated, so a micro-batch is drawn with a few vector operations."""

    def __init__(self, cases: list[HostCase]):
        self.cases = cases
        self.sizes = np.array([c.label.size for c in cases], np.int64)
        self.shapes = np.array([c.shape for c in cases], np.int64)
        self.label_offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.labels = np.concatenate([c.label for c in cases])
        counts = np.array([c.tumour.size for c in cases], np.int64)
        self.tumour_counts = counts
        self.tumour_offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.tumour = np.concatenate([c.tumour for c in cases]) if counts.sum() else np.zeros(1, np.int64)

    def points(self, slots: np.ndarray, flat: np.ndarray,
               distances: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """What a sampler returns for the voxels ``flat`` (C-order indices) of the slots ``slots`` (see
        :meth:`PointSampler.sample`): positions (n, 3) float32 X, Y, Z, slots and labels (n,) uint32, with
        ``distances`` also the signed distances (n, C) float32, background's 0."""
        shape = self.shapes[slots]
        positions = np.stack([flat // (shape[:, 1] * shape[:, 2]), (flat // shape[:, 2]) % shape[:, 1],
                              flat % shape[:, 2]], axis=1).astype(np.float32)
        labels = self.labels[self.label_offsets[slots] + flat].astype(np.uint32)
        if distances is None:
            return positions, slots.astype(np.uint32), labels
        phi = np.zeros((len(flat), distances.shape[2] + 1), np.float32)
        phi[:, 1:] = distances[slots, flat]
        return positions, slots.astype(np.uint32), labels, phi


class PointSampler:
    """Voxel positions, case slots and labels for micro-batches.

    Args:
        foreground_ratio: share of points drawn from tumour voxels.
        seed: generator seed.
    """

    def __init__(self, foreground_ratio: float, seed: int = 0):
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
        self.foreground_ratio = float(foreground_ratio)
        self.rng = np.random.default_rng(seed)
        self._table: CaseTable | None = None

    def _table_for(self, cases: list[HostCase]) -> CaseTable:
        table = self._table
        if table is None or len(table.cases) != len(cases) or any(a is not b for a, b in zip(table.cases, cases)):
            table = self._table = CaseTable(list(cases))
        return table

    def sample(self, cases: list[HostCase], n: int, distances: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Draw ``n`` points.

        Args:
            distances: the signed distances of the cases' slots, (slots, voxels, C - 1) float32
                (:attr:`CasePool.distances`), for the boundary loss.

        Returns:
            positions (n, 3) float32 voxel indices, slots (n,) uint32, labels (n,) uint32; with
            ``distances`` also the points' signed distances (n, C) float32, background's 0.
        """
        t = self._table_for(cases)
        slots = self.rng.integers(0, len(cases), n)
        uniform = self.rng.random(n)
        flat = (uniform * t.sizes[slots]).astype(np.int64)
        n_fg = foreground_count(self.foreground_ratio, n)
        fg_slots = slots[:n_fg]
        has_tumour = t.tumour_counts[fg_slots] > 0
        pick = (uniform[:n_fg] * t.tumour_counts[fg_slots]).astype(np.int64)
        fg_flat = t.tumour[np.where(has_tumour, t.tumour_offsets[fg_slots] + pick, 0)]
        flat[:n_fg] = np.where(has_tumour, fg_flat, flat[:n_fg])
        return t.points(slots, flat, distances)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
