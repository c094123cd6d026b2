"""Issue 30's findings through the real CLI: nothing a command writes can land on an input, on another output of
the same call, or in a run or dataset folder the command does not own; datasets are replaced whole, only with
--overwrite; case ids are unique across a tree; partial outputs are cleaned up by the next run.

Each refusal is exit 2 with one ``neumours: error:`` line naming both paths, and a snapshot of the file tree
(every path and the SHA-256 of every file) taken before and after shows nothing created, changed or lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from neumours.atomic import is_temporary
from neumours.cli.main import main
from neumours.data import list_cases
from neumours.data.phantom import write_dataset
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.reference import TorchINR
from refusals import expect_refusal

CONFIG = INRConfig.tiny()
SHAPE = (24, 24, 16)
ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too): the SHA-256 of a file, ``dir`` or ``-> target`` otherwise."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def refused(args, capsys, root: Path, names) -> str:
    """Run the CLI; assert exit 2, one error line holding every one of ``names``, no traceback, and the tree
    under ``root`` exactly as before. Returns the line."""
    return expect_refusal(args, capsys, root, names, tree)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom dataset (marked by synth.toml), a checkpoint, and a finished two-step run."""
    root = tmp_path_factory.mktemp("safety")
    cases = write_dataset(root / "data", 2, shape=SHAPE, seed=3, progress=False)
    ckpt = save_checkpoint(root / "tiny.safetensors", TorchINR(CONFIG).state_dict(), CONFIG)
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
                 "--steps", "2", "--val-every", "2", "--device", "cpu"]) == 0
    return {"root": root, "data": root / "data", "case": cases[0], "ckpt": ckpt, "run": root / "run"}


def t1n(case: Path) -> Path:
    return case / f"{case.name}-t1n.nii.gz"


# --- an output onto an input ------------------------------------------------------------------------------

def test_segment_onto_a_modality_of_its_case_is_refused(world, capsys):
    case = world["case"]
    refused(["segment", case, "--checkpoint", world["ckpt"], "--out", t1n(case), "--device", "cpu", "--quiet"],
            capsys, world["root"], [t1n(case), "would overwrite the input"])


def test_links_and_dots_are_followed(world, capsys, tmp_path):
    case = world["case"]
    link = tmp_path / "labels.nii.gz"
    link.symlink_to(t1n(case))
    refused(["segment", case, "--checkpoint", world["ckpt"], "--out", link, "--device", "cpu", "--quiet"],
            capsys, world["root"], [link, t1n(case)])
    dotted = tmp_path / ".." / tmp_path.name / "labels.nii.gz"
    refused(["segment", case, "--checkpoint", world["ckpt"], "--out", dotted, "--device", "cpu", "--quiet"],
            capsys, world["root"], [dotted, t1n(case)])
    hard = tmp_path / "hard.nii.gz"  # another name of the same file
    os.link(t1n(case), hard)
    refused(["segment", case, "--checkpoint", world["ckpt"], "--out", hard, "--device", "cpu", "--quiet"],
            capsys, world["root"], [hard, t1n(case), "same file"])


def test_segment_probs_onto_out_is_refused(world, capsys, tmp_path):
    out = tmp_path / "p.nii.gz"
    refused(["segment", world["case"], "--checkpoint", world["ckpt"], "--out", out, "--probs", out, "--device", "cpu",
             "--quiet"], capsys, tmp_path, [out, "--probs", "--out"])
    assert not out.exists()


def test_plot_onto_the_runs_metrics_is_refused(world, capsys):
    run = world["run"]
    refused(["plot", run, "--out", run / "metrics.csv"], capsys, world["root"], [run / "metrics.csv", "input"])
    refused(["plot", run, "--out", run / "checkpoint.json"], capsys, world["root"], [run / "checkpoint.json"])


def test_plot_may_redraw_the_runs_figure(world, capsys):
    assert main(["plot", str(world["run"])]) == 0
    assert (world["run"] / "curves.png").is_file()


def test_render_and_refine_onto_their_inputs_are_refused(world, capsys, tmp_path):
    case, ckpt = world["case"], world["ckpt"]
    link = tmp_path / "view.png"
    link.symlink_to(t1n(case))
    refused(["render", case, "--out", link, "--size", "8x8", "--device", "cpu"], capsys, world["root"],
            [link, t1n(case)])
    refused(["refine", case, "--checkpoint", ckpt, "--out", ckpt, "--from-labels", case / f"{case.name}-seg.nii.gz",
             "--steps", "1", "--device", "cpu"], capsys, world["root"], [ckpt, "--checkpoint"])


def test_evaluate_report_onto_its_predictions_is_refused(world, capsys, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "per_case.csv").symlink_to(t1n(world["case"]))
    refused(["evaluate", "--pred", pred, "--gt", world["data"], "--out", pred, "--quiet"], capsys, world["root"],
            [pred / "per_case.csv"])


# --- an output inside a run or dataset folder the command does not own ----------------------------------------

