"""`neumours sweep` on a real Ray instance (2 CPUs, no GPU): a grid over folds, resume after kill -9,
resume that never unpickles Tune's saved state, a failing trial among good ones, and trials placed on the GPUs that CUDA_VISIBLE_DEVICES shows.

One Ray instance serves most of the module (Ray takes seconds to start); the killed driver of the
resume test joins it with --address, as a driver on a cluster would. The GPU test's driver starts
its own local Ray, as `neumours sweep` does by default.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from neumours.cli.main import build_parser, main  # noqa: E402
from neumours.cli.train import resolve_config  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.train.config import TrainConfig, load_toml  # noqa: E402
from neumours.train.curves import plot_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GRID = "[optimizer]\nlr = { grid = [3e-3, 1e-2] }\n[sampler]\nforeground_ratio = { grid = [0.2, 0.5] }\n"
TINY = ["--preset", "tiny", "--folds", "2", "--steps", "20", "--val-every", "10", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 6, shape=(24, 24, 16), progress=False)
    return root


def sweep_args(dataset, space_file, out, *extra):
    return ["sweep", "--data", str(dataset), "--space", str(space_file), "--out", str(out), *TINY,
            "--cpus", "2", *map(str, extra)]


def read_results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def by_config(rows: list[dict]) -> dict:
    """(lr, foreground_ratio, fold) -> the row's validation Dice, for comparing two sweeps."""
    return {(r["optimizer.lr"], r["sampler.foreground_ratio"], r["fold"]): float(r["val_dice_mean"]) for r in rows}


@pytest.fixture(scope="module")
def grid_sweep(cluster, dataset, tmp_path_factory):
    """A 2 x 2 grid x 2 folds of the tiny preset, run to the end."""
    root = tmp_path_factory.mktemp("grid")
    (root / "space.toml").write_text(GRID)
    assert main(sweep_args(dataset, root / "space.toml", root / "sweep")) == 0
    return root / "sweep"


def test_grid_sweep_every_trial_and_fold(grid_sweep, dataset, capsys):
    rows = read_results(grid_sweep)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    assert {(r["optimizer.lr"], r["sampler.foreground_ratio"]) for r in rows} == \
        {("0.003", "0.2"), ("0.003", "0.5"), ("0.01", "0.2"), ("0.01", "0.5")}
    assert sorted(r["fold"] for r in rows) == ["0"] * 4 + ["1"] * 4
    for r in rows:  # each row is its fold's run folder: a normal run that trained every step
        run = grid_sweep / r["run_dir"]
        saved = load_toml(run / "config.toml", TrainConfig())
        assert (saved.optimizer.lr, saved.sampler.foreground_ratio) == (float(r["optimizer.lr"]),
                                                                         float(r["sampler.foreground_ratio"]))
        assert all((run / name).is_file() for name in ("best.safetensors", "last.safetensors", "split.json"))
        with open(run / "metrics.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        assert last["step"] == r["step"] == "20" and last["val_dice_mean"] == r["val_dice_mean"]
    assert plot_run(grid_sweep / rows[0]["run_dir"]).is_file()  # `neumours plot` works on a trial's fold
    assert (grid_sweep / "sweep.png").stat().st_size > 10_000


def test_grid_sweep_summary_ranks_and_best_config_loads(grid_sweep, dataset, tmp_path):
    rows = read_results(grid_sweep)
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r["trial"], []).append(float(r["val_dice_mean"]))
    expected = {t: sum(v) / len(v) for t, v in means.items()}
    table = [line.split("|") for line in (grid_sweep / "summary.md").read_text().splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(cells[1]) for cells in table] == [1, 2, 3, 4]
    shown = [float(cells[7].split("±")[0]) for cells in table]
    assert shown == sorted(shown, reverse=True)
    assert shown == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-4)
    best = table[0][2].strip()
    assert expected[best] == max(expected.values())
    args = build_parser().parse_args(["train", "--data", str(dataset), "--out", str(tmp_path / "run"),
                                      "--config", str(grid_sweep / "best_config.toml")])
    loaded = resolve_config(args)
    assert loaded == load_toml(grid_sweep / "trials" / best / "fold-0" / "config.toml", TrainConfig())


