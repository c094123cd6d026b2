"""The sweep's tables, read back from its trial folders: ``results.csv``, ``summary.md``, ``best_config.toml``.

Everything here is rebuilt from files (the trials' run folders and the status
files of :mod:`neumours.sweep.trainable` and :mod:`neumours.sweep.progress`), so
an interrupted sweep gets a table too and a resumed one a complete table.

A trial's score is the mean over folds of the fold's validation Dice
(``val_dice_mean``: the mean of background, NCR, ED and ET, the number the
trainer keeps ``best.safetensors`` by) at the last step every fold reached; the
spread is the sample standard deviation over folds.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neumours.atomic import atomic_write_text
from neumours.conventions import CLASS_KEYS
from neumours.sweep.settings import Sweep
from neumours.sweep.space import apply, flat_values
from neumours.sweep.trainable import TRIAL_ERROR, TRIAL_INFO, TRIAL_RESULT, TRIALS, VAL_KEYS
from neumours.train.config import save_toml

STATUS = "status.json"  # written by the driver when Tune ends a trial (progress.py)
STATUS_ORDER = ("finished", "stopped", "unfinished", "failed")
RESULTS = "results.csv"
SUMMARY = "summary.md"
BEST_CONFIG = "best_config.toml"
TUMOUR_KEYS = CLASS_KEYS[1:]


@dataclass
class TrialRecord:
    """One trial as its folder tells it.

    ``status``: finished (every fold ran all steps), stopped (ended early by
    ASHA), unfinished (interrupted; ``--resume`` continues it) or failed.
    ``folds``: per fold the last validation row (``step`` and :data:`VAL_KEYS`),
    ``None`` for a fold without one. ``scores``: mean over folds at the last
    step all folds reached (``val_dice_sd`` its spread), empty without one.
    """

    trial_id: str
    config: dict
    status: str
    error: str = ""
    folds: list[dict | None] = field(default_factory=list)
    step: int = 0
    scores: dict[str, float] = field(default_factory=dict)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _validation_rows(run_dir: Path) -> list[dict]:
    """The validation rows of a fold's ``metrics.csv`` (step and VAL_KEYS as numbers)."""
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    return [{"step": int(r["step"]), **{k: float(r[k]) for k in VAL_KEYS}} for r in rows
            if r.get("val_dice_mean") not in (None, "")]


def read_trial(folder: Path, k: int) -> TrialRecord:
    """A :class:`TrialRecord` from ``SWEEP/trials/<id>/`` of a ``k``-fold sweep."""
    info = _read_json(folder / TRIAL_INFO) or {}
    status = _read_json(folder / STATUS) or {}
    record = TrialRecord(folder.name, info.get("config") or status.get("config") or {}, "unfinished")
    if (folder / TRIAL_ERROR).is_file():
        record.status = "failed"
        record.error = (folder / TRIAL_ERROR).read_text(encoding="utf-8").splitlines()[0]
    elif status.get("status") == "failed":
        record.status, record.error = "failed", status.get("error", "")
    elif (folder / TRIAL_RESULT).is_file():
        record.status = "finished"
    elif status.get("status") in ("stopped", "finished"):
        record.status = "stopped"
    histories = [_validation_rows(folder / f"fold-{i}") for i in range(k)]
    record.folds = [h[-1] if h else None for h in histories]
    if all(histories):
        record.step = min(h[-1]["step"] for h in histories)
        at_step = [next(r for r in h if r["step"] == record.step) if any(r["step"] == record.step for r in h)
                   else None for h in histories]
        if all(at_step):
            means = [r["val_dice_mean"] for r in at_step]
            record.scores = {key: float(np.mean([r[key] for r in at_step])) for key in VAL_KEYS}
            record.scores["val_dice_sd"] = float(np.std(means, ddof=1)) if k > 1 else 0.0
    return record


