"""What every user-written setting may hold, declared once beside its dataclass field.

A settings dataclass (training sections, ``[augment]``, phantom ranges, the INR's sizes)
declares each field with :func:`setting`: its default and a check (:class:`Number`,
:class:`Choice`, :class:`Numbers`, :class:`Boolean`) giving the type and the allowed range. Rules that tie
fields together are :class:`Rule` objects in the class's ``RULES``. ``__post_init__`` calls
:func:`validate`, so a bad value fails wherever the object is made (a TOML file, a sweep
trial, a library caller); :func:`from_mapping` is the one loader from parsed TOML (or JSON)
to such a dataclass, and the CLI's number types (``neumours.cli.options``) reuse
:class:`Number`. The same declarations print the allowed ranges of docs/configuration.md.

Every failure is a :class:`SettingError`: one line naming the key (``[optimizer] lr``) and
what is allowed, with the value that was given.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from neumours.errors import NeumoursError


class SettingError(NeumoursError, ValueError):
    """A setting outside its declared type or range (a ValueError too, for library callers)."""


def _show(value: Any) -> str:
    """A value as the message shows it: numbers as written, text quoted, at most 60 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**60:
        text = f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    elif isinstance(value, (bool, int, float, str)) or value is None:
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "a table"
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(float(value))


