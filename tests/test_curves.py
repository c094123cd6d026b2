"""Training-curve smoothing: the EMA of metrics.csv rows is a per-training-step EMA."""

from __future__ import annotations

import numpy as np

from neumours.train.curves import ema


def per_step_ema(steps: np.ndarray, values: np.ndarray, alpha: float) -> np.ndarray:
    """A per-step EMA of the signal that holds each row's value over the steps since the previous
    row (rows with NaN carry no value), read at the rows' steps."""
    keep = ~np.isnan(values)
    held_steps, held_values = steps[keep], values[keep]
    state, out = held_values[0], {}
    for t in range(int(held_steps[0]), int(steps[-1]) + 1):
        if t > held_steps[0]:
            state = alpha * state + (1 - alpha) * held_values[np.searchsorted(held_steps, t)]
        out[t] = state
    return np.array([out[int(s)] for s in steps])


def test_ema_of_rows_10_steps_apart_is_the_per_step_ema(rng):
    steps = np.arange(10, 410, 10, dtype=float)
    values = rng.normal(1.0, 0.3, steps.size)
    values[7] = np.nan  # a row without this metric (e.g. a validation-only column)
    got = ema(values, alpha=0.9, steps=steps)
    keep = ~np.isnan(values)
    np.testing.assert_allclose(got[keep], per_step_ema(steps, values, 0.9)[keep], rtol=1e-12)
    assert got[7] == got[6]  # a row without a value shows the average so far
    # Without steps every row counts as one step: 0.9 per row, lagging ten times further behind.
    plain = ema(values[:3], alpha=0.9)
    np.testing.assert_allclose(plain, [values[0], 0.9 * values[0] + 0.1 * values[1],
                                       0.9 * (0.9 * values[0] + 0.1 * values[1]) + 0.1 * values[2]])
