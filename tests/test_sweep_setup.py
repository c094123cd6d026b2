"""`neumours sweep` before Ray starts: the search space, the folds, the GPU count, and one-line errors."""

from __future__ import annotations

import json
import sys

import pytest

from neumours.cli.main import main
from neumours.data import kfold, list_cases
from neumours.data.phantom import write_dataset
from neumours.errors import NeumoursError
from neumours.sweep import resources
from neumours.sweep.folds import fold_cases, make_folds
from neumours.sweep.space import apply, flat_values, parse_space
from neumours.train.config import preset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 5, shape=(24, 24, 16), progress=False)
    return root


def test_space_keys_and_tune_domains():
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space({"optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}, "name": {"choice": ["adamw", "muon"]}},
                         "network": {"num_freqs": {"grid": [32, 64]}, "hidden_width": {"uniform": [16, 64]}},
                         "loss": {"class_weights": {"grid": [[1, 1, 1, 1], [2, 1, 1, 1]]}}})
    assert space.names == ["optimizer.lr", "optimizer.name", "network.num_freqs", "network.hidden_width",
                           "loss.class_weights"]
    random = space.tune_space("random")
    assert isinstance(random["optimizer"]["lr"], Float) and isinstance(random["optimizer"]["name"], Categorical)
    assert isinstance(random["network"]["hidden_width"], Integer)  # an int key draws integers
    assert isinstance(random["network"]["num_freqs"], Categorical)  # a grid list is drawn like a choice
    assert space.num_trials("random", 7) == 7
    grid = parse_space({"network": {"num_freqs": {"grid": [32, 64, 128]}},
                        "loss": {"class_weights": {"grid": [[1, 1, 1, 1], [2, 1, 1, 1]]}}})
    assert grid.tune_space("grid")["network"]["num_freqs"] == tune.grid_search([32, 64, 128])
    assert grid.num_trials("grid", 1) == 6
    config = apply(preset("tiny"), {"loss": {"class_weights": [2, 1, 1, 1]}, "network": {"num_freqs": 128}})
    assert config.loss.class_weights == (2, 1, 1, 1) and config.network.num_freqs == 128
    assert flat_values({"network": {"num_freqs": 32}}, grid) == {"network.num_freqs": 32, "loss.class_weights": None}


@pytest.mark.parametrize("data, message", [
    ({"optimiser": {"lr": {"grid": [1]}}}, "unknown section [optimiser]"),
    ({"optimizer": {"lrr": {"grid": [1]}}}, "unknown key 'lrr' in [optimizer]"),
    ({"optimizer": {"lr": 0.1}}, "expected one of"),
    ({"optimizer": {"lr": {"grid": []}}}, "non-empty list"),
    ({"optimizer": {"lr": {"uniform": [0.1]}}}, "two numbers"),
    ({"optimizer": {"lr": {"loguniform": [0.0, 1.0]}}}, "lo > 0"),
    ({"optimizer": {"lr": {"uniform": [1.0, 0.5]}}}, "lo < hi"),
    ({"optimizer": {"name": {"uniform": [1, 2]}}}, "numeric key"),
    ({"optimizer": {"lr": {"grid": [0.1, 0.1]}}}, "twice"),
    ({}, "no swept keys"),
])
def test_bad_space_is_an_error(data, message):
    with pytest.raises(NeumoursError, match="space") as exc:
        parse_space(data, source="space")
    assert message in str(exc.value)


