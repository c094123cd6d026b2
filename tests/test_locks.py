"""Two writers on one folder: the run, sweep and dataset locks (neumours.locks).

Another process holds the lock for real (a child Python process that takes it and waits), so the refusal is the
one a user sees when two commands run at once; two ``train`` and two ``synth`` processes are also started together
on one folder. A lock left by a killed process is taken again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import KERNEL_DEVICE

from neumours.cli.main import main
from neumours.data import list_cases
from neumours.data.phantom import make_case, write_dataset
from neumours.errors import NeumoursError
from neumours.locks import LOCK_NAME, FolderLock
from neumours.train import checkpoints

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ("16", "16", "16")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

_HOLD = """
import sys
from neumours.locks import FolderLock
lock = FolderLock(sys.argv[1], "folder").acquire()
print("locked", flush=True)
sys.stdin.read()  # held until the test closes our stdin (or kills us)
lock.release()
"""


class Holder:
    """A child process holding the lock of ``folder`` until :meth:`stop` (it releases the lock) or :meth:`kill`."""

    def __init__(self, folder: Path):
        self.process = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=ENV, cwd=ROOT)
        assert self.process.stdout.readline().decode().strip() == "locked"

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused_while_held(args, capsys, root: Path, holder: Holder, folder: Path) -> str:
    before = tree(root)
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumours: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(folder) in err and f"process {holder.process.pid}" in err, err
    assert tree(root) == before
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("locks")
    return write_dataset(root / "data", 3, shape=(16, 16, 16), seed=4, progress=False)[0].parent


def train_args(data: Path, run: Path, seed: int = 0, *extra) -> list:
    return ["train", "--data", data, "--out", run, "--preset", "tiny", "--steps", "2", "--val-every", "2",
            "--seed", str(seed), "--device", "cpu", *extra]


# --- the lock itself ----------------------------------------------------------------------------------------

def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path):
    folder = tmp_path / "run"
    first = FolderLock(folder, "run folder").acquire()
    assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(NeumoursError, match=f"process {os.getpid()}"):
        FolderLock(folder, "run folder").acquire()
    first.release()
    assert not folder.exists()  # created by the lock and left empty: removed again
    with FolderLock(folder, "run folder"):
        (folder / "file").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["file"]  # the lock file goes with the lock


def test_a_lock_of_a_killed_process_is_taken_again(tmp_path):
    folder = tmp_path / "run"
    holder = Holder(folder)
    with pytest.raises(NeumoursError, match=f"process {holder.process.pid}"):
        FolderLock(folder).acquire()
    holder.kill()
    assert (folder / LOCK_NAME).read_text().strip() == str(holder.process.pid)  # left behind by the kill
    with FolderLock(folder):
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert list(folder.iterdir()) == []  # the stale lock file is gone with the lock (the folder was not ours)


# --- run folders ------------------------------------------------------------------------------------------

def test_train_into_a_run_being_written_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([str(a) for a in train_args(data, run)]) == 0
    holder = Holder(run)
    try:
        refused_while_held(train_args(data, run, 7, "--overwrite"), capsys, tmp_path, holder, run)
        refused_while_held(["train", "--data", data, "--resume", run, "--steps", "4", "--device", "cpu"], capsys,
                           tmp_path, holder, run)
    finally:
        holder.kill()
    assert main([str(a) for a in ["train", "--data", data, "--resume", run, "--steps", "4", "--device", "cpu"]]) == 0
    assert checkpoints.load(run).step == 4 and not (run / LOCK_NAME).exists()


def test_two_trains_started_together_leave_one_consistent_run(data, tmp_path):
    run = tmp_path / "run"
    procs = {seed: subprocess.Popen([sys.executable, "-m", "neumours.cli.main",
                                     *map(str, train_args(data, run, seed))], env=ENV, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (0, 7)}
    results = {seed: (p.wait(timeout=600), p.stderr.read().decode()) for seed, p in procs.items()}
    winners = [seed for seed, (code, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    code, err = results[({0, 7} - set(winners)).pop()]
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("neumours: error: ") and str(run) in last
    assert "being written by process" in last or "already holds a training run" in last, last
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["schedule"]["seed"] == winners[0]
    assert checkpoints.load(run).step == 2  # the winner's checkpoint, verified against its manifest
    # The run is the winner's alone: the same seed trained again gives the same weights.
    again = tmp_path / "again"
    assert main([str(a) for a in train_args(data, again, winners[0])]) == 0
    from neumours.model.checkpoint import load_checkpoint

    mine, theirs = load_checkpoint(run / "last.safetensors")[0], load_checkpoint(again / "last.safetensors")[0]
    if KERNEL_DEVICE == "cpu":
        assert all((mine[k] == theirs[k]).all() for k in mine)
    else:   # a GPU kind sums gradients with float atomics in any order: equal up to that, far from another seed's
        assert all(np.allclose(mine[k], theirs[k], rtol=1e-4, atol=1e-6) for k in mine)


# --- dataset folders --------------------------------------------------------------------------------------

def test_synth_into_a_dataset_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--cases", "1", "--shape", *SHAPE, "--quiet"]) == 0
    holder = Holder(out)
    try:
        refused_while_held(["synth", "--out", out, "--cases", "2", "--shape", *SHAPE, "--seed", "9", "--quiet",
                            "--overwrite"], capsys, tmp_path, holder, out)
    finally:
        holder.stop()
    assert main(["synth", "--out", str(out), "--cases", "2", "--shape", *SHAPE, "--seed", "9", "--quiet",
                 "--overwrite"]) == 0
    assert len(list_cases(out)) == 2


def test_two_synths_started_together_leave_one_consistent_dataset(tmp_path):
    out = tmp_path / "data"
    procs = {seed: subprocess.Popen([sys.executable, "-m", "neumours.cli.main", "synth", "--out", str(out),
                                     "--cases", str(2 + seed % 2), "--shape", *SHAPE, "--seed", str(seed), "--quiet",
                                     "--overwrite"], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for seed in (0, 1)}
    results = {seed: (p.wait(timeout=600), p.stderr.read().decode()) for seed, p in procs.items()}
    for code, err in results.values():  # each one wrote it whole, or was refused at once
        assert code == 0 or (code == 2 and "being written by process" in err), results
    assert any(code == 0 for code, _ in results.values())
    record = tomllib.loads((out / "synth.toml").read_text())
    refs = list_cases(out)
    assert len(refs) == record["cases"]  # synth.toml describes exactly the cases that are there
    for index, ref in enumerate(refs):  # and they are all of the seed it names
        made = make_case((16, 16, 16), seed=record["seed"], index=index)
        from neumours.data import load_case

        assert (load_case(ref).label == made.label).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- sweep folders ----------------------------------------------------------------------------------------

def test_sweep_into_a_folder_being_written_is_refused(data, tmp_path, capsys):
    pytest.importorskip("ray")
    space = tmp_path / "space.toml"
    space.write_text("[optimizer]\nlr = { grid = [1e-2, 3e-2] }\n")
    sweep = tmp_path / "sweep"
    holder = Holder(sweep)
    try:
        refused_while_held(["sweep", "--data", data, "--space", space, "--folds", "2", "--out", sweep, "--preset",
                            "tiny"], capsys, tmp_path, holder, sweep)
        refused_while_held(["sweep", "--resume", sweep], capsys, tmp_path, holder, sweep)
    finally:
        holder.stop()
    assert not sweep.exists()  # the holder made the folder for its lock and removed it with the lock