def read_trials(sweep: Sweep) -> list[TrialRecord]:
    """Every trial that started (or that Tune ended), in trial order."""
    root = sweep.out / TRIALS
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [read_trial(p, len(sweep.folds)) for p in folders]


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """Finished trials by score (best first), then stopped, unfinished and failed ones."""
    def key(r: TrialRecord):
        return STATUS_ORDER.index(r.status), -r.scores.get("val_dice_mean", -1.0), r.trial_id
    return sorted(records, key=key)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def write_results_csv(sweep: Sweep, records: list[TrialRecord]) -> Path:
    """``results.csv``: one row per trial and fold (status and error repeated on each of its folds)."""
    names = sweep.space.names
    columns = ["trial", "status", "fold", *names, "step", *VAL_KEYS, "run_dir", "error"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for r in records:
        values = flat_values(r.config, sweep.space)
        for i in range(len(sweep.folds)):
            row = r.folds[i] if i < len(r.folds) else None
            writer.writerow({"trial": r.trial_id, "status": r.status, "fold": i,
                             **{n: _fmt(values[n]) for n in names},
                             "step": row["step"] if row else "",
                             **{k: _fmt(row[k]) if row else "" for k in VAL_KEYS},
                             "run_dir": f"{TRIALS}/{r.trial_id}/fold-{i}", "error": r.error})
    path = sweep.out / RESULTS
    atomic_write_text(path, text.getvalue())
    return path


def _pm(scores: dict, key: str) -> str:
    return f"{scores[key]:.4f}" if key in scores else "–"


def write_summary(sweep: Sweep, records: list[TrialRecord]) -> tuple[Path, TrialRecord | None]:
    """``summary.md`` (ranked table, failures, the best configuration) and ``best_config.toml``.

    Returns the summary's path and the best finished trial (None without one).
    """
    order = ranked(records)
    best = next((r for r in order if r.status == "finished" and r.scores), None)
    names = sweep.space.names
    s, k = sweep.settings, len(sweep.folds)
    steps = sweep.base.schedule.steps
    counts = {status: sum(r.status == status for r in records) for status in STATUS_ORDER}
    lines = [
        f"# Sweep {sweep.out.name}",
        "",
        f"{len(records)} trial(s) of {sweep.space.num_trials(s.search, s.samples)} ({s.search} search"
        f"{', ASHA early stopping' if s.asha else ''}) × {k} folds of {s.data}, {steps} steps each: "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".",
        "",
        "Ranked by the validation Dice (mean of background, NCR, ED, ET) averaged over folds, "
        "± the sample standard deviation over folds, at the last step all folds reached; per-class "
        "columns are fold means.",
        "",
        "| rank | trial | " + " | ".join(f"`{n}`" for n in names) + " | status | step | Dice mean ± sd | "
        + " | ".join(TUMOUR_KEYS) + " |",
        "|" + "---|" * (len(names) + 5 + len(TUMOUR_KEYS)),
    ]
    for rank, r in enumerate(order, 1):
        values = flat_values(r.config, sweep.space)
        lines.append(f"| {rank} | {r.trial_id} | " + " | ".join(_fmt(values[n]) for n in names)
                     + f" | {r.status} | {r.step or '–'} | {r_score(r)} | "
                     + " | ".join(_pm(r.scores, f"val_dice_{c}") for c in TUMOUR_KEYS) + " |")
    failed = [r for r in order if r.status == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {r.trial_id}: {r.error}" for r in failed]
    best_path = sweep.out / BEST_CONFIG
    lines += ["", "## Best configuration", ""]
    if best is None:
        lines.append("No trial has finished yet.")
    else:
        save_toml(apply(sweep.base, best.config), best_path)
        values = ", ".join(f"{n} = {_fmt(v)}" for n, v in flat_values(best.config, sweep.space).items())
        lines += [f"Trial {best.trial_id} ({values}): validation Dice {r_score(best)}. Train it on the "
                  f"whole dataset with `neumours train --data DATA --config {best_path} --out RUN`:", "",
                  "```toml", best_path.read_text(encoding="utf-8").rstrip(), "```"]
    path = sweep.out / SUMMARY
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path, best


def r_score(record: TrialRecord) -> str:
    """``0.6123 ± 0.0210 (3 folds)``; ``0.6123 (1 fold)`` where one fold leaves no spread to state; ``–``
    without a score."""
    if not record.scores:
        return "–"
    folds = len(record.folds)
    if folds < 2:
        return f"{record.scores['val_dice_mean']:.4f} (1 fold)"
    return f"{record.scores['val_dice_mean']:.4f} ± {record.scores['val_dice_sd']:.4f} ({folds} folds)"
