"""docs/configuration.md is generated from the training dataclasses and cannot drift from them."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from neumours.train.config import REFERENCE_PATH, TrainConfig, attribute_docs, config_reference, preset

ROOT = Path(__file__).resolve().parent.parent


def test_committed_reference_is_the_generated_text():
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == config_reference(), (
        f"{REFERENCE_PATH} is stale: run `python -m neumours.train.config {REFERENCE_PATH}` and commit it")


def test_every_key_of_every_section_is_described():
    config = TrainConfig()
    for section in dataclasses.fields(TrainConfig):
        cls = type(getattr(config, section.name))
        docs = attribute_docs(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        assert [n for n in names if not docs.get(n)] == [], f"{cls.__name__}: fields without a description"
        assert set(docs) <= set(names), f"{cls.__name__} describes fields it does not have: {set(docs) - set(names)}"
    assert set(attribute_docs(TrainConfig)) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_reference_shows_every_key_with_its_defaults():
    text = config_reference()
    paper, tiny = preset("paper").to_dict(), preset("tiny").to_dict()
    sections = {chunk.split("]", 1)[0]: chunk for chunk in text.split("\n## [")[1:]}
    assert list(sections) == list(paper)
    for section, values in paper.items():
        rows = {line.split("`")[1]: [c.strip() for c in line.strip("|").split(" | ")]
                for line in sections[section].splitlines() if line.startswith("| `")}
        assert list(rows) == list(values)
        for key, value in values.items():
            assert rows[key][3] == f"`{_toml(value)}`"
            assert rows[key][4] == ("" if tiny[section][key] == value else f"`{_toml(tiny[section][key])}`")
            assert rows[key][2], f"[{section}] {key}: no allowed range shown"


def _toml(value) -> str:
    """The value as TOML writes it, through a round trip of the project's own writer and tomllib."""
    from neumours.toml_files import toml_value

    text = toml_value(value)
    parsed = tomllib.loads(f"x = {text}")["x"]
    assert parsed == (list(value) if isinstance(value, tuple) else value)
    return text


def test_the_documented_example_is_a_valid_config():
    text = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    (example,) = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    config = TrainConfig.from_dict(tomllib.loads(example), preset("paper"), source="example")
    assert config.optimizer.name == "muon" and config.schedule.steps == 2000
