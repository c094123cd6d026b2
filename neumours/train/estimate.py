"""Time estimates before long work: one line on stderr when a run will take more than a few minutes.

A command about to run for long on the chosen device says so first, from a
measured step, with the setting that makes it CPU-sized (the paper's network on
the CPU device takes minutes per step; validating every voxel of big cases takes
most of a tiny run). The numbers are measured on the machine at hand, so they
hold for it; they are estimates (other load, caches), not promises.
"""

from __future__ import annotations

import sys

#: Work shorter than this (seconds) is not announced.
LONG_S = 180.0


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.1 h`` or ``3.0 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def long_work_note(what: str, seconds: float, measured: str, suggestion: str | None) -> str | None:
    """``neumours: note: WHAT will take about T (MEASURED); SUGGESTION``, or None below :data:`LONG_S`."""
    if seconds < LONG_S:
        return None
    line = f"neumours: note: {what} will take about {format_duration(seconds)} ({measured})"
    return line + (f"; {suggestion}" if suggestion else "")


def training_seconds(step_s: float, remaining_steps: int, validations: int, validation_s: float) -> float:
    """Seconds left: the measured step times the steps left, plus the validations still to come."""
    return step_s * remaining_steps + validation_s * validations


def announce_estimate(trainer, remaining_steps: int, step_s: float, bar=None) -> str | None:
    """Print (above the progress bar) how long ``trainer``'s remaining steps will take, when that is long.

    A validation is estimated by timing the INR on a small grid of a validation
    case (:meth:`~neumours.train.validate.Validator.seconds`). Returns the line, or None.
    """
    import slangpy as spy

    from neumours.model.config import INRConfig

    cfg = trainer.config
    validation_s = trainer.validator.seconds()
    end = trainer.step + remaining_steps
    validations = sum(1 for s in range(trainer.step + 1, end + 1)
                      if s % cfg.schedule.val_every == 0 or s == cfg.schedule.steps)
    seconds = training_seconds(step_s, remaining_steps, validations, validation_s)
    cpu = trainer.device.info.type == spy.DeviceType.cpu
    if cpu and cfg.network.architecture() == INRConfig.paper():
        suggestion = "for a CPU-sized run: --preset tiny"
    elif cpu:
        suggestion = "for a CPU-sized run: fewer --steps or a larger --val-every"
    else:
        suggestion = "fewer --steps shorten it"
    line = long_work_note(f"training ({remaining_steps} more steps, {validations} validations of "
                          f"{trainer.validator.describe()})", seconds,
                          f"measured: {step_s:.2f} s a step, {validation_s:.0f} s a validation", suggestion)
    if line is not None:
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)
    return line
