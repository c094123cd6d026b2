"""Strict JSON: no file the package writes holds bare Infinity or NaN (issue 31)."""

import json
import math
import re
from pathlib import Path

import numpy as np

from neumours import strict_json

ROOT = Path(__file__).resolve().parents[1]


def _reject(name):
    raise ValueError(f"not strict JSON: {name}")


def test_non_finite_numbers_become_strings_that_float_reads_back():
    value = {"hd95": math.inf, "low": -math.inf, "nan": math.nan, "ok": 1.5,
             "nested": [np.float32(np.inf), np.array([1.0, np.nan]), (2, "x")], "n": np.int64(3)}
    text = strict_json.dumps(value)
    parsed = json.loads(text, parse_constant=_reject)
    assert parsed == {"hd95": "inf", "low": "-inf", "nan": "nan", "ok": 1.5,
                      "nested": ["inf", [1.0, "nan"], [2, "x"]], "n": 3}
    assert float(parsed["hd95"]) == math.inf and float(parsed["low"]) == -math.inf


def test_every_json_dump_of_the_package_is_strict():
    """Every json.dump(s) that writes a file goes through strict_json (excepted: the viewer's websocket
    messages, its benchmark's, and the training checkpoint manifest, whose values are finite by construction)."""
    allowed = {"neumours/strict_json.py", "neumours/viewer/protocol.py", "neumours/viewer/server.py",
               "neumours/train/checkpoints.py", "benchmarks/viewer_latency.py"}
    offenders = [str(p.relative_to(ROOT)) for p in list((ROOT / "neumours").rglob("*.py")) + list(
                 (ROOT / "benchmarks").glob("*.py"))
                 if re.search(r"(?<!strict_)json\.dumps?\(", p.read_text(encoding="utf-8"))
                 and str(p.relative_to(ROOT)) not in allowed]
    assert not offenders, f"use neumours.strict_json.dumps in {offenders}"
