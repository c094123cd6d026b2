"""Time estimates before long work: one line on stderr when a command will take more than a few minutes.

A command about to run for long on the chosen device says so first, with how
long, what the estimate rests on (a measured step or pass) and the setting that
makes it CPU-sized. The numbers are measured on the machine at hand; they are
estimates (other load, caches), not promises. Used by ``train``
(:mod:`neumours.train.estimate`), ``segment`` (:mod:`neumours.infer.segment`) and
``refine`` (:mod:`neumours.refine.estimate`) and ``sweep`` (after its first finished
trial, :mod:`neumours.sweep.progress`).
"""

from __future__ import annotations

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