@dataclass(frozen=True)
class Number:
    """A finite number (an integer with ``integer``) within the given bounds (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    integer: bool = False

    def range_text(self) -> str:
        """The bounds in words: ``at least 1``, ``> 0``, ``in [0, 1)``, ``at least 1 and at most 9``
        (integers), or "" (any finite value)."""
        low = f"[{_bound(self.ge)}" if self.ge is not None else f"({_bound(self.gt)}" if self.gt is not None else None
        high = f"{_bound(self.le)}]" if self.le is not None else f"{_bound(self.lt)})" if self.lt is not None else None
        if self.integer and self.ge is not None and self.le is not None:
            return f"at least {_bound(self.ge)} and at most {_bound(self.le)}"
        if low and high:
            return f"in {low}, {high}"
        if self.ge is not None:
            return f"at least {_bound(self.ge)}"
        if self.gt is not None:
            return f"> {_bound(self.gt)}"
        if self.le is not None:
            return f"at most {_bound(self.le)}"
        if self.lt is not None:
            return f"< {_bound(self.lt)}"
        return ""

    def describe(self) -> str:
        """Type and range, e.g. ``an integer, at least 1`` or ``a finite number > 0``."""
        kind = "an integer" if self.integer else "a finite number"
        bounds = self.range_text()
        if not bounds:
            return kind
        return f"{kind}, {bounds}" if bounds.startswith("at ") else f"{kind} {bounds}"

    def in_range(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def coerce(self, value: Any, name: str) -> int | float:
        """``value`` as an int or float, or :class:`SettingError` naming ``name``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
        if self.integer:
            if not isinstance(value, numbers.Integral):
                raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
            value = int(value)
        else:
            try:
                value = float(value)
            except OverflowError:
                raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}") from None
            if not math.isfinite(value):
                raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
        if not self.in_range(value):
            raise SettingError(f"{name} must be {self.range_text()}, got {_show(value)}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(f'"{o}"' for o in self.options)

    def coerce(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
        return value


@dataclass(frozen=True)
class Numbers:
    """A list of numbers (a tuple in the dataclass): ``length`` of them, or ``min_length`` to
    ``max_length``; ``ordered``: a range [lo, hi] with lo <= hi."""

    item: Number
    length: int | None = None
    min_length: int = 1
    max_length: int | None = None
    ordered: bool = False

    def count_text(self) -> str:
        if self.ordered:
            return "a range [lo, hi] with lo <= hi"
        if self.length is not None:
            return f"a list of {self.length}"
        if self.max_length is not None:
            return f"a list of {self.min_length} to {self.max_length}"
        return f"a list of at least {self.min_length}"

    def describe(self) -> str:
        what = "integers" if self.item.integer else "numbers"
        bounds = self.item.range_text()
        return f"{self.count_text()}, {what}" + (f" {bounds}" if bounds else "")

    def coerce(self, value: Any, name: str) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
        n = len(value)
        short = n < (self.length if self.length is not None else self.min_length)
        long = n > self.length if self.length is not None else (self.max_length is not None and n > self.max_length)
        if short or long or (self.ordered and n != 2):
            raise SettingError(f"{name} must be {self.describe()}, got {n} value(s) {_show(value)}")
        items = tuple(self.item.coerce(v, f"{name}[{i}]") for i, v in enumerate(value))
        if self.ordered and not items[0] <= items[1]:
            raise SettingError(f"{name} must be {self.count_text()}, got {_show(value)}")
        return items


@dataclass(frozen=True)
class Boolean:
    """true or false (not 0 or 1, not a string)."""

    def describe(self) -> str:
        return "true or false"

    def coerce(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise SettingError(f"{name} must be {self.describe()}, got {_show(value)}")
        return value


Check = Number | Choice | Numbers | Boolean


@dataclass(frozen=True)
class Rule:
    """A condition over several fields (or sections): ``holds(obj)``, else ``message(obj)`` names them."""

    text: str
    holds: Callable[[Any], bool]
    message: Callable[[Any], str]


#: Seeds are 32-bit unsigned integers (``[schedule] seed``, ``--seed`` of every command).
SEED = Number(ge=0, le=2**32 - 1, integer=True)


def setting(default: Any, check: Check) -> Any:
    """A dataclass field with its default (``dataclasses.MISSING``: required) and the check of what a
    user may set it to."""
    return dataclasses.field(default=default, metadata={"check": check})


def check_of(cls, name: str) -> Check | None:
    """The declared check of field ``name`` of ``cls`` (None: a section or an unchecked field)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("check")
    return None


def validate(obj) -> None:
    """Check (and normalise: lists to tuples, ints to floats where a number is declared) every
    declared field of ``obj``, then its class's ``RULES``. Called by ``__post_init__``.

    Raises:
        SettingError: the first field or rule that fails, naming it.
    """
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            object.__setattr__(obj, f.name, check.coerce(getattr(obj, f.name), f.name))
    for rule in getattr(type(obj), "RULES", ()):
        if not rule.holds(obj):
            raise SettingError(rule.message(obj))


def _section_prefix(section: str) -> str:
    return f"[{section}] " if section else ""


def _is_section(f: dataclasses.Field) -> bool:
    """Whether field ``f`` holds a table of its own (``[optimizer]``), not a value."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.is_dataclass(default) and f.metadata.get("check") is None


def check_table(cls, data: Any, source: str = "settings", section: str = "") -> None:
    """``data`` must be a table whose keys are fields of the settings dataclass ``cls``.

    The one unknown-key check of every TOML (or JSON) table read into settings: training
    configs, search spaces (whose values are search specs, not settings), phantom ranges,
    the INR's sizes.

    Args:
        source: the file (or what the table is), first in the message.
        section: the table's name (``optimizer``), or "" for the file's top level.

    Raises:
        SettingError: not a table, or unknown keys: one line naming ``source``, the keys
            and the known ones.
    """
    where = f"[{section}]" if section else "the file"
    if not isinstance(data, Mapping):
        raise SettingError(f"{source}: {where} must be a table of keys, got {_show(data)}")
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    unknown = sorted(str(k) for k in data if k not in known)
    if not unknown:
        return
    names = ", ".join(unknown)
    if section:
        detail = ", ".join(f"unknown key {k!r} in [{section}]" for k in unknown)
        raise SettingError(f"{source}: {detail} (known: {', '.join(known)})")
    if any(_is_section(f) for f in fields):
        sections = ", ".join(f"unknown section [{k}]" for k in unknown)
        raise SettingError(f"{source}: unknown field(s) {names}: {sections} (known: {', '.join(known)})")
    raise SettingError(f"{source}: unknown field(s) {names} (known: {', '.join(known)})")


def from_mapping(cls, data: Any, base=None, source: str = "settings", section: str = ""):
    """``base`` (default: ``cls()``) with the keys of ``data`` replaced, every value checked.

    The one loader from a parsed TOML (or JSON) table to a settings dataclass: fields whose
    value is itself a settings dataclass are sections (``[optimizer]``), read recursively;
    unknown keys, a non-table section and values outside their declared check are errors.

    Raises:
        SettingError: one line ``SOURCE: [section] key must be ..., got ...``.
    """
    base = cls() if base is None else base
    check_table(cls, data, source, section)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and fields[key].metadata.get("check") is None:
            values[key] = from_mapping(type(current), value, current, source, key)
            continue
        check = fields[key].metadata.get("check")
        try:
            values[key] = check.coerce(value, key) if check is not None else value
        except SettingError as exc:
            raise SettingError(f"{source}: {_section_prefix(section)}{exc}") from None
    try:
        return dataclasses.replace(base, **values)
    except SettingError as exc:
        raise SettingError(f"{source}: {_section_prefix(section)}{exc}") from None


def allowed_text(cls, name: str) -> str:
    """What field ``name`` of ``cls`` allows, for the reference tables of the docs."""
    check = check_of(cls, name)
    return check.describe() if check is not None else ""


def rules_text(cls) -> list[str]:
    """The cross-field rules of ``cls``, one sentence each (for the docs)."""
    return [rule.text for rule in getattr(cls, "RULES", ())]
