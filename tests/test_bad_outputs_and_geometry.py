"""Every row of issue 12's table through the real CLI: exit 2, one line naming the file, no traceback,
nothing new on disk; and files written with the user's umask.

The inputs are real: phantom cases written by ``neumours synth``'s library code, a tiny INR checkpoint,
a finished two-step training run; bad headers are made by editing the 348-byte NIfTI-1 header of a
phantom file (:func:`edit_header`), not by mocking the loader.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neumours.cli.main import main
from neumours.data.phantom import write_dataset
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.reference import TorchINR

CONFIG = INRConfig.tiny()
SHAPE = (24, 24, 16)


def edit_header(path: Path, **fields) -> None:
    """Rewrite fields of a .nii.gz file's NIfTI-1 header in place, leaving the data bytes as they are.

    ``fields`` are nibabel header keys (``pixdim``, ``srow_x``, ``sform_code``...); values are assigned
    as given, so a header can say anything a broken exporter could write.
    """
    raw = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    for key, value in fields.items():
        header[key] = value
    path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))


def zero_affine(case: Path) -> None:
    """Every file of ``case``: an all-zero sform (code 1) and no qform, so the affine is singular."""
    for f in sorted(case.glob("*.nii.gz")):
        edit_header(f, srow_x=np.zeros(4), srow_y=np.zeros(4), srow_z=np.zeros(4), sform_code=1, qform_code=0)


def zero_spacing(case: Path) -> None:
    """Every file of ``case``: voxel spacing (pixdim) 0 along the first axis."""
    for f in sorted(case.glob("*.nii.gz")):
        pixdim = nib.load(f).header["pixdim"].copy()
        pixdim[1] = 0.0
        edit_header(f, pixdim=pixdim)


@pytest.fixture(scope="module")
def world(module_world):
    """Good data, a checkpoint, a finished run; bad cases beside them.

    The data (3 cases of SHAPE, seed 11) and the two-step tiny run are conftest's phantom world,
    copied for this module."""
    root, cases = module_world["root"], module_world["cases"]
    ckpt = save_checkpoint(root / "tiny.safetensors", TorchINR(CONFIG).state_dict(), CONFIG)
    for name, damage in (("zero-affine", zero_affine), ("zero-spacing", zero_spacing)):
        bad = root / name
        write_dataset(bad, 2, shape=SHAPE, seed=11, progress=False)
        for case in case_folders(bad):
            damage(case)
    # A dataset whose LAST case (in listing order) has a singular affine: the first two are fine.
    mixed = root / "mixed"
    write_dataset(mixed, 3, shape=SHAPE, seed=11, progress=False)
    zero_affine(case_folders(mixed)[-1])
    # A regular file where a folder is needed.
    (root / "a-file").write_text("not a folder\n")
    return {"root": root, "case": cases[0], "data": root / "data", "ckpt": ckpt, "run": root / "run",
            "file": root / "a-file", "mixed": mixed}


def case_folders(dataset: Path) -> list[Path]:
    """The case folders of a phantom dataset in listing order (not its synth.toml record)."""
    return sorted(p for p in dataset.iterdir() if p.is_dir())


def seg_file(case: Path) -> Path:
    """The label file of a phantom case folder."""
    return next(case.glob("*-seg.nii.gz"))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (hidden ones too) with size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return found


def expect_one_line(args, capsys, world, names, extra_roots=()) -> str:
    """Run the CLI; assert exit 2, one ``neumours: error:`` line holding each of ``names``, no traceback,
    and nothing created, changed or removed under the test's folders. Returns the line."""
    roots = [world["root"], *extra_roots]
    before = [snapshot(r) for r in roots]
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err)
    assert "Traceback" not in err + captured.out
    assert err.startswith("neumours: error: ") and err.count("\n") == 1, err
    for name in names:
        assert str(name) in err, (name, err)
    assert [snapshot(r) for r in roots] == before, "the command changed files although it failed"
    return err


# --- row 1: an output path whose parent is a regular file, or under /proc ------------------------------------

def _commands(w, out_file: Path, out_folder: Path) -> dict[str, list]:
    """Each command that writes, with its output at ``out_file`` (file outputs) or ``out_folder`` (folders)."""
    return {
        "synth": ["synth", "--out", out_folder, "--cases", "1", "--shape", *SHAPE, "--quiet"],
        "train": ["train", "--data", w["data"], "--out", out_folder, "--preset", "tiny", "--steps", "1",
                  "--device", "cpu"],
        "render": ["render", w["case"], "--out", out_file.with_suffix(".png"), "--size", "16x16", "--device", "cpu"],
        "plot": ["plot", w["run"], "--out", out_file.with_suffix(".png")],
        "refine": ["refine", w["case"], "--checkpoint", w["ckpt"], "--out", out_file.with_suffix(".safetensors"),
                   "--from-labels", seg_file(w["case"]), "--views", "1", "--steps", "1", "--size", "8x8", "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", w["ckpt"], "--data", w["data"], "--out", out_folder,
                     "--device", "cpu", "--quiet"],
        "segment": ["segment", w["case"], "--checkpoint", w["ckpt"], "--out", out_file.with_suffix(".nii.gz"),
                    "--device", "cpu", "--quiet"],
        "demo": ["demo", "--out", out_folder, "--cases", "2", "--shape", *SHAPE, "--steps", "1", "--device", "cpu"],
    }


