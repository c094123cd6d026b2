"""Every value a user types is checked where it enters (issue 28): training TOML, search spaces, number
flags, refine's targets file and plot's metrics file give one ``neumours: error:`` line naming the file
or flag and what is allowed, exit status 2, no traceback, and nothing written."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neumours.cli.main import main
from neumours.data.phantom import write_dataset
from neumours.errors import NeumoursError
from neumours.schema import Number, SettingError
from neumours.sweep.space import apply, parse_space
from neumours.train.config import OptimizerConfig, TrainConfig, load_toml, preset
from refusals import expect_refusal


@pytest.fixture(scope="module")
def dataset(module_dataset):
    """3 phantom cases of 24x24x16 (conftest's, copied for this module)."""
    return module_dataset["data"]


def tree(root: Path) -> dict:
    """Every file and folder under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def one_line(args, capsys, root: Path, *names) -> str:
    """Run the CLI: exit 2, one ``neumours: error:`` line holding each of ``names``, no traceback, no change
    under ``root``. Returns the line."""
    return expect_refusal(args, capsys, root, names, tree)


# --- training TOML --------------------------------------------------------------------------------------

TRAIN_CASES = [
    ('[schedule]\nsteps = "100"\n', "[schedule] steps", "an integer"),
    ('[optimizer]\nlr = "x"\n', "[optimizer] lr", "> 0"),
    ("[optimizer]\nlr = nan\n", "[optimizer] lr", "finite"),
    ("[optimizer]\nlr = inf\n", "[optimizer] lr", "finite"),
    ("[optimizer]\nlr = -0.01\n", "[optimizer] lr", "> 0"),
    ("[optimizer]\nbetas = [0.9]\n", "[optimizer] betas", "a list of 2"),
    ("[optimizer]\nbetas = [0.9, 1.5]\n", "[optimizer] betas[1]", "in [0, 1)"),
    ("[optimizer]\nclip_norm = -1.0\n", "[optimizer] clip_norm", "> 0"),
    ("[optimizer]\nlr = 1e-3\nlr_final = 5e-3\n", "[optimizer] lr_final", "at most lr"),
    ('[optimizer]\nname = "sgd"\n', "[optimizer] name", '"adamw", "muon"'),
    ("[sampler]\nmicro_batch = 0\n", "[sampler] micro_batch", "at least 1"),
    ("[sampler]\nmicro_batch = 1000000000\n", "[sampler] micro_batch", "at most 1048576"),
    ("[sampler]\nmicro_batch = 1048576\n[network]\nhidden_width = 1024\nspatial_width = 512\nmodality_width = 512\n",
     "[sampler] micro_batch", "2 GiB"),
    ("[sampler]\nrefresh_every = 0\n", "[sampler] refresh_every", "at least 1"),
    ("[sampler]\nmicro_batch = 1048576\nmicro_batches = 1024\n", "[sampler] micro_batch x micro_batches",
     "at most 16777216"),
    ("[sampler]\nforeground_ratio = 2.0\n", "[sampler] foreground_ratio", "in [0, 1]"),
    ("[schedule]\nlog_every = 0\n", "[schedule] log_every", "at least 1"),
    ("[schedule]\nval_fraction = 1.5\n", "[schedule] val_fraction", "in [0, 1)"),
    ("[schedule]\nseed = -1\n", "[schedule] seed", "at least 0"),
    ("[schedule]\nsteps = 10.5\n", "[schedule] steps", "an integer"),
    ("[loss]\nclass_weights = [2.0, 1.0]\n", "[loss] class_weights", "one weight per class"),
    ("[loss]\nclass_weights = [2.0, 1.0, 0.0, 1.0]\n", "[loss] class_weights[2]", "in (0, 1000000]"),
    ("[loss]\nboundary_weight = -0.1\n", "[loss] boundary_weight", "in [0, 10]"),
    ("[loss]\nboundary_weight = 11.0\n", "[loss] boundary_weight", "in [0, 10]"),
    ("[augment]\nnoise = -1.0\n", "[augment] noise", "in [0, 100]"),
    ("[augment]\nflip = true\n", "[augment] flip", "in [0, 1]"),
    ("[network]\nnum_freqs = 0\n", "[network] num_freqs", "at least 1"),
    ("[network]\npatch_size = 4\n", "[network]", "odd"),
    ("[optimizer]\nlr = { grid = [1e-3] }\n", "[optimizer] lr", "got a table"),
    ("optimizer = 3\n", "[optimizer]", "must be a table"),
    ("[optimiser]\nlr = 1e-3\n", "unknown field(s) optimiser", "known:"),
]


@pytest.mark.parametrize("text, key, allowed", TRAIN_CASES)
def test_bad_training_toml_is_one_line(dataset, tmp_path, capsys, text, key, allowed):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    one_line(["train", "--data", dataset, "--out", tmp_path / "run", "--preset", "tiny", "--config", config,
              "--device", "cpu"], capsys, tmp_path, config, key, allowed)
    assert not (tmp_path / "run").exists()


def test_config_that_is_a_folder_or_not_toml(dataset, tmp_path, capsys):
    (tmp_path / "folder.toml").mkdir()
    args = ["train", "--data", dataset, "--out", tmp_path / "run", "--preset", "tiny", "--device", "cpu"]
    one_line([*args, "--config", tmp_path / "folder.toml"], capsys, tmp_path, "folder.toml", "is a folder")
    (tmp_path / "binary.toml").write_bytes(b"\x00\xff\xfe garbage")
    one_line([*args, "--config", tmp_path / "binary.toml"], capsys, tmp_path, "binary.toml", "not a valid TOML")


def test_library_objects_are_checked_too():
    with pytest.raises(SettingError, match=r"lr must be > 0, got -1.0"):
        OptimizerConfig(lr=-1.0)
    with pytest.raises(SettingError, match="one weight per class"):
        dataclasses.replace(preset("tiny"), loss=dataclasses.replace(preset("tiny").loss, class_weights=(1.0, 1.0)))
    assert OptimizerConfig(betas=[0.8, 0.9]).betas == (0.8, 0.9)  # a list from TOML or Python becomes the tuple
    assert isinstance(OptimizerConfig(lr=1).lr, float)


def test_saved_configs_read_back(tmp_path):
    from neumours.train.config import save_toml

    for name in ("paper", "tiny"):
        save_toml(preset(name), tmp_path / f"{name}.toml")
        assert load_toml(tmp_path / f"{name}.toml", TrainConfig()) == preset(name)


# --- phantom ranges ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("noise = [0.1]\n", "noise"),
    ("noise = [0.1, nan]\n", "noise[1]"),
    ("pv_sigma = [0.5, 1e6]\n", "pv_sigma[1]"),
    ('max_lesions = "3"\n', "max_lesions"),
    ("vessels = [0, 2.5]\n", "vessels[1]"),
    ("whole_tumour = [0.0, 0.1]\n", "whole_tumour"),
])
def test_bad_phantom_ranges_are_one_line(tmp_path, capsys, text, key):
    ranges = tmp_path / "r.toml"
    ranges.write_text(text)
    one_line(["synth", "--out", tmp_path / "out", "--ranges", ranges, "--cases", "1", "--quiet"], capsys, tmp_path,
             ranges, key)


# --- search spaces ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[optimizer]\nlr = { uniform = [0, inf] }\n", "[optimizer] lr: uniform lo must be > 0, got 0.0"),
    ("[optimizer]\nclip_norm = { uniform = [0.5, inf] }\n",
     "[optimizer] clip_norm: uniform hi must be a finite number > 0"),
    ("[sampler]\nforeground_ratio = { uniform = [0, inf] }\n",
     "foreground_ratio: uniform hi must be a finite number in"),
    ("[optimizer]\nlr = { grid = [1e-2, -1.0] }\n", "[optimizer] lr: grid value 2 must be > 0, got -1.0"),
    ('[optimizer]\nlr = { grid = ["x"] }\n', "[optimizer] lr: grid value 1 must be a finite number > 0"),
    ("[sampler]\nmicro_batch = { uniform = [0, 64] }\n", "[sampler] micro_batch: uniform lo must be at least 1"),
    ("[sampler]\nmicro_batch = { uniform = [1.5, 64] }\n", "micro_batch: uniform lo must be an integer"),
    ("[schedule]\nseed = { choice = [-3, 1] }\n", "[schedule] seed: choice value 1 must be at least 0"),
    ("[loss]\nclass_weights = { grid = [[1.0, 1.0]] }\n", "one weight per class"),
    ("[optimizer]\nlr = { grid = [1e-3] }\nlr_final = { grid = [1e-2] }\n", "lr_final must be at most lr"),
    ("[optimizer]\nlr = { loguniform = [1e-4, 1e-2] }\nlr_final = { uniform = [1e-5, 1e-3] }\n",
     "lr_final must be at most lr"),
])
def test_bad_search_space_is_one_line(dataset, tmp_path, capsys, text, message):
    pytest.importorskip("ray")
    space = tmp_path / "space.toml"
    space.write_text(text)
    one_line(["sweep", "--data", dataset, "--space", space, "--folds", "2", "--out", tmp_path / "sweep", "--preset",
              "tiny", "--search", "random"], capsys, tmp_path, space, message)


def test_space_that_is_a_folder(dataset, tmp_path, capsys):
    pytest.importorskip("ray")
    (tmp_path / "space").mkdir()
    one_line(["sweep", "--data", dataset, "--space", tmp_path / "space", "--folds", "2", "--out", tmp_path / "sweep",
              "--preset", "tiny"], capsys, tmp_path, tmp_path / "space", "is a folder")


def test_swept_lr_carries_lr_final_along():
    """A sweep of lr alone over the tiny preset (lr_final 5e-3), e.g. up to 3e-3, is valid: a trial that
    sets lr alone keeps the base's ratio lr_final / lr, so its schedule decays; README's sweep parses."""
    tiny = preset("tiny")
    space = parse_space({"optimizer": {"lr": {"grid": [1e-3, 3e-3]}}, "sampler": {"foreground_ratio":
                                                                                   {"grid": [0.1, 0.3]}}},
                        base=tiny)
    assert space.names == ["optimizer.lr", "sampler.foreground_ratio"]
    trial = apply(tiny, {"optimizer": {"lr": 1e-3}})
    assert trial.optimizer.lr == 1e-3
    assert trial.optimizer.lr_final == pytest.approx(1e-3 * tiny.optimizer.lr_final / tiny.optimizer.lr)
    both = apply(tiny, {"optimizer": {"lr": 1e-3, "lr_final": 1e-4}})  # set together: taken as given
    assert both.optimizer.lr_final == 1e-4
    with pytest.raises(NeumoursError, match="lr_final must be at most lr"):
        apply(tiny, {"optimizer": {"lr_final": 5e-2}})
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "lr = { grid = [6e-3, 1e-2] }" in readme
    assert parse_space({"optimizer": {"lr": {"grid": [6e-3, 1e-2]}}}, base=tiny).names == ["optimizer.lr"]


# --- number flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, flag, allowed", [
    (["render", "CASE", "--out", "o.png", "--azimuth", "nan"], "--azimuth", "finite"),
    (["render", "CASE", "--out", "o.png", "--elevation", "inf"], "--elevation", "in [-90, 90]"),
    (["render", "CASE", "--out", "o.gif", "--turntable", "4", "--fps", "0"], "--fps", "in (0, 240]"),
    (["render", "CASE", "--out", "o.png", "--fov", "180"], "--fov", "in (0, 180)"),
    (["render", "CASE", "--out", "o.png", "--size", "0x10"], "--size", "width and height"),
    (["render", "CASE", "--out", "o.png", "--modalities", "t2f=-1"], "--modalities", "in [0, 1000]"),
    (["segment", "CASE", "--checkpoint", "c", "--out", "s.nii.gz", "--scale", "1e308"], "--scale", "in [1, 1024]"),
    (["segment", "CASE", "--checkpoint", "c", "--out", "s.nii.gz", "--scale", "nan"], "--scale", "finite"),
    (["refine", "CASE", "--checkpoint", "c", "--out", "r.safetensors", "--lr", "inf"], "--lr", "finite"),
    (["refine", "CASE", "--checkpoint", "c", "--out", "r.safetensors", "--steps", "0"], "--steps", "at least 1"),
    (["train", "--data", "d", "--out", "r", "--steps", "100x"], "--steps", "an integer"),
    (["train", "--data", "d", "--out", "r", "--seed", "-1"], "--seed", "at least 0"),
    (["synth", "--out", "x", "--shape", "24", "24", "100000"], "--shape", "at most 512"),
    (["sweep", "--cpus-per-trial", "nan"], "--cpus-per-trial", "finite"),
    (["export-nnunet", "d", "o", "--dataset-id", "1000"], "--dataset-id", "1..999"),
    (["view", "d", "--checkpoint", "c", "--port", "-1"], "--port", "at least 0"),
    (["train", "--data", "d", "--out", "r", "--optimizer", "sgd"], "--optimizer", "invalid choice"),
])
def test_bad_number_flag_is_one_line(tmp_path, capsys, monkeypatch, args, flag, allowed):
    monkeypatch.chdir(tmp_path)
    err = one_line(args, capsys, tmp_path, flag, allowed)
    assert "usage:" not in err


def test_every_number_flag_is_range_checked():
    """No option of any command is a bare int or float: each goes through neumours.cli.options.number."""
    import argparse

    from neumours.cli.main import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    bare = [f"{name} {action.option_strings or action.dest}" for name, parser in sub.choices.items()
            for action in parser._actions if action.type in (int, float)]
    assert bare == []


# --- refine --targets ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def refine_inputs(tmp_path_factory):
    from neumours.device import get_device
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.inr import INR

    root = tmp_path_factory.mktemp("refine")
    write_dataset(root / "data", 1, shape=(16, 16, 16), seed=2, progress=False)
    config = INRConfig.tiny()
    checkpoint = save_checkpoint(root / "model.safetensors", INR(config, get_device("cpu")).state_dict(), config)
    return root / "data" / "Phantom-00000-000", checkpoint


def _targets(folder: Path, **arrays) -> Path:
    folder.mkdir()
    np.savez(folder / "targets.npz", **arrays)
    return folder


@pytest.mark.parametrize("kind, message", [
    ("zero views", "at least 1 view"),
    ("zero pixels", "at least 1 view"),
    ("nan camera", "must be finite degrees"),
    ("elevation 400", "elevation must be in [-90, 90]"),
    ("text", "not a readable NumPy .npz archive"),
    ("broken zip", "not a readable NumPy .npz archive"),
    ("one array", "holds one array"),
    ("empty file", "not a readable NumPy .npz archive"),
    ("string images", "must hold numbers"),
    ("negative weights", "weights must be finite and >= 0"),
])
def test_bad_targets_file_is_one_line(refine_inputs, tmp_path, capsys, kind, message):
    case, checkpoint = refine_inputs
    zeros = np.zeros(2)
    folder = tmp_path / "targets"
    if kind == "zero views":
        _targets(folder, images=np.zeros((0, 8, 8, 3)), azimuth=np.zeros(0), elevation=np.zeros(0))
    elif kind == "zero pixels":
        _targets(folder, images=np.zeros((2, 0, 8, 3)), azimuth=zeros, elevation=zeros)
    elif kind == "nan camera":
        _targets(folder, images=np.zeros((2, 8, 8, 3)), azimuth=np.array([0.0, np.nan]), elevation=zeros)
    elif kind == "elevation 400":
        _targets(folder, images=np.zeros((2, 8, 8, 3)), azimuth=zeros, elevation=np.array([0.0, 400.0]))
    elif kind == "string images":
        _targets(folder, images=np.full((2, 8, 8, 3), "a"), azimuth=zeros, elevation=zeros)
    elif kind == "negative weights":
        _targets(folder, images=np.zeros((2, 8, 8, 3)), weights=-np.ones((2, 8, 8)), azimuth=zeros, elevation=zeros)
    else:
        folder.mkdir()
        file = folder / "targets.npz"
        if kind == "text":
            file.write_text("azimuth,elevation\n0,0\n")
        elif kind == "broken zip":
            np.savez(file, images=np.zeros((2, 8, 8, 3)), azimuth=zeros, elevation=zeros)
            data = file.read_bytes()
            file.write_bytes(data[:40] + bytes(64) + data[104:])  # the first member's header and data
            with zipfile.ZipFile(file) as archive:
                assert archive.testzip() is not None  # its checksum fails
        elif kind == "one array":
            with open(file, "wb") as f:
                np.save(f, np.zeros(3))
        else:
            file.write_bytes(b"")
    out = tmp_path / "refined.safetensors"
    one_line(["refine", case, "--checkpoint", checkpoint, "--targets", folder, "--out", out, "--device", "cpu"],
             capsys, tmp_path, "targets.npz", message)


# --- plot ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (np.random.default_rng(64).bytes(64) + b"\xff\xfe\x00", "not a metrics file"),  # seeded: xdist workers must collect alike
    (b"step,loss,ce\n10,0.5,nanx\n", "line 2, column ce: 'nanx' is not a number"),
    (b"step,loss\n10,inf\n", "line 2, column loss: inf is not a finite number"),
    (b"Hello, this is a text file\nnot metrics at all\n", "no metric rows"),
    (b"step,loss\n10,0.5,7\n", "line 2 has more values"),
    (b"step,loss\n,0.5\n", "every row needs a step"),
    (b"", "no metric rows"),
])
def test_bad_metrics_file_is_one_line(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(content)
    one_line(["plot", run], capsys, tmp_path, "metrics.csv", message)


def test_metrics_with_empty_and_nan_cells_still_plot(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss,ce,dice_mean,val_dice_mean\n10,0.9,0.5,0.2,\n20,0.8,0.4,0.3,nan\n"
                                     "30,0.7,0.3,0.4,0.5\n")
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").is_file()


def test_number_type_messages():
    from neumours.cli.options import finite_float, int_range

    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=r"must be in \(0, 240\], got 0.0"):
        finite_float(gt=0, max=240)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer, at least 1, got '1.5'"):
        int_range(1)("1.5")
    assert int_range(0, 9)("7") == 7 and finite_float(gt=0)("1e-3") == 1e-3
    assert Number(gt=0).range_text() == "> 0" and Number(ge=0, lt=1).range_text() == "in [0, 1)"


def test_edited_sweep_settings_are_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    import json

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"data": "d", "folds": -1, "search": "grid"}))
    one_line(["sweep", "--resume", sweep], capsys, tmp_path, "sweep.json", "folds must be at least 2")
    (sweep / "sweep.json").write_text(json.dumps({"data": "d", "folds": 2, "asha": "yes"}))
    one_line(["sweep", "--resume", sweep], capsys, tmp_path, "sweep.json", "asha must be true or false")
