"""neumours.atomic: several files as one unit, crash leftovers, modes; refine --out writes its pair as a unit."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from neumours.atomic import atomic_write_files, is_temporary, remove_stale_temporaries, temporary_name
from neumours.errors import NeumoursError


def test_a_failed_unit_changes_no_target_and_leaves_no_temporary(tmp_path):
    first = tmp_path / "a.bin"
    first.write_bytes(b"old")
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    with pytest.raises(NeumoursError, match="blocker"):
        atomic_write_files({first: b"new", tmp_path / "blocker" / "b.bin": b"new"})
    assert first.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "blocker"]


def test_a_unit_replaces_every_target(tmp_path):
    targets = atomic_write_files({tmp_path / "x.safetensors": b"1", tmp_path / "x.json": b"{}"})
    assert [p.read_bytes() for p in targets] == [b"1", b"{}"]
    assert not [p for p in tmp_path.iterdir() if is_temporary(p.name)]


def test_stale_temporaries_of_dead_writers_go_live_ones_stay(tmp_path):
    target = tmp_path / "seg.nii.gz"
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, alive = temporary_name(target, pid=finished.pid), temporary_name(target, pid=os.getpid())
    dead.write_bytes(b"left by a crash")
    alive.write_bytes(b"being written right now")
    assert dead.name.endswith(".nii.gz") and is_temporary(dead.name)
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert alive.exists() and not dead.exists()


def test_refine_writes_checkpoint_and_report_as_a_matched_pair(tmp_path, capsys):
    from neumours.cli.main import main
    from neumours.data.phantom import write_dataset
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.reference import TorchINR

    config = INRConfig.tiny()
    case = write_dataset(tmp_path / "data", 1, shape=(16, 16, 16), seed=5, progress=False)[0]
    start = save_checkpoint(tmp_path / "start.safetensors", TorchINR(config).state_dict(), config)
    out = tmp_path / "refined" / "model.safetensors"
    args = ["refine", str(case), "--checkpoint", str(start), "--from-labels", str(next(case.glob("*-seg.nii.gz"))),
            "--views", "1", "--size", "8x8", "--steps", "1", "--out", str(out), "--device", "cpu"]
    old = os.umask(0o022)
    try:
        assert main(args) == 0
    finally:
        os.umask(old)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["checkpoint"] == out.name
    assert report["checkpoint_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.safetensors"]
    assert {oct(p.stat().st_mode & 0o777) for p in out.parent.iterdir()} == {"0o644"}
