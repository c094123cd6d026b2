"""The shared check of a refused command: exit 2, one ``neumours: error:`` line, no traceback, nothing changed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from neumours.cli.main import main


def expect_refusal(args, capsys, root: Path, names, snapshot: Callable[[Path], dict]) -> str:
    """Run the CLI with ``args``; assert exit 2, one error line holding every one of ``names``, no traceback,
    and ``snapshot(root)`` the same before and after. Returns the line."""
    before = snapshot(root)
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("neumours: error: ") and captured.err.count("\n") == 1, captured.err
    for name in names:
        assert str(name) in captured.err, (name, captured.err)
    assert snapshot(root) == before, "a refused command changed the file tree"
    return captured.err
