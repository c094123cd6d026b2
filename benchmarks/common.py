"""Shared helpers of the benchmarks: the ``--device`` option, timing with device synchronisation, tables, JSON."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

from neumours.device import DEVICE_KINDS

from neumours import strict_json
from neumours.atomic import atomic_write_text


def time_it(fn: Callable[[], None], sync: Callable[[], None], repeats: int = 10, warmup: int = 2) -> dict:
    """Median and spread of wall time per call, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write_text(path, strict_json.dumps(payload, indent=2, default=str) + "\n")


def write_tables(out: Path, lines: list[str], results: dict) -> None:
    """A run folder's ``tables.md`` (the markdown ``lines``, also printed) and ``results.json``."""
    atomic_write_text(out / "tables.md", "\n".join(lines))
    write_json(out / "results.json", results)
    print("\n".join(lines))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with ``columns`` in order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def mean_sd(stats: dict) -> str:
    """``mean ± sd`` of one aggregated column (``RegionMetric.aggregate``), ``n/a`` without values."""
    return "n/a" if stats["n"] == 0 else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def add_device_argument(parser: argparse.ArgumentParser, default: str = "cuda", note: str = "") -> None:
    """Every benchmark's ``--device``: the slangpy device kind its Slang side runs on (``NEUMOURS_DEVICE``,
    when set, overrides it, as everywhere). ``note`` says what the script needs (e.g. its torch peers' CUDA)."""
    help_text = f"slangpy device kind: {', '.join(DEVICE_KINDS)} or auto (default {default})"
    parser.add_argument("--device", default=default, choices=(*DEVICE_KINDS, "auto"),
                        help=f"{help_text}; {note}" if note else help_text)


def device_sync(device) -> Callable[[], None]:
    """Wait for ``device``, and for torch's CUDA work when torch has a GPU (the bridge's optimiser and the
    torch peers run there), before a timer reads the clock."""
    import torch

    cuda = torch.cuda.is_available()

    def sync() -> None:
        device.wait_for_idle()
        if cuda:
            torch.cuda.synchronize()
    return sync
