"""Crash safety of ``neumours train``: ``kill -9`` before, during and after checkpoint writes.

One run of the tiny preset (8 steps, a checkpoint at every second step) is
killed seven times in a row, each time at another moment (tests/crashing_train.py
kills the real process with SIGKILL), and continued with ``--resume`` after
every kill. The run must always be resumable; at the end its weights are bit
for bit those of an uninterrupted run, its metrics.csv holds the same rows
(every validation row included; only the wall-clock column differs), and no
temporary file or uncommitted step folder is left. A second run, whose case
pool holds two of four training cases and swaps one in at every step, is killed
three times with the same result.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BITWISE_RUNS, cpu_device_only

from neumours.atomic import is_temporary
from neumours.cli.main import main
from neumours.data.phantom import write_dataset
from neumours.model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("crashing_train.py")
SCHEDULE = ["--steps", "8", "--val-every", "2"]

#: (moment, step) of each kill, in the order they happen to the one run.
KILLS = [
    ("step", 1),                        # before anything is committed: only config.toml exists
    ("before:state.json", 2),           # during the first commit: a temporary step folder holds the weights
    ("before:checkpoint.json", 2),      # step folder complete and renamed, the manifest not yet replaced
    ("after:checkpoint.json", 2),       # committed; last.safetensors and metrics.csv not yet copied
    ("before:last.safetensors", 4),     # during the copies after a commit: a temporary copy is left
    ("before:step-00000006", 6),        # the step folder written under its temporary name, not renamed
    ("step", 8),                        # after a complete checkpoint, during the next steps
]


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


def leftovers(run: Path) -> list[str]:
    """Temporary files or folders anywhere in the run, and step folders the manifest does not keep."""
    import json

    manifest = json.loads((run / "checkpoint.json").read_text())
    keep = {manifest["folder"]} | ({manifest["best"]["folder"]} if manifest.get("best") else set())
    found = [str(p.relative_to(run)) for p in run.rglob("*") if is_temporary(p.name)]
    found += [f"checkpoints/{p.name}" for p in (run / "checkpoints").iterdir() if f"checkpoints/{p.name}" not in keep]
    return found


#: A pool of two case slots (4 modalities x float32 x 24 x 24 x 16 each) that swaps a case in every step.
CYCLING = """[sampler]
pool_bytes = 294912
refresh_every = 1
"""
#: Fewer kills for the cycling pool: before the first commit, mid-commit, between checkpoints.
CYCLING_KILLS = [("step", 2), ("before:checkpoint.json", 4), ("step", 7)]


@pytest.mark.slow
@cpu_device_only(BITWISE_RUNS)
@pytest.mark.parametrize("pool", ["whole", "cycling"])
def test_kill_9_at_every_moment_then_resume_equals_uninterrupted(tmp_path, capsys, pool):
    data = tmp_path / "data"
    cases, kills = (3, KILLS) if pool == "whole" else (5, CYCLING_KILLS)
    write_dataset(data, cases, shape=(24, 24, 16), seed=3, progress=False)
    common = ["--preset", "tiny", "--device", "cpu"]
    if pool == "cycling":
        (tmp_path / "cycling.toml").write_text(CYCLING)
        common += ["--config", str(tmp_path / "cycling.toml")]

    straight = tmp_path / "straight"
    assert main(["train", "--data", str(data), "--out", str(straight), *common, *SCHEDULE]) == 0

    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for i, (moment, step) in enumerate(kills):
        start = ["--out", str(run), *common, *SCHEDULE] if i == 0 else ["--resume", str(run), "--device", "cpu"]
        child = subprocess.run([sys.executable, str(DRIVER), moment, str(step), "--", "train", "--data", str(data),
                                *start], env=env, capture_output=True, text=True, timeout=300)
        assert child.returncode == -signal.SIGKILL, f"{moment} at step {step} never came:\n{child.stderr[-2000:]}"
        assert "Traceback" not in child.stderr

    capsys.readouterr()
    assert main(["train", "--data", str(data), "--resume", str(run), "--device", "cpu"]) == 0
    assert "trained 8 steps" in capsys.readouterr().out

    for name in ("last.safetensors", "best.safetensors"):
        # Tensors and metadata, not file bytes: safetensors orders the metadata differently in each process.
        want, _, want_meta = load_checkpoint(straight / name)
        got, _, got_meta = load_checkpoint(run / name)
        assert want.keys() == got.keys() and want_meta == got_meta, name
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=f"{name}: {key}")
    assert metric_rows(run) == metric_rows(straight)
    assert [r["step"] for r in metric_rows(run) if r["val_dice_mean"]] == ["2", "4", "6", "8"]
    if pool == "cycling":  # the swaps really happened, as many in both runs
        def swaps(r: Path) -> int:
            import json

            folder = json.loads((r / "checkpoint.json").read_text())["folder"]
            return json.loads((r / folder / "state.json").read_text())["pool"]["refreshes"]

        assert swaps(run) == swaps(straight) == 8
    assert leftovers(run) == []
