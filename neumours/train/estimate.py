"""How long the rest of a training run will take, from its measured second step (:mod:`neumours.estimates`).

The paper's network on the CPU device takes about 15 s a step, and validating
every voxel of big cases can take most of a tiny run: the trainer says so before
it goes on, with the setting that makes the run CPU-sized.
"""

from __future__ import annotations

import sys

from neumours.estimates import long_work_note


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
