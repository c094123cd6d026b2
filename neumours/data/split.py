"""Deterministic train/validation splits and k-fold partitions.

Cases are ranked by a keyed hash, SHA-256 of ``"<seed>:<case id>"``, instead of
a shuffled list: the result depends only on the seed and the case ids, never on
the input order, the NumPy version or the platform; and adding a case to a
dataset keeps the relative order of all others, so only cases at the
train/validation boundary can change sides.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def _tiebreak(item: Any) -> str:
    """Second sort key for equal case ids: the path of path-likes (CaseRef too)."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else ""


def _case_id(item: Any) -> str:
    """Case id of a CaseRef / Case (``.case_id``), else the path's last component."""
    cid = getattr(item, "case_id", None)
    if isinstance(cid, str):
        return cid
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name
    return str(item)


def _ranked(cases: Sequence[T], seed: int) -> list[T]:
    """``cases`` in the pseudo-random order fixed by ``seed`` and the case ids."""

    def key(item: T) -> tuple[str, str, str]:
        cid = _case_id(item)
        digest = hashlib.sha256(f"{seed}:{cid}".encode("utf-8")).hexdigest()
        return digest, cid, _tiebreak(item)

    return sorted(cases, key=key)


def _sorted_by_id(cases: list[T]) -> list[T]:
    return sorted(cases, key=lambda item: (_case_id(item), _tiebreak(item)))


def split_cases(cases: Sequence[T], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split cases into train and validation sets, deterministically.

    Args:
        cases: CaseRefs, Cases or paths (anything with ``.case_id``, else its
            last path component is the id).
        val_fraction: share of cases for validation, in [0, 1). The count is
            rounded half up, and at least 1 (at most n - 1) when there are >= 2
            cases and the fraction is > 0.
        seed: split seed.

    Returns:
        ``(train, val)``: the given objects, each list sorted by case id.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(cases)
    n_val = math.floor(n * val_fraction + 0.5)
    if n >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0 if n < 2 else n_val
    ranked = _ranked(cases, seed)
    return _sorted_by_id(ranked[n_val:]), _sorted_by_id(ranked[:n_val])


def kfold(cases: Sequence[T], k: int, seed: int = 0) -> list[tuple[list[T], list[T]]]:
    """Partition cases into ``k`` folds for cross-validation, deterministically.

    Args:
        cases: as for :func:`split_cases`.
        k: number of folds, 2 <= k <= len(cases).
        seed: fold seed.

    Returns:
        ``k`` pairs ``(train, val)``; the ``val`` lists are disjoint, cover all
        cases, and differ in size by at most one; ``train`` is the rest. Each
        list is sorted by case id.

    Raises:
        ValueError: ``k`` < 2 or larger than the number of cases.
    """
    if k < 2 or k > len(cases):
        raise ValueError(f"k must be between 2 and the number of cases ({len(cases)}), got {k}")
    ranked = _ranked(cases, seed)
    folds = [ranked[i::k] for i in range(k)]
    return [
        (_sorted_by_id([c for j, f in enumerate(folds) if j != i for c in f]), _sorted_by_id(folds[i]))
        for i in range(k)
    ]
