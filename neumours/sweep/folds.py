"""The cross-validation folds of a sweep: fixed once, saved, and resolved again inside every trial.

The driver draws the folds with :func:`neumours.data.kfold` (a keyed hash of the
case ids, so the same seed and dataset give the same folds on any machine) and
writes them to ``SWEEP/folds.json``; every trial gets the case ids and looks the
cases up itself (on a cluster, the dataset folder must be at the same path on
every node).
"""

from __future__ import annotations

import json
from pathlib import Path

from neumours import strict_json
from neumours.atomic import atomic_write_text
from neumours.data import CaseRef, kfold, list_cases
from neumours.errors import NeumoursDataError, NeumoursError

Fold = tuple[list[str], list[str]]  # (training case ids, validation case ids)


def make_folds(data: str | Path, k: int, seed: int) -> list[Fold]:
    """``k`` folds of the labelled cases under ``data``: (train ids, val ids) each, sorted by id."""
    refs = [r for r in list_cases(data) if r.has_label]
    if k < 2:
        raise NeumoursError(f"--folds {k}: cross-validation needs at least 2 folds")
    if k > len(refs):
        raise NeumoursDataError(data, f"--folds {k} needs at least {k} labelled cases, found {len(refs)}")
    return [([r.case_id for r in train], [r.case_id for r in val]) for train, val in kfold(refs, k, seed)]


def save_folds(folds: list[Fold], path: str | Path) -> None:
    """``folds.json``: ``[{"fold": 0, "train": [...], "val": [...]}, ...]``."""
    records = [{"fold": i, "train": train, "val": val} for i, (train, val) in enumerate(folds)]
    atomic_write_text(path, strict_json.dumps(records, indent=1) + "\n")


def load_folds(path: str | Path) -> list[Fold]:
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(r["train"], r["val"]) for r in records]


def fold_cases(data: str | Path, fold: Fold) -> tuple[list[CaseRef], list[CaseRef]]:
    """The CaseRefs of a fold's ids under ``data``; a case that has gone missing is an error."""
    refs = {r.case_id: r for r in list_cases(data)}
    missing = [c for c in fold[0] + fold[1] if c not in refs]
    if missing:
        raise NeumoursDataError(data, f"case(s) of the sweep's folds are missing: {', '.join(missing[:5])}")
    return [refs[c] for c in fold[0]], [refs[c] for c in fold[1]]