def test_grid_search_needs_grid_lists():
    space = parse_space({"optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}}})
    with pytest.raises(NeumoursError, match="need --search random or optuna"):
        space.check_search("grid")
    space.check_search("random")


def test_folds_are_kfold_of_the_labelled_cases(dataset):
    folds = make_folds(dataset, 2, seed=3)
    refs = list_cases(dataset)
    assert folds == [([r.case_id for r in t], [r.case_id for r in v]) for t, v in kfold(refs, 2, 3)]
    train, val = fold_cases(dataset, folds[1])
    assert [r.case_id for r in val] == folds[1][1] and not set(folds[1][0]) & set(folds[1][1])
    with pytest.raises(NeumoursError, match="at least 6 labelled cases, found 5"):
        make_folds(dataset, 6, seed=0)


@pytest.mark.parametrize("environ, physical, visible", [
    ({}, 2, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "1"}, 2, ["1"]),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, 1, ["0"]),      # index 1 does not exist: CUDA stops there
    ({"CUDA_VISIBLE_DEVICES": "1,-1,0"}, 2, ["1"]),   # -1 hides the rest
    ({"CUDA_VISIBLE_DEVICES": ""}, 4, []),
    ({"CUDA_VISIBLE_DEVICES": "GPU-3f2a,GPU-77c1"}, 8, ["GPU-3f2a", "GPU-77c1"]),
    ({}, 0, []),
])
def test_visible_gpus_read_like_cuda(environ, physical, visible):
    assert resources.visible_gpus(physical, environ) == visible


def test_gpu_plan():
    plan = resources.plan_resources(None, 2, trials_per_gpu=4, cpus_per_trial=2, found="2 GPUs")
    assert plan.gpus == 2 and plan.per_trial() == {"cpu": 2, "gpu": 0.25}
    assert resources.plan_resources(None, 0, 4, 1, "0 GPUs").per_trial() == {"cpu": 1, "gpu": 0.0}
    assert resources.plan_resources(0, 3, 2, 1, "3 GPUs").gpu_per_trial == 0.0
    with pytest.raises(NeumoursError, match="--gpus 2: found 1 GPU"):
        resources.plan_resources(2, 1, 1, 1, resources.describe_visible(["0"], 1, {"CUDA_VISIBLE_DEVICES": "0"}))


def _sweep_args(dataset, tmp_path, *extra):
    space = tmp_path / "space.toml"
    if not space.exists():
        space.write_text("[optimizer]\nlr = { grid = [1e-2, 3e-2] }\n")
    return ["sweep", "--data", str(dataset), "--space", str(space), "--folds", "2", "--out",
            str(tmp_path / "sweep"), "--preset", "tiny", *map(str, extra)]


def _one_line_error(capsys, args, message, tmp_path):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumours: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweep").exists()  # checked before anything is written


def test_more_gpus_than_found_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "physical_gpus", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    _one_line_error(capsys, _sweep_args(dataset, tmp_path, "--gpus", "2"),
                    "--gpus 2: found 1 GPU (nvidia-smi lists 1; CUDA_VISIBLE_DEVICES='0')", tmp_path)


@pytest.mark.parametrize("space, extra, message", [
    ("[optimizer]\nlrr = { grid = [1e-2] }\n", [], "unknown key 'lrr' in [optimizer]"),
    ("[optimizer]\nlr = { uniform = [1e-3, 1e-2] }\n", [], "need --search random or optuna"),
    ("[optimizer]\nlr = [1e-3\n", [], "not a valid TOML file"),
    ("[optimizer]\nlr = { grid = [1e-2] }\n", ["--folds", "9"], "--folds 9 needs at least 9 labelled cases"),
    ("[optimizer]\nlr = { grid = [1e-2] }\n", ["--steps", "0"], "--steps must be at least 1"),
    ("[optimizer]\nlr = { grid = [1e-2] }\n", ["--trials-per-gpu", "0"], "--trials-per-gpu must be at least 1"),
])
def test_bad_sweep_input_is_one_line(dataset, tmp_path, capsys, space, extra, message):
    (tmp_path / "space.toml").write_text(space)
    _one_line_error(capsys, _sweep_args(dataset, tmp_path, *extra), message, tmp_path)


def test_out_must_be_new_and_resume_takes_no_settings(dataset, tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    assert main(_sweep_args(dataset, tmp_path)) == 2
    assert "the sweep folder is not empty" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path / "sweep")]) == 2
    assert "not a sweep folder (sweep.json is missing)" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path / "sweep"), "--steps", "5", "--folds", "3"]) == 2
    assert "drop --folds, --steps" in capsys.readouterr().err
    assert (tmp_path / "sweep" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "sweep").iterdir())) == 1


