"""Property-based tests of what users type: training TOML, search spaces and number flags (hypothesis).

For every key of every training table, values of the wrong type (text, booleans, lists, tables),
non-finite numbers, numbers outside the declared range, floats for integers and lists of the
wrong length are drawn from the key's own declaration (``neumours.schema``). The properties:

* ``neumours train --config`` with such a file exits 2 with one ``neumours: error:`` line naming
  the file and ``[table] key``, no traceback, and nothing new on disk;
* ``neumours sweep --space`` with such a value in a grid, choice or range does the same;
* every number flag of every command (found in the parser, not listed by hand) refuses text,
  NaN, infinities and numbers outside its range with one line naming the flag;
* whatever value (valid or not) a key gets, the loader returns a configuration or raises
  :class:`~neumours.schema.SettingError`: nothing else escapes.

``NEUMOURS_FUZZ_EXAMPLES`` sets the number of examples (default 60 per property); the examples
are derandomised unless ``NEUMOURS_FUZZ_RANDOM=1``, as in tests/test_fuzz_nifti.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install 'neumours[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from neumours.cli.main import build_parser, main  # noqa: E402
from neumours.schema import Choice, Number, Numbers, SettingError  # noqa: E402
from neumours.sweep.space import parse_space  # noqa: E402
from neumours.errors import NeumoursError  # noqa: E402
from neumours.train.config import TrainConfig, preset  # noqa: E402

EXAMPLES = int(os.environ.get("NEUMOURS_FUZZ_EXAMPLES", "60"))
DERANDOMIZE = os.environ.get("NEUMOURS_FUZZ_RANDOM", "") != "1"
FUZZ = settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: (table, key, check) of every training setting.
KEYS = [(section.name, f.name, f.metadata["check"])
        for section in dataclasses.fields(TrainConfig)
        for f in dataclasses.fields(type(getattr(TrainConfig(), section.name)))]


# --- values outside a declaration ---------------------------------------------------------------------

def _not_a_number(text: str) -> bool:
    """Text that Python does not read as a number (" 1", "1_0" and "١" are numbers to float())."""
    try:
        float(text)
    except ValueError:
        return True
    return False


def _outside_number(check: Number) -> st.SearchStrategy:
    """Numbers (and non-numbers) that ``check`` refuses."""
    options = [st.text(max_size=6).filter(_not_a_number), st.booleans(), st.lists(st.integers(0, 9), max_size=3),
               st.just({"a": 1}), st.sampled_from([math.nan, math.inf, -math.inf])]
    big = 1e300
    if check.ge is not None:
        options.append(st.floats(-big, check.ge, exclude_max=True, allow_nan=False))
    if check.gt is not None:
        options.append(st.floats(-big, check.gt, allow_nan=False))
    if check.le is not None:
        options.append(st.floats(check.le, big, exclude_min=True, allow_nan=False))
    if check.lt is not None:
        options.append(st.floats(check.lt, big, allow_nan=False))
    if check.integer:
        options.append(st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: not v.is_integer()))
        options = [o.map(lambda v: math.floor(v) if isinstance(v, float) and math.isfinite(v) and v.is_integer()
                         and abs(v) < 1e15 else v) for o in options]
    return st.one_of(options)


def _inside_number(check: Number) -> st.SearchStrategy:
    low = check.ge if check.ge is not None else check.gt if check.gt is not None else -1e6
    high = check.le if check.le is not None else check.lt if check.lt is not None else 1e6
    if check.integer:
        return st.integers(int(math.ceil(low)) + (check.gt is not None), int(math.floor(min(high, 1e6)))
                           - (check.lt is not None))
    return st.floats(low, min(high, 1e6), exclude_min=check.gt is not None, exclude_max=check.lt is not None,
                     allow_nan=False)


def outside(check) -> st.SearchStrategy:
    """A value the declaration ``check`` refuses (whatever the other keys hold)."""
    if isinstance(check, Number):
        return _outside_number(check)
    if isinstance(check, Choice):
        return st.one_of(st.text(max_size=8).filter(lambda t: t not in check.options), st.integers(), st.booleans())
    assert isinstance(check, Numbers)
    wrong_length = st.integers(0, 6).filter(
        lambda n: (n != check.length) if check.length is not None else
        (n < check.min_length or (check.max_length is not None and n > check.max_length)))
    options = [st.one_of(st.text(max_size=4), st.floats(allow_nan=False), st.booleans()),
               st.tuples(st.integers(0, max(check.length or check.min_length, 1) - 1),
                         _outside_number(check.item).filter(lambda v: not isinstance(v, (list, dict))))
               .map(lambda iv: [iv[1] if i == iv[0] else _valid_item(check.item)
                                for i in range(max(check.length or check.min_length, 1))])]
    if check.length is not None or check.max_length is not None or check.min_length > 0:
        options.append(wrong_length.map(lambda n: [_valid_item(check.item)] * n).filter(
            lambda v: (check.length is not None and len(v) != check.length) or len(v) < check.min_length
            or (check.max_length is not None and len(v) > check.max_length)))
    return st.one_of(options)


def _valid_item(check: Number):
    low = check.ge if check.ge is not None else (check.gt + 1e-3 if check.gt is not None else 0)
    return int(low) if check.integer else float(low)


def toml_literal(value) -> str:
    """``value`` as a TOML literal (NaN and infinities included, tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML's, but for surrogate pairs and a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(toml_literal(v) for v in value) + "]"


bad_setting = st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k[0]), st.just(k[1]), outside(k[2])))


