"""``--help`` of every command reads as help: every option explained with its default, no docstring
markup, exclusive modes said so; the README's command table matches; train's CPU note."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from neumours.cli.main import build_parser, main
from conftest import CPU_ESTIMATES, cpu_device_only

README = Path(__file__).resolve().parent.parent / "README.md"
#: reStructuredText / Sphinx roles and literals that a docstring may hold but help must not.
MARKUP = ("``", ":func:", ":mod:", ":class:", ":data:", ":meth:", ":attr:")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def subcommand_help() -> dict[str, str]:
    """Command name -> its one-line help in ``neumours --help``."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in action._choices_actions}


def rendered_help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    text = rendered_help(["--help"], capsys)
    names = subcommands()
    assert names
    for name in names:
        assert name in text
    assert not [m for m in MARKUP if m in text]


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_renders_with_every_option_explained(name, capsys):
    parser = subcommands()[name]
    text = rendered_help([name, "--help"], capsys)
    assert text.startswith("usage: ")
    found = [m for m in MARKUP if m in text]
    assert not found, f"`neumours {name} --help` shows docstring markup {found}"
    flat = " ".join(text.split())  # help wraps lines
    for action in parser._actions:
        if not action.option_strings:
            continue
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
            f"{name} {action.option_strings[0]} has no help text"
        default = action.default
        if any(default is v for v in (None, False, argparse.SUPPRESS)) or "default" in action.help:
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        assert f"(default: {shown})" in flat, f"{name} {action.option_strings[0]}: default {shown} not shown"


def test_a_zero_default_is_shown(capsys):
    """0 == False in Python, but a seed of 0 is a default worth printing."""
    flat = " ".join(rendered_help(["synth", "--help"], capsys).split())
    assert "random seed (default: 0)" in flat


def test_evaluate_help_says_its_modes_are_exclusive(capsys, tmp_path):
    text = rendered_help(["evaluate", "--help"], capsys)
    assert "(--pred DIR --gt DIR | --checkpoint CKPT --data DIR" in text.splitlines()[0]
    assert "mutually exclusive" in text
    # ... and the command holds to it: both modes at once is one error line, exit 2.
    assert main(["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--checkpoint", str(tmp_path / "c"),
                 "--data", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neumours: error: give either --pred")


def test_readme_command_table_matches_the_parser():
    readme = README.read_text(encoding="utf-8")
    missing = [f"| `neumours {name}` | {help} |" for name, help in subcommand_help().items()
               if f"| `neumours {name}` | {help} |" not in readme]
    assert not missing, "README's command table lacks (or words differently):\n" + "\n".join(missing)


@cpu_device_only(CPU_ESTIMATES)
def test_train_notes_that_the_paper_network_is_slow_on_the_cpu(cpu_device, capsys):
    from neumours.cli.train import warn_if_slow
    from neumours.train.config import preset

    warn_if_slow(preset("paper"), cpu_device)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("neumours: note:") and "--preset tiny" in lines[0]
    warn_if_slow(preset("tiny"), cpu_device)
    assert capsys.readouterr() == ("", "")


def test_version(capsys):
    from neumours import __version__

    assert rendered_help(["--version"], capsys).strip() == f"neumours {__version__}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_help_ends_with_an_example_of_itself(name, capsys):
    text = rendered_help([name, "--help"], capsys)
    assert "Example" in text, f"`neumours {name} --help` has no example"
    examples = text.split("Example", 1)[1].splitlines()[1:]
    assert any(line.strip().startswith(f"neumours {name} ") for line in examples), examples
    for line in examples:  # every example parses (the flags exist, the values have their types)
        if line.strip().startswith(f"neumours {name} "):
            args = line.split("#")[0].split()[1:]
            assert build_parser().parse_args(args).command == name, line


#: Commands that show a progress bar (or, for plot, a line) and so take --quiet.
QUIET = ("synth", "inspect", "train", "plot", "segment", "evaluate", "render", "refine", "demo", "sweep",
         "export-nnunet")


@pytest.mark.parametrize("name", QUIET)
def test_quiet_on_every_command_that_shows_progress(name):
    parser = subcommands()[name]
    assert any("--quiet" in a.option_strings for a in parser._actions), f"{name} has no --quiet"


def test_view_takes_precision():
    parser = subcommands()["view"]
    (action,) = [a for a in parser._actions if "--precision" in a.option_strings]
    assert list(action.choices) == ["auto", "fp32", "bf16"] and action.default == "auto"


def test_the_tiny_preset_is_not_said_to_train_in_seconds(capsys):
    flat = " ".join(rendered_help(["train", "--help"], capsys).split())
    assert "in seconds" not in flat and "tiny:" in flat
