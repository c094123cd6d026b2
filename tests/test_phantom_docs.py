"""docs/phantom.md names every phantom range and every augmentation key, so neither drifts silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from neumours.data.phantom_ranges import PhantomRanges
from neumours.train.augment import AugmentConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "phantom.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("cls", [PhantomRanges, AugmentConfig])
def test_every_field_is_described(cls):
    missing = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in DOC]
    assert not missing, f"docs/phantom.md does not name {missing}"


def test_hard_ranges_in_the_table_match_the_preset():
    """The table's hard column, for the ranges it gives as lo-hi (percent for whole_tumour)."""
    hard = PhantomRanges()
    section = DOC.split("## The ranges", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "`" in line]
    checked = 0
    for cells in rows:
        name, value = cells[2].strip().strip("`"), cells[3].strip()
        if not hasattr(hard, name) or "-" not in value:
            continue
        lo, hi = (float(x) for x in value.replace("%", "").split("-"))
        scale = 100 if "%" in value else 1
        assert (lo, hi) == tuple(scale * v for v in getattr(hard, name)), name
        checked += 1
    assert checked >= 20