@pytest.fixture(scope="module")
def dataset(module_dataset):
    """3 phantom cases of 24x24x16 (conftest's, copied for this module)."""
    return module_dataset["data"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line(args, capsys, root: Path, *names: str) -> None:
    before = _tree(root)
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 2, (args, code, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("neumours: error: ") and captured.err.count("\n") == 1, captured.err
    for name in names:
        assert name in captured.err, (name, captured.err)
    assert _tree(root) == before


@FUZZ
@given(setting=bad_setting)
def test_training_toml_out_of_declaration_is_one_line(dataset, capsys, setting):
    section, key, value = setting
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        config = folder / "fuzz.toml"
        config.write_text(f"[{section}]\n{key} = {toml_literal(value)}\n", encoding="utf-8")
        _one_line(["train", "--data", dataset, "--out", folder / "run", "--preset", "tiny", "--config", config,
                   "--device", "cpu"], capsys, folder, str(config), f"[{section}]", key)


@FUZZ
@given(setting=bad_setting, kind=st.sampled_from(["grid", "choice", "uniform"]), position=st.integers(0, 1))
def test_search_space_out_of_declaration_is_one_line(dataset, capsys, setting, kind, position):
    pytest.importorskip("ray")
    section, key, value = setting
    default = getattr(getattr(preset("tiny"), section), key)
    values = [default, value] if position else [value, default]
    if kind == "uniform" and not (isinstance(default, (int, float)) and not isinstance(default, bool)):
        kind = "grid"  # ranges are for numeric keys (a separate error)
    entry = toml_literal({kind: [list(v) if isinstance(v, tuple) else v for v in values]})
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        space = folder / "space.toml"
        space.write_text(f"[{section}]\n{key} = {entry}\n", encoding="utf-8")
        _one_line(["sweep", "--data", dataset, "--space", space, "--folds", "2", "--out", folder / "sweep",
                   "--preset", "tiny", "--search", "random"], capsys, folder, str(space))


def _number_flags() -> list[tuple[str, str, Number, int]]:
    """(command, flag, check, nargs) of every option typed by neumours.cli.options.number."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [(name, action.option_strings[-1], action.type.check, action.nargs or 1)
            for name, parser in sub.choices.items() for action in parser._actions
            if action.option_strings and hasattr(action.type, "check")]


NUMBER_FLAGS = _number_flags()
NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def test_number_flags_found():
    names = {(c, f) for c, f, _, _ in NUMBER_FLAGS}
    assert {("render", "--fps"), ("render", "--azimuth"), ("segment", "--scale"), ("refine", "--lr"),
            ("train", "--steps"), ("synth", "--shape"), ("sweep", "--cpus-per-trial")} <= names


def _flag_text(value) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


bad_flag = st.sampled_from(NUMBER_FLAGS).flatmap(
    lambda f: st.tuples(st.just(f), _outside_number(f[2]).filter(lambda v: not isinstance(v, (list, dict)))
                        .map(_flag_text)))


@FUZZ
@given(case=bad_flag)
def test_number_flags_out_of_range_are_one_line(capsys, case):
    (command, flag, _, nargs), text = case
    if nargs == 1:
        args = [command, f"{flag}={text}"]
    else:  # --shape X Y Z: a value argparse would take for an option is not one the user could type there
        if text.startswith("-") and not NEGATIVE_NUMBER.match(text):
            text = "x" + text
        args = [command, flag, *["24"] * (nargs - 1), text]
    with tempfile.TemporaryDirectory() as folder:
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            _one_line(args, capsys, Path(folder), flag)
        finally:
            os.chdir(cwd)


anything = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3),
                                                                                           inner, max_size=2)),
                        max_leaves=6).filter(lambda v: v is not None)


@FUZZ
@given(key=st.sampled_from(KEYS), value=anything)
def test_any_value_gives_a_configuration_or_a_setting_error(key, value):
    section, name, _ = key
    try:
        config = TrainConfig.from_dict({section: {name: value}}, preset("tiny"), source="fuzz.toml")
    except SettingError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc)
    else:
        assert isinstance(config, TrainConfig)
    try:
        parse_space({section: {name: {"grid": [value]}}}, source="space.toml", base=preset("tiny"))
    except NeumoursError as exc:
        assert str(exc).startswith("space.toml: ")