def test_resume_after_kill_does_not_redo_finished_trials(grid_sweep, cluster, dataset, tmp_path):
    # Two of the grid's configurations, one trial at a time (2 CPUs each): the driver is killed as
    # soon as the first has finished, while the second runs.
    (tmp_path / "space.toml").write_text("[optimizer]\nlr = { grid = [3e-3, 1e-2] }\n"
                                         "[sampler]\nforeground_ratio = { grid = [0.2] }\n")
    out = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    driver = subprocess.Popen([sys.executable, "-m", "neumours.cli.main",
                               *sweep_args(dataset, tmp_path / "space.toml", out, "--cpus-per-trial", "2",
                                           "--address", cluster)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("trials/*/result.json")):
            assert driver.poll() is None, driver.stderr.read().decode()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    done = {p.parent.name for p in out.glob("trials/*/result.json")}
    assert len(done) == 1
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for t in done for p in (out / "trials" / t).rglob("*")
              if p.is_file() and p.name != "status.json"}
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    rows = read_results(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stamps} == stamps  # the finished trial untouched
    uninterrupted = by_config(read_results(grid_sweep))
    assert by_config(rows) == {key: uninterrupted[key] for key in by_config(rows)}  # same numbers as without a kill


class Payload:
    """Unpickled, it creates ``marker`` (what a planted file could do with any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(tune_dir: Path, marker: Path) -> int:
    """Replace every pickle Tune keeps under ``tune_dir`` (``*.pkl``, its searcher state, the trials'
    CLOUDPICKLE_FALLBACK values in ``experiment_state-*.json``) with :class:`Payload`; returns how many."""
    payload = pickle.dumps(Payload(marker))
    planted = 0
    for path in [p for p in tune_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        if data[:1] == b"\x80":  # a pickle, whatever its name
            path.write_bytes(payload)
            planted += 1
        elif b"CLOUDPICKLE_FALLBACK" in data:
            text, n = re.subn(r'(CLOUDPICKLE_FALLBACK\\*"\s*,\s*\\*"value\\*"\s*:\s*\\*")[0-9a-f]+',
                              lambda m: m.group(1) + payload.hex(), data.decode())
            path.write_text(text)
            planted += n
    return planted


def test_resume_never_unpickles_tune_state(cluster, dataset, tmp_path):
    (tmp_path / "space.toml").write_text("[optimizer]\nlr = { grid = [3e-3, 1e-2] }\n")
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(dataset), "--space", str(tmp_path / "space.toml"), "--out", str(out),
                 "--preset", "tiny", "--folds", "2", "--steps", "4", "--val-every", "2", "--device", "cpu",
                 "--quiet", "--cpus", "2"]) == 0
    first, second = sorted(p for p in (out / "trials").iterdir())
    (second / "result.json").unlink()  # the second as if interrupted at its end: --resume continues it
    (second / "status.json").unlink()
    # Tune's state where a launch keeps it, and where `Tuner.restore(SWEEP/tune)` looked before.
    legacy = out / "tune"
    for path in (legacy / "launch-1").iterdir():
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, legacy / path.name)
    marker = tmp_path / "payload-ran"
    assert plant(legacy, marker) >= 4
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    assert not marker.exists()  # nothing of Tune's was unpickled
    rows = read_results(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {r["trial"] for r in rows} == {first.name, second.name}  # the interrupted trial in its own folder
    assert (legacy / "launch-2").is_dir()  # a new Tune experiment
    for fold in second.glob("fold-*"):  # continued from its checkpoints: no step trained twice
        steps = [row["step"] for row in csv.DictReader(open(fold / "metrics.csv", newline=""))]
        assert len(steps) == len(set(steps))
    # The test can fail: Tune's own restore of the planted folder runs the payload.
    try:
        ray.tune.Tuner.restore(str(legacy), lambda config: None)
    except Exception:
        pass
    assert marker.exists()


def test_failing_trials_are_reported_and_the_rest_finish(cluster, dataset, tmp_path, capsys):
    space = tmp_path / "space.toml"
    # A negative learning rate is refused before the sweep starts (tests/test_user_values.py); a huge one
    # is a valid setting whose trial diverges.
    space.write_text("[optimizer]\nlr = { grid = [1e-2, 1e30] }\nwarmup_steps = { grid = [1] }\n")
    assert main(sweep_args(dataset, space, tmp_path / "sweep")) == 0
    rows = read_results(tmp_path / "sweep")
    status = {r["optimizer.lr"]: (r["status"], r["error"]) for r in rows}
    assert len(rows) == 4 and status["0.01"] == ("finished", "")
    assert status["1e+30"][0] == "failed" and "the loss is not finite" in status["1e+30"][1]
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "## Failed trials" in summary and "the loss is not finite" in summary
    best = load_toml(tmp_path / "sweep" / "best_config.toml", TrainConfig())
    assert best.optimizer.lr == 0.01
    assert "1 failed" in capsys.readouterr().out


def test_trials_use_every_gpu_that_cuda_visible_devices_shows(dataset, tmp_path):
    # A machine whose nvidia-smi lists 4 GPUs, of which CUDA_VISIBLE_DEVICES exposes 3 and 1: Ray must
    # be started with those two, and two trials running at once get one each (the trials themselves
    # train on the CPU device, so no real GPU is needed; Ray only hands out the ids).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-fake{i})'\n" for i in range(4)))
    fake.chmod(0o755)
    (tmp_path / "space.toml").write_text("[optimizer]\nlr = { grid = [3e-3, 1e-2] }\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3,1", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "neumours.cli.main", "sweep", "--data", str(dataset), "--space",
               str(tmp_path / "space.toml"), "--out", str(out), "--preset", "tiny", "--folds", "2", "--steps", "4",
               "--val-every", "2", "--device", "cpu", "--quiet", "--cpus", "2"]
    too_many = subprocess.run([*command, "--gpus", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert too_many.returncode == 2 and not out.exists()
    assert too_many.stderr == ("neumours: error: --gpus 3: found 2 GPUs "
                               "(nvidia-smi lists 4; CUDA_VISIBLE_DEVICES='3,1')\n")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    rows = read_results(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    placed = [json.loads(p.read_text())["gpus"] for p in sorted(out.glob("trials/*/trial.json"))]
    assert sorted(placed) == [["1"], ["3"]]  # a whole GPU each (--trials-per-gpu 1), both GPUs used


@pytest.mark.gpu
def test_trials_share_a_real_gpu(cuda_device, dataset, tmp_path):
    # Two trials at --trials-per-gpu 2 on the first GPU, training on cuda in Ray's worker processes:
    # both get the same GPU id (half a GPU each) and finish, with scores like the CPU sweeps'.
    (tmp_path / "space.toml").write_text("[optimizer]\nlr = { grid = [3e-3, 1e-2] }\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0],
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)
    env.pop("NEUMOURS_DEVICE", None)
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "neumours.cli.main", "sweep", "--data", str(dataset),
                           "--space", str(tmp_path / "space.toml"), "--out", str(out), "--preset", "tiny",
                           "--folds", "2", "--steps", "40", "--val-every", "20", "--trials-per-gpu", "2",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = read_results(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert all(0.0 < float(r["val_dice_mean"]) <= 1.0 for r in rows)
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/trial.json"))]
    assert [i["device"] for i in infos] == ["cuda", "cuda"]
    assert [len(i["gpus"]) for i in infos] == [1, 1] and infos[0]["gpus"] == infos[1]["gpus"]