def test_without_ray_one_line_how_to_install(dataset, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    _one_line_error(capsys, _sweep_args(dataset, tmp_path), "pip install 'neumours[sweep]'", tmp_path)


def test_optuna_search_without_optuna_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    (tmp_path / "space.toml").write_text("[optimizer]\nlr = { loguniform = [1e-3, 1e-2] }\n")
    _one_line_error(capsys, _sweep_args(dataset, tmp_path, "--search", "optuna"),
                    "--search optuna needs Optuna: pip install optuna", tmp_path)


def test_configurations_of_grid_and_random_search_are_fixed_by_the_seed():
    space = parse_space({"optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}, "name": {"choice": ["adamw", "muon"]}},
                         "network": {"hidden_width": {"uniform": [16, 64]}, "num_freqs": {"grid": [32, 64]}}})
    drawn = space.configurations("random", 20, seed=3)
    assert len(drawn) == 20 and drawn == space.configurations("random", 20, seed=3)
    assert drawn != space.configurations("random", 20, seed=4)
    assert json.loads(json.dumps(drawn)) == drawn  # what configurations.json holds, read back equal
    for c in drawn:
        assert 1e-4 <= c["optimizer"]["lr"] <= 1e-2 and c["optimizer"]["name"] in ("adamw", "muon")
        assert isinstance(c["network"]["hidden_width"], int) and 16 <= c["network"]["hidden_width"] <= 64
        assert c["network"]["num_freqs"] in (32, 64)
    assert len({c["optimizer"]["lr"] for c in drawn}) == 20
    grid = parse_space({"network": {"num_freqs": {"grid": [32, 64]}},
                        "loss": {"class_weights": {"grid": [[1, 1, 1, 1], [2, 1, 1, 1]]}}})
    assert grid.configurations("grid", 1, seed=0) == [
        {"network": {"num_freqs": f}, "loss": {"class_weights": w}}
        for f in (32, 64) for w in ([1, 1, 1, 1], [2, 1, 1, 1])]
    assert space.configurations("optuna", 5, seed=0) is None  # Optuna proposes as it goes


def test_resume_plans_from_the_sweep_folder_files(dataset, tmp_path):
    from neumours.sweep.runner import new_sweep, plan_launch
    from neumours.sweep.settings import SweepSettings, save_sweep
    from neumours.sweep.trainable import POINT

    space = tmp_path / "space.toml"
    space.write_text("[optimizer]\nlr = { grid = [1e-2, 2e-2, 3e-2] }\n[sampler]\nforeground_ratio = { grid = [0.2, 0.5] }\n")
    sweep = new_sweep(tmp_path / "sweep", space, preset("tiny"), SweepSettings(data=str(dataset), folds=2))
    save_sweep(sweep, space)
    plan = json.loads((sweep.out / "configurations.json").read_text())
    assert len(plan) == 6 and plan[1] == {"optimizer": {"lr": 1e-2}, "sampler": {"foreground_ratio": 0.5}}

    def trial(name, config, *files):
        folder = sweep.out / "trials" / name
        folder.mkdir(parents=True)
        (folder / "trial.json").write_text(json.dumps({"trial_id": name, "config": config}))
        for file in files:
            (folder / file).write_text("written by the trial\n")

    trial("a_00000", plan[0], "result.json")  # finished
    trial("a_00001", plan[1], "error.txt")  # failed: final
    trial("a_00002", plan[2])  # interrupted: continues in its folder
    (sweep.out / "trials" / "a_00003").mkdir()  # killed before its trial.json: nothing to continue
    launch = plan_launch(sweep)
    assert launch.ended == {"a_00000", "a_00001"} and launch.proposed == 0
    assert [p[POINT] for p in launch.points] == \
        [{"config": plan[2], "folder": "a_00002"}] + [{"config": c, "folder": None} for c in plan[3:]]
    assert not (sweep.out / "trials" / "a_00003").exists()
