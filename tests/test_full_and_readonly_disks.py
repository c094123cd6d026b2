"""Writing to a full disk or a read-only file system: one line, exit 2, nothing left behind.

Real file systems, not mocks: each test mounts a small tmpfs (64 KiB, or
read-only). Mounting needs root and the capability to mount (CI runs as root);
elsewhere the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from neumours.cli.main import main
from neumours.data.phantom import write_dataset
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.reference import TorchINR

SIZE = "64k"


def _mount(where: Path, options: str) -> None:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """An empty 64 KiB file system."""
    where = tmp_path / "small"
    _mount(where, f"size={SIZE}")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def read_only(tmp_path):
    where = tmp_path / "ro"
    _mount(where, f"ro,size={SIZE}")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    case = write_dataset(root / "data", 1, shape=(24, 24, 16), seed=2, progress=False)[0]
    config = INRConfig.tiny()
    return case, save_checkpoint(root / "tiny.safetensors", TorchINR(config).state_dict(), config)


def fail(args, capsys) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumours: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_disk_filling_up_during_synth_leaves_nothing(small_disk, capsys):
    err = fail(["synth", "--out", small_disk / "data", "--cases", "2", "--shape", "48", "48", "48", "--quiet"], capsys)
    assert "no space left" in err and str(small_disk / "data" / "Phantom-00000-000") in err and ".tmp" not in err
    assert contents(small_disk) == []


def test_disk_filling_up_during_segment_leaves_neither_file(small_disk, inputs, capsys):
    case, ckpt = inputs
    err = fail(["segment", case, "--checkpoint", ckpt, "--out", small_disk / "seg.nii.gz", "--probs",
                small_disk / "probs.nii.gz", "--device", "cpu", "--quiet"], capsys)
    assert "no space left" in err
    assert contents(small_disk) == []


def test_full_disk_is_refused_before_any_work(small_disk, inputs, capsys):
    case, ckpt = inputs
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: the write that fails is the last one
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    for args in (["synth", "--out", small_disk / "data", "--quiet"],
                 ["segment", case, "--checkpoint", ckpt, "--out", small_disk / "seg.nii.gz", "--device", "cpu"],
                 ["train", "--data", case.parent, "--out", small_disk / "run", "--preset", "tiny"]):
        assert "no space left" in fail(args, capsys)
    assert contents(small_disk) == ["filler"]


def test_read_only_file_system_is_refused_before_any_work(read_only, inputs, capsys):
    case, ckpt = inputs
    for args in (["synth", "--out", read_only / "data", "--quiet"],
                 ["segment", case, "--checkpoint", ckpt, "--out", read_only / "seg.nii.gz", "--device", "cpu"],
                 ["render", case, "--out", read_only / "view.png", "--size", "16x16", "--device", "cpu"],
                 ["train", "--data", case.parent, "--out", read_only / "run", "--preset", "tiny"]):
        err = fail(args, capsys)
        assert "read-only file system" in err and str(read_only) in err


def test_disk_filling_up_during_training_keeps_the_last_checkpoint(small_disk, tmp_path, capsys):
    from neumours.atomic import is_temporary
    from neumours.train import checkpoints

    data = write_dataset(tmp_path / "data", 3, shape=(24, 24, 16), seed=2, progress=False)[0].parent
    run = small_disk / "run"
    capsys.readouterr()
    assert main([str(a) for a in ["train", "--data", data, "--out", run, "--preset", "tiny", "--steps", "6",
                                  "--val-every", "2", "--device", "cpu"]]) == 2
    err = capsys.readouterr().err.split("\r")[-1].split("\n")  # after the progress bar: the one line
    assert err[-1] == "" and err[-2].startswith("neumours: error: ") and "Traceback" not in "".join(err)
    assert "no space left" in err[-2] and ".tmp" not in err[-2]
    assert not [p for p in run.rglob("*") if is_temporary(p.name)]
    assert checkpoints.load(run).step % 2 == 0  # an earlier checkpoint, complete and verified


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` with one file, then give back ``leave`` bytes of it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_disk_filling_up_during_evaluate_leaves_no_report_folder(small_disk, tmp_path, capsys):
    cases = write_dataset(tmp_path / "data", 2, shape=(24, 24, 16), seed=2, progress=False)
    pred = tmp_path / "pred"  # the ground truth as predictions: <case id>.nii.gz
    pred.mkdir()
    for case in cases:
        shutil.copy(case / f"{case.name}-seg.nii.gz", pred / f"{case.name}.nii.gz")
    _fill(small_disk, leave=4096)  # room for one of the report's two files, so the check before work passes
    err = fail(["evaluate", "--pred", pred, "--gt", cases[0].parent, "--out", small_disk / "report", "--quiet"],
               capsys)
    assert "no space left" in err and str(small_disk / "report") in err
    assert contents(small_disk) == ["filler"]


def test_disk_filling_up_during_export_nnunet_is_one_line(small_disk, tmp_path, capsys):
    from neumours.atomic import is_temporary

    data = write_dataset(tmp_path / "data", 2, shape=(32, 32, 24), seed=2, progress=False)[0].parent
    err = fail(["export-nnunet", data, small_disk / "raw", "--dataset-id", "3", "--quiet"], capsys)
    assert "no space left" in err and str(small_disk / "raw") in err
    assert not [p for p in small_disk.rglob("*") if is_temporary(p.name)]
    assert contents(small_disk) == []