def test_outputs_into_a_run_or_dataset_of_another_command_are_refused(world, capsys):
    w, root = world, world["root"]
    cases = [
        (["segment", w["case"], "--checkpoint", w["ckpt"], "--out", w["run"] / "seg.nii.gz", "--device", "cpu"],
         w["run"]),
        (["segment", w["case"], "--checkpoint", w["ckpt"], "--out", w["data"] / "seg.nii.gz", "--device", "cpu"],
         w["data"]),
        (["evaluate", "--checkpoint", w["ckpt"], "--data", w["data"], "--out", w["run"] / "report", "--device", "cpu"],
         w["run"]),
        (["render", w["case"], "--out", w["data"] / "view.png", "--size", "8x8", "--device", "cpu"], w["data"]),
        (["train", "--data", w["data"], "--out", w["data"] / "run", "--preset", "tiny", "--device", "cpu"], w["data"]),
        (["export-nnunet", w["data"], w["run"] / "nnunet", "--dataset-id", "7", "--quiet"], w["run"]),
    ]
    for args, owner in cases:
        err = refused(args, capsys, root, [owner, "does not write"])
        assert args[args.index("--out") + 1 if "--out" in args else 2].name in err


def test_a_run_and_a_dataset_are_not_each_others_folder(world, capsys):
    w = world
    refused(["synth", "--out", w["run"], "--cases", "1", "--shape", *SHAPE, "--quiet", "--overwrite"], capsys,
            w["root"], [w["run"], "is a run folder"])
    refused(["train", "--data", w["data"], "--out", w["data"], "--overwrite", "--preset", "tiny", "--device", "cpu"],
            capsys, w["root"], [w["data"], "holds input files"])
    refused(["export-nnunet", w["data"], w["data"], "--dataset-id", "7", "--quiet"], capsys, w["root"], [w["data"]])
    refused(["demo", "--out", w["run"], "--cases", "2", "--shape", *SHAPE, "--steps", "1", "--device", "cpu"], capsys,
            w["root"], [w["run"], "is a run folder"])


def test_view_out_holding_inputs_is_refused(world, capsys):
    pytest.importorskip("aiohttp")
    refused(["view", world["data"], "--checkpoint", world["ckpt"], "--out", world["case"], "--no-browser"], capsys,
            world["root"], [world["case"], "holds input files"])


# --- datasets: replaced whole, only with --overwrite -------------------------------------------------------

def test_synth_over_a_dataset_needs_overwrite_and_then_replaces_it_whole(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--cases", "3", "--shape", "16", "16", "16", "--seed", "1",
                 "--quiet"]) == 0
    refused(["synth", "--out", data, "--cases", "2", "--shape", *SHAPE, "--seed", "7", "--quiet"], capsys, tmp_path,
            [data, "--overwrite"])
    assert main(["synth", "--out", str(data), "--cases", "2", "--shape", *map(str, SHAPE), "--seed", "7", "--quiet",
                 "--overwrite"]) == 0
    record = tomllib.loads((data / "synth.toml").read_text())
    assert (record["cases"], tuple(record["shape"]), record["seed"]) == (2, SHAPE, 7)
    refs = list_cases(data)  # exactly what synth.toml says: no case of the earlier dataset is left
    assert [r.case_id for r in refs] == ["Phantom-00000-000", "Phantom-00001-000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging or old folder left beside it
    assert sorted(p.name for p in data.iterdir()) == ["Phantom-00000-000", "Phantom-00001-000", "synth.toml"]
    fresh = write_dataset(tmp_path / "fresh", 2, shape=SHAPE, seed=7, progress=False)
    assert tree(data / refs[0].case_id) == tree(fresh[0])


def test_synth_into_a_folder_of_other_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    refused(["synth", "--out", folder, "--cases", "1", "--shape", "16", "16", "16", "--quiet", "--overwrite"], capsys,
            tmp_path, [folder, "notes.txt"])


# --- case ids unique across a tree --------------------------------------------------------------------------

def test_two_cases_with_one_id_are_refused_naming_both(world, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    nested = data / "more" / world["case"].name
    shutil.copytree(world["case"], nested)
    first = data / world["case"].name
    refused(["segment", data, "--checkpoint", world["ckpt"], "--out", tmp_path / "segs", "--device", "cpu", "--quiet"],
            capsys, tmp_path, [first, nested, "unique"])
    refused(["evaluate", "--pred", data, "--gt", data, "--quiet"], capsys, tmp_path, [first, nested])
    refused(["inspect", data], capsys, tmp_path, [first, nested])


# --- partial outputs of a killed export are removed by the next one -------------------------------------------

_KILLED_EXPORT = """
import os, signal, sys
import neumours.data.nnunet_export as export
real, calls = export._write_images, []
def write_then_die(case, folder):
    real(case, folder)
    calls.append(case)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
export._write_images = write_then_die
from neumours.cli.main import main
main(sys.argv[1:])
"""


def test_kill_during_export_leaves_a_partial_folder_the_next_export_removes(world, tmp_path):
    out = tmp_path / "raw"
    done = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, "export-nnunet", str(world["data"]), str(out),
                           "--dataset-id", "5", "--quiet"], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    partial = [p for p in tmp_path.iterdir() if is_temporary(p.name)]
    assert len(partial) == 1 and not out.exists()
    assert main(["export-nnunet", str(world["data"]), str(out), "--dataset-id", "5", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert len(list((out / "Dataset005_Neumours" / "imagesTr").iterdir())) == 8


def test_sweep_into_a_dataset_or_onto_its_data_is_refused(world, capsys, tmp_path):
    pytest.importorskip("ray")
    space = tmp_path / "space.toml"
    space.write_text("[optimizer]\nlr = { grid = [1e-2, 3e-2] }\n")
    args = ["sweep", "--data", world["data"], "--space", space, "--folds", "2", "--preset", "tiny", "--out"]
    refused([*args, world["data"] / "sweep"], capsys, world["root"], [world["data"], "does not write"])
    refused([*args, world["data"]], capsys, world["root"], [world["data"], "holds input files"])
