"""docs/phantom.md names every phantom range and every augmentation key, so neither drifts silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from neumours.data.phantom_lesions import NUM_CODES
from neumours.data.phantom_randomised_acquire import CONTRAST_RANGES, FIXED_CONTRAST
from neumours.data.phantom_randomised_ranges import FACTOR_FIELDS, FIXED, RANDOMISED, RandomisedRanges
from neumours.data.phantom_ranges import PhantomRanges
from neumours.train.augment import AugmentConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "phantom.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("cls", [PhantomRanges, AugmentConfig, RandomisedRanges])
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


def _value(text: str):
    """``lo-hi`` -> (lo, hi); a single number -> the number."""
    if "-" in text:
        lo, hi = (float(x) for x in text.split("-"))
        return lo, hi
    return float(text)


def _same(doc_value, code_value) -> bool:
    if isinstance(code_value, tuple):
        lo, hi = code_value
        return doc_value == ((lo, hi) if lo != hi else lo) or doc_value == (lo, hi)
    return doc_value == float(code_value)


def test_randomised_table_matches_the_code():
    """Every field of the randomised family, its factor, randomised and fixed values as in the code."""
    section = DOC.split("## The randomised family", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
            if line.startswith("| ") and "`" in line.split("|")[2]]
    factor, seen = "", []
    for cells in rows:
        factor = cells[0] or factor
        name = cells[1].strip("`")
        assert name in FACTOR_FIELDS[factor], (factor, name)
        assert _same(_value(cells[2]), getattr(RANDOMISED, name)), name
        assert _same(_value(cells[3]), getattr(FIXED, name)), name
        seen.append(name)
    assert sorted(seen) == sorted(f.name for f in dataclasses.fields(RandomisedRanges))


def test_randomised_contrast_table_matches_the_code():
    from neumours.data import phantom_lesions, phantom_anatomy

    section = DOC.split("## The randomised family", 1)[1].split("\n## ", 1)[0]
    table = section.split("| code | t1n | t1c | t2w | t2f |", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.strip().splitlines()[1:]]
    assert len(rows) == NUM_CODES - 1
    for cells in rows:
        code = getattr(phantom_lesions, cells[0], None)
        code = getattr(phantom_anatomy, cells[0]) if code is None else code
        for m, cell in enumerate(cells[1:]):
            span, fixed = cell.split(" ")
            assert _value(span) == tuple(float(f"{v:g}") for v in CONTRAST_RANGES[m, code]), (cells[0], m)
            assert float(fixed.strip("()")) == float(f"{FIXED_CONTRAST[m, code]:g}"), (cells[0], m)
