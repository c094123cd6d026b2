"""README's walkthrough runs as written, top to bottom, in one empty folder on the CPU (issue 31).

The README marks each command block of the walkthrough with ``<!-- walkthrough -->`` on the line
before it; this test extracts those blocks and runs their commands in order in an empty folder,
with ``neumours`` and ``python`` those of this checkout, so README's commands cannot drift from
what works. Blocks that need a GPU, an extra install or a browser are left unmarked.

Run it alone, with the time of each command, as

    python -m pytest -s -m slow tests/test_readme_walkthrough.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- walkthrough -->"


def walkthrough_blocks(text: str) -> list[str]:
    """The ```bash blocks that follow a line holding MARK (blank lines between are allowed)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            assert j < len(lines) and lines[j].strip() == "```bash", f"README line {i + 1}: {MARK} not before ```bash"
            end = lines.index("```", j + 1)
            blocks.append("\n".join(lines[j + 1:end]))
            i = end
        i += 1
    return blocks


def commands(blocks: list[str]) -> list[str]:
    """One entry per command line (continuations joined; comments and blank lines dropped)."""
    out, pending = [], ""
    for block in blocks:
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


def walkthrough() -> list[str]:
    return commands(walkthrough_blocks(README.read_text(encoding="utf-8")))


def test_the_readme_has_a_walkthrough_whose_folders_do_not_nest():
    steps = walkthrough()
    assert any(s.startswith("neumours refine ") for s in steps) and any(s.startswith("neumours train ") for s in steps)
    # Every file the commands read is made by an earlier command (or is in the phantom data).
    assert any("corrected.nii.gz" in s and not s.startswith("neumours refine") for s in steps), \
        "nothing in the walkthrough makes corrected.nii.gz"
    # Data folders side by side, never one inside another (inspect and export would find cases twice).
    folders = [Path(a[a.index("--out") + 1]) for a in (shlex.split(s.split("#")[0]) for s in steps)
               if a[:2] == ["neumours", "synth"]]
    assert len(folders) >= 2
    for a in folders:
        for b in folders:
            assert a == b or a not in b.parents, f"synth --out {b} lies inside synth --out {a}"


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, target in (("neumours", f'"{sys.executable}" -m neumours.cli.main'), ("python", f'"{sys.executable}"')):
        (tools / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (tools / name).chmod(0o755)
    work = tmp_path / "walkthrough"
    work.mkdir()
    env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               NEUMOURS_DEVICE="cpu")
    times = []
    for command in walkthrough():
        start = time.perf_counter()
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True,
                              text=True)
        times.append((time.perf_counter() - start, command))
        assert done.returncode == 0, f"`{command}` failed ({done.returncode}):\n{done.stderr[-3000:]}"
    print("\nREADME walkthrough on this machine:")
    for seconds, command in times:
        print(f"{seconds:7.1f} s  {command[:110]}")
    print(f"{sum(t for t, _ in times):7.1f} s  in all")

    for name in ("run/curves.png", "seg.nii.gz", "report/summary.md", "view.png", "refined.safetensors",
                 "pre.png", "post.png", "sweep1/best_config.toml", "best/best.safetensors"):
        assert (work / name).is_file(), f"the walkthrough did not write {name}"

    def strict(constant):
        raise AssertionError(f"refined.json holds {constant}")

    report = json.loads((work / "refined.json").read_text(), parse_constant=strict)
    assert report["steps"] and report["dice_after"]
    summary = subprocess.run(["neumours", "inspect", "pre", "--quiet"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout
    ids = re.findall(r"^case (\S+)", summary, flags=re.M)
    assert ids and len(ids) == len(set(ids)), "inspect lists a case twice"