COMMANDS = ["synth", "train", "render", "plot", "refine", "evaluate", "segment", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_output_under_a_regular_file(world, capsys, command):
    under = world["file"] / "out"
    args = _commands(world, under, under)[command]
    expect_one_line(args, capsys, world, [world["file"]])


@pytest.mark.parametrize("command", COMMANDS)
def test_output_on_a_virtual_file_system(world, capsys, command):
    args = _commands(world, Path("/proc/neumours-out"), Path("/proc/neumours-out"))[command]
    err = expect_one_line(args, capsys, world, ["/proc/neumours-out"])
    assert "virtual file system" in err


# --- rows 2-3: singular affine, zero spacing -------------------------------------------------------------

@pytest.mark.parametrize("damage, problem", [("zero-affine", "singular"), ("zero-spacing", "pixdim")])
@pytest.mark.parametrize("command", ["inspect", "segment", "train", "render", "refine", "evaluate"])
def test_bad_geometry_names_the_file(world, capsys, tmp_path, damage, problem, command):
    data = world["root"] / damage
    case = case_folders(data)[0]
    out = tmp_path / "out"
    args = {
        "inspect": ["inspect", case],
        "segment": ["segment", case, "--checkpoint", world["ckpt"], "--out", out / "seg.nii.gz", "--device", "cpu",
                    "--quiet"],
        "train": ["train", "--data", data, "--out", out, "--preset", "tiny", "--steps", "1", "--device", "cpu"],
        "render": ["render", case, "--out", out / "view.png", "--size", "16x16", "--device", "cpu"],
        "refine": ["refine", case, "--checkpoint", world["ckpt"], "--out", out / "r.safetensors", "--from-labels",
                   seg_file(case), "--views", "1", "--steps", "1", "--size", "8x8", "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", world["ckpt"], "--data", data, "--split", "all", "--out", out,
                     "--device", "cpu", "--quiet"],
    }[command]
    err = expect_one_line(args, capsys, world, [".nii.gz", problem], extra_roots=[tmp_path])
    assert case.name in err or data.name in err
    assert not out.exists()


def test_force_geometry_goes_on_with_a_note_of_the_assumption(world, capsys):
    case = case_folders(world["root"] / "zero-affine")[0]
    assert main(["inspect", str(case), "--force-geometry"]) == 0
    out = capsys.readouterr().out
    assert "mL" in out and "1 mm voxels assumed" in out


# --- row 4: segment --out with a name that is neither NIfTI nor a folder ----------------------------------

def test_segment_out_must_be_nifti_or_folder(world, capsys, tmp_path):
    out = tmp_path / "seg.png"
    expect_one_line(["segment", world["case"], "--checkpoint", world["ckpt"], "--out", out, "--device", "cpu"],
                    capsys, world, ["seg.png"], extra_roots=[tmp_path])
    assert not any(tmp_path.iterdir())


# --- row 5: a folder whose last case is bad -----------------------------------------------------------------

@pytest.mark.parametrize("command", ["segment", "segment --probs", "evaluate", "train"])
def test_folder_with_a_bad_last_case_writes_nothing(world, capsys, tmp_path, command):
    out = tmp_path / "out"
    args = {
        "segment": ["segment", world["mixed"], "--checkpoint", world["ckpt"], "--out", out, "--device", "cpu",
                    "--quiet"],
        "segment --probs": ["segment", world["mixed"], "--checkpoint", world["ckpt"], "--out", out, "--probs",
                            tmp_path / "probs", "--device", "cpu", "--quiet"],
        "evaluate": ["evaluate", "--checkpoint", world["ckpt"], "--data", world["mixed"], "--split", "all", "--out",
                     out, "--device", "cpu", "--quiet"],
        "train": ["train", "--data", world["mixed"], "--out", out, "--preset", "tiny", "--steps", "1",
                  "--device", "cpu"],
    }[command]
    bad = case_folders(world["mixed"])[-1].name
    expect_one_line(args, capsys, world, [bad, "singular"], extra_roots=[tmp_path])
    assert not any(tmp_path.iterdir())


def test_train_with_keep_going_trains_on_the_good_cases_and_lists_the_bad(world, capsys, tmp_path):
    cases = case_folders(world["mixed"])
    code = main([str(a) for a in ["train", "--data", world["mixed"], "--out", tmp_path / "run", "--preset", "tiny",
                                  "--steps", "2", "--val-every", "2", "--keep-going", "--device", "cpu"]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (tmp_path / "run" / "checkpoint.json").is_file()
    last = err.strip().splitlines()[-1]
    assert last.startswith("neumours: error: ") and "1 case(s) were left out" in last, err
    assert cases[-1].name in err and "singular" in err


def test_folder_with_keep_going_writes_the_good_cases_and_lists_the_bad(world, capsys, tmp_path):
    out = tmp_path / "segs"
    cases = case_folders(world["mixed"])
    code = main([str(a) for a in ["segment", world["mixed"], "--checkpoint", world["ckpt"], "--out", out,
                                  "--probs", tmp_path / "probs", "--keep-going", "--device", "cpu", "--quiet"]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [f"{c.name}.nii.gz" for c in cases[:-1]]
    assert sorted(p.name for p in (tmp_path / "probs").iterdir()) == [f"{c.name}_probs.nii.gz" for c in cases[:-1]]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("neumours: error: ") and "1 of 3 case(s) failed" in lines[-1]
    assert any(cases[-1].name in line and "singular" in line for line in lines[:-1]), err
    assert not any(cases[0].name in line for line in lines)


# --- row 6: --scale too large ----------------------------------------------------------------------------

def test_segment_scale_too_large_says_the_largest_that_fits(world, capsys, tmp_path):
    err = expect_one_line(["segment", world["case"], "--checkpoint", world["ckpt"], "--out", tmp_path / "s.nii.gz",
                           "--scale", "300", "--device", "cpu"], capsys, world, ["--scale 300"],
                          extra_roots=[tmp_path])
    assert "largest that fits is --scale" in err
    best = float(err.split("largest that fits is --scale ")[1].split()[0].rstrip(";,)"))
    assert 1 <= best < 300


# --- row 7: train --out on an existing run ----------------------------------------------------------------

def test_train_out_refuses_an_existing_run(world, capsys):
    err = expect_one_line(["train", "--data", world["data"], "--out", world["run"], "--preset", "tiny",
                           "--steps", "2", "--device", "cpu"], capsys, world, [world["run"], "--resume"])
    assert "--overwrite" in err


# --- rows 8-9: checkpoints that do not belong together; crash leftovers ------------------------------------

def _copy_run(world, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    return run


def test_resume_refuses_files_from_different_checkpoints(world, capsys, tmp_path):
    """The old failure (weights of one step, optimiser state of another) is refused in one line."""
    import json

    run = _copy_run(world, tmp_path)
    manifest = json.loads((run / "checkpoint.json").read_text())
    state = run / manifest["folder"] / "state.json"
    state.write_bytes(state.read_bytes() + b"\0")  # not the state the manifest committed
    err = expect_one_line(["train", "--data", world["data"], "--resume", run, "--steps", "4", "--device", "cpu"],
                          capsys, world, [run, "state.json", "does not belong"], extra_roots=[tmp_path])
    assert "SHA-256" in err


def test_resume_removes_crash_leftovers_and_keeps_every_validation_row(world, capsys, tmp_path):
    """A kill -9 leaves a temporary file of a dead process and an uncommitted step folder: the next start
    removes both, resumes from the committed step and metrics.csv keeps that step's validation row."""
    import csv
    import json
    import subprocess

    run = _copy_run(world, tmp_path)
    pid = subprocess.Popen(["true"])  # a process id that has exited
    pid.wait()
    leftover = run / f".last.safetensors.{pid.pid}-0123abcd.tmp.safetensors"
    leftover.write_bytes(b"half a checkpoint")
    orphan = run / "checkpoints" / "step-00000003"
    orphan.mkdir()
    (orphan / "weights.safetensors").write_bytes(b"never committed")
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    assert main(["train", "--data", str(world["data"]), "--resume", str(run), "--steps", "4", "--device", "cpu"]) == 0
    assert not leftover.exists() and not orphan.exists()
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    validated = [int(r["step"]) for r in rows if r.get("val_dice_mean") not in (None, "")]
    assert step in validated and 4 in validated


# --- row 10: file modes follow the umask -----------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(world, tmp_path, umask, capsys):
    old = os.umask(umask)
    try:
        assert main(["synth", "--out", str(tmp_path / "data"), "--cases", "1", "--shape", *map(str, SHAPE),
                     "--quiet"]) == 0
        assert main(["segment", str(world["case"]), "--checkpoint", str(world["ckpt"]), "--out",
                     str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--quiet"]) == 0
        assert main(["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"), "--preset", "tiny",
                     "--steps", "1", "--val-every", "1", "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 8
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
