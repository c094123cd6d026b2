"""Strict JSON for every file the package writes: no bare ``Infinity`` or ``NaN``.

Python's ``json`` writes non-finite floats as ``Infinity``, ``-Infinity`` and
``NaN``, which are not JSON: strict parsers (JavaScript's ``JSON.parse``, jq,
Go, Rust's serde_json) reject the whole file. Here a non-finite number is written
as the string ``"inf"``, ``"-inf"`` or ``"nan"`` (an HD95 of ``inf`` means "exactly
one side is empty" and must stay distinguishable from a missing value), which
``float()`` reads back; numpy scalars and arrays become plain numbers and lists.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_text(value: Any) -> Any:
    """``value`` with every non-finite float (recursively) replaced by ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if isinstance(value, dict):
        return {k: finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_text(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return finite_or_text(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`finite_or_text` (``value``), refusing anything still not strict JSON."""
    return json.dumps(finite_or_text(value), allow_nan=False, **kwargs)
