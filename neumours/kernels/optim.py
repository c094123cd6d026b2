"""Wrapper of ``slang/optim_kernels.slang``: gradient norm, clipping, non-finite guard and AdamW on the device.

One optimiser step is three dispatches, :func:`grad_partials`, :func:`finish_step`, :func:`adamw_step`
(:class:`neumours.train.device_optim.DeviceAdamW` strings them together); none reads anything back,
so many steps can be recorded into one command buffer. The ``state`` buffer is
``STATE_WORDS`` uint32 words (the record below) followed by the log slots, one float32 norm per slot.
"""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "optim_kernels.slang"
#: Partial sums of the gradient norm: a fixed count, so the summation order is the same on every device.
PARTIALS = 1024
#: The words of the state record, in order (what each holds: the Slang file's header); the log slots follow.
STATE_RECORD = ("S_NORM", "S_COEF", "S_SKIP", "S_STEP", "S_SKIPPED", "S_FIRST_SKIPPED", "S_LAST_SKIPPED",
                "S_NEG_STEP_SIZE", "S_BC2_SQRT", "S_TOTAL_SKIPPED")
S_NORM, S_COEF, S_SKIP, S_STEP, S_SKIPPED, S_FIRST_SKIPPED, S_LAST_SKIPPED, S_NEG_STEP_SIZE, S_BC2_SQRT, \
    S_TOTAL_SKIPPED = range(len(STATE_RECORD))
STATE_WORDS = len(STATE_RECORD)
#: S_FIRST_SKIPPED / S_LAST_SKIPPED when no step was skipped.
NONE = 0xFFFFFFFF
#: What the kernels are compiled with: these sizes and indices are defined here only.
_CONSTANTS = {"PARTIALS": PARTIALS, "STATE_WORDS": STATE_WORDS, "NONE": f"{NONE:#x}u",
              **{name: index for index, name in enumerate(STATE_RECORD)}}


def _run(device: spy.Device, entry: str, threads: int, **fields) -> None:
    load_kernel(device, FILE, entry, _CONSTANTS)(threads, params=fields)


def grad_partials(device: spy.Device, grads: spy.Buffer, count: int, partials: spy.Buffer) -> None:
    """partials[j] = sum of grads[i]^2 over i = j, j + PARTIALS, ... < count, in increasing i.

    Args:
        grads: (count,) float32. partials: (PARTIALS,) float32, written.
    """
    require(grads, count, "grads")
    require(partials, PARTIALS, "partials")
    _run(device, "grad_partials", PARTIALS, grads=grads, count=int(count), partials=partials)


def finish_step(device: spy.Device, partials: spy.Buffer, state: spy.Buffer, log_slot: int, step_index: int,
                clip_norm: float, lr: float, betas: tuple[float, float],
                stats: spy.Buffer | None = None, stats_offset: int = 0, stats_count: int = 0) -> None:
    """One thread: the norm (partials summed in index order), skip flag, clip coefficient, Adam's step count
    and bias corrections into ``state``; the norm into log slot ``log_slot``.

    The step is skipped when the norm or any of ``stats[stats_offset : stats_offset + stats_count]``
    (the step's loss sums) is not finite; a skipped step leaves the step count alone and is counted
    with ``step_index`` in the skip report.

    Args:
        partials: (PARTIALS,) float32 from :func:`grad_partials`.
        state: (STATE_WORDS + log slots,) uint32, read and written.
        lr, betas: Python floats, used in double precision as torch uses them.
    """
    require(partials, PARTIALS, "partials")
    require(state, STATE_WORDS + int(log_slot) + 1, "state")
    if stats is None:
        stats, stats_offset, stats_count = partials, 0, 0
    require(stats, int(stats_offset) + int(stats_count), "stats")
    _run(device, "finish_step", 1, partials=partials, state=state, stats=stats, stats_offset=int(stats_offset),
         stats_count=int(stats_count), log_slot=int(log_slot), step_index=int(step_index),
         clip_norm=float(clip_norm), lr=float(lr), beta1=float(betas[0]), beta2=float(betas[1]))


def adamw_step(device: spy.Device, params: spy.Buffer, grads: spy.Buffer, exp_avg: spy.Buffer,
               exp_avg_sq: spy.Buffer, state: spy.Buffer, count: int, decay: float, weight1: float,
               beta2: float, weight2: float, eps: float) -> None:
    """AdamW on every element unless ``state`` says the step is skipped; gradients scaled by the clip coefficient.

    Args:
        params, grads, exp_avg, exp_avg_sq: (count,) float32 (all but grads updated in place).
        state: the record :func:`finish_step` wrote.
        decay: 1 - lr * weight_decay, weight1: 1 - beta1, beta2, weight2: 1 - beta2, eps: the scalars torch
            casts to float32 (computed in Python doubles by the caller).
    """
    for buffer, name in ((params, "params"), (grads, "grads"), (exp_avg, "exp_avg"), (exp_avg_sq, "exp_avg_sq")):
        require(buffer, count, name)
    require(state, STATE_WORDS, "state")
    _run(device, "adamw_step", int(count), params=params, grads=grads, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
         state=state, count=int(count), decay=float(decay), weight1=float(weight1), beta2_f=float(beta2),
         weight2=float(weight2), eps=float(eps))


def clear_skips(device: spy.Device, state: spy.Buffer) -> None:
    """Reset the skip report of ``state`` (count, first and last skipped step) after it was read."""
    require(state, STATE_WORDS, "state")
    _run(device, "clear_skips", 1, state=state)


def fill(device: spy.Device, values: spy.Buffer, count: int, value: float = 0.0) -> None:
    """values[:count] = value (float32), e.g. zeroing the gradient buffer inside a recorded block."""
    require(values, count, "values")
    _run(device, "fill", int(count), values=values, count=int(count), value=float(value))
