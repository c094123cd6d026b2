"""Drawing training points from the case pool (SPEC.md: foreground ratio 0.1).

Each micro-batch: a case per point, uniformly over the pool; a
``foreground_ratio`` share of the points at tumour voxels (label > 0) of their
case, the rest uniformly over the whole volume. Seeded; the generator state is
saved with checkpoints so a resumed run draws the same points.
"""

from __future__ import annotations

import numpy as np

from neumours.train.pool import HostCase


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

    def sample(self, cases: list[HostCase], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` points.

        Returns:
            positions (n, 3) float32 voxel indices, slots (n,) uint32, labels (n,) uint32.
        """
        slots = self.rng.integers(0, len(cases), n)
        foreground = np.zeros(n, bool)
        foreground[: int(round(self.foreground_ratio * n))] = True
        flat = np.empty(n, np.int64)
        for slot in np.unique(slots):
            case = cases[slot]
            pick = slots == slot
            fg = pick & foreground & (case.tumour.size > 0)
            bg = pick & ~fg
            flat[bg] = self.rng.integers(0, case.label.size, int(bg.sum()))
            if fg.any():
                flat[fg] = case.tumour[self.rng.integers(0, case.tumour.size, int(fg.sum()))]
        positions = np.empty((n, 3), np.float32)
        labels = np.empty(n, np.uint32)
        for slot in np.unique(slots):
            case = cases[slot]
            pick = slots == slot
            positions[pick] = np.stack(np.unravel_index(flat[pick], case.shape), axis=1)
            labels[pick] = case.label[flat[pick]]
        return positions, slots.astype(np.uint32), labels

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
