"""Issue 30 (files a user or an attacker hands in): nothing is unpickled, a run resumes only on its own data,
and a checkpoint, case or file that cannot be used is refused in one line before any work.

Each refusal goes through the real CLI (exit 2, one ``neumours: error:`` line naming the file, nothing
written: :func:`expect_one_line`). The inputs are real: phantom cases, a two-step tiny training run,
checkpoints written by :func:`save_checkpoint`, and a real pickle payload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neumours.cli.main import main
from neumours.data.phantom import write_dataset
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.reference import TorchINR
from neumours.train import checkpoints
from neumours.train.state_files import StateFormatError, decode, encode
from test_bad_outputs_and_geometry import expect_one_line  # noqa: E402 - the shared one-line check

CONFIG = INRConfig.tiny()
SHAPE = (24, 24, 16)


@pytest.fixture(scope="module")
def world(module_world):
    """Three phantom cases (SHAPE, seed 11), a finished two-step tiny run on them (conftest's
    phantom world, copied for this module), a tiny checkpoint."""
    root, cases = module_world["root"], module_world["cases"]
    ckpt = save_checkpoint(root / "tiny.safetensors", TorchINR(CONFIG).state_dict(), CONFIG)
    return {"root": root, "data": root / "data", "run": root / "run", "case": cases[0], "ckpt": ckpt}


def copy_run(world, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    return run


def resume(world, run, *extra, data=None):
    return ["train", "--data", data or world["data"], "--resume", run, "--steps", "4", "--device", "cpu", *extra]


# --- no pickle: the state is safetensors + JSON, and round-trips exactly -----------------------------------

def _optimizers(name: str, params):
    matrices = [p for p in params if p.ndim == 2]
    if name == "muon":
        return [torch.optim.Muon(matrices, lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW([p for p in params if p.ndim != 2], lr=0.01, betas=(0.9, 0.95))]
    return [torch.optim.AdamW(params, lr=0.01, betas=(0.9, 0.95), weight_decay=0.01)]


def _step(optimizers, params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    for o in optimizers:
        o.step()


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimiser_state_round_trips_exactly_through_safetensors_and_json(name):
    """Step, save through encode/JSON/safetensors, load into fresh optimisers, step both: identical bits."""
    from safetensors.torch import load as load_tensors, save as save_tensors

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(6)),
              torch.nn.Parameter(torch.randn(4, 8))]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizers, others = _optimizers(name, params), _optimizers(name, twin)
    for seed in range(3):
        _step(optimizers, params, seed)
    saved = [o.state_dict() for o in optimizers]
    rng = np.random.default_rng(5)
    tree = {"optimizers": saved, "sampler": rng.bit_generator.state, "best": -1.0, "best_step": None,
            "rows": [{"step": 2, "loss": 0.5, "lr": 1e-3}], "f32": np.float32(0.1), "inf": float("inf")}
    data, tensors = encode(tree)
    back = decode(json.loads(json.dumps(data, allow_nan=False)), load_tensors(save_tensors(tensors)))
    assert back["sampler"] == tree["sampler"] and back["rows"] == tree["rows"] and back["inf"] == float("inf")
    assert type(back["f32"]) is np.float32 and back["f32"] == tree["f32"]
    for want, got in zip(saved, back["optimizers"]):
        assert want["param_groups"] == got["param_groups"]  # tuples (betas), strings, None, floats
        assert list(want["state"]) == list(got["state"])  # integer keys stay integers
        for key, values in want["state"].items():
            for field, value in values.items():
                assert torch.equal(got["state"][key][field], value) and got["state"][key][field].dtype == value.dtype
    for other, state in zip(others, back["optimizers"]):
        for p, q in zip(twin, params):
            p.data.copy_(q.data)
        other.load_state_dict(state)
    for seed in range(3, 6):
        _step(optimizers, params, seed)
        _step(others, twin, seed)
    for p, q in zip(params, twin):
        assert torch.equal(p, q)


@pytest.mark.parametrize("data", [{"__reduce__": "os.system"}, {"__tensor__": "t9"}, {"__items__": [[[1], 2]]},
                                  {"__numpy__": "object", "value": 1}, {"__float__": "1e999x"}])
def test_state_decoding_refuses_what_it_never_writes(data):
    with pytest.raises(StateFormatError):
        decode(data, {})


class _Payload:
    """Unpickling this creates ``marker``: what a crafted state file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_payload(path: Path, marker: Path) -> None:
    torch.save({"step": 2, "best": 0.5, "x": _Payload(marker)}, path)
    probe = path.with_name("probe.pt")  # the payload is real: an unrestricted load runs it
    shutil.copy(path, probe)
    torch.load(probe, weights_only=False)
    assert marker.exists()
    marker.unlink()
    probe.unlink()


def _as_old_format(run: Path) -> Path:
    """Rewrite the run's committed state as the state.pt of checkpoint format 1 (what earlier versions wrote)."""
    from safetensors.torch import load_file

    manifest = json.loads((run / "checkpoint.json").read_text())
    folder = run / manifest["folder"]
    state = decode(json.loads((folder / "state.json").read_text()), load_file(str(folder / "state.safetensors")))
    torch.save(state, folder / "state.pt")
    for name in ("state.json", "state.safetensors"):
        (folder / name).unlink()
        del manifest["files"][name]
    manifest["files"]["state.pt"] = checkpoints.sha256(folder / "state.pt")
    manifest["format"] = "neumours-run-checkpoint/1"
    (run / "checkpoint.json").write_text(json.dumps(manifest))
    return folder / "state.pt"


def test_a_run_of_the_earlier_format_still_resumes(world, capsys, tmp_path):
    """Its state.pt holds tensors and plain values only: torch's restricted loader reads it."""
    run = copy_run(world, tmp_path)
    _as_old_format(run)
    assert main([str(a) for a in resume(world, run)]) == 0
    manifest = json.loads((run / "checkpoint.json").read_text())
    assert manifest["step"] == 4 and "state.json" in manifest["files"]  # committed in the new format from now on


def test_a_pickle_payload_in_the_step_state_never_runs(world, capsys, tmp_path):
    """state.pt of the earlier checkpoint format, with the manifest's SHA-256 updated to match."""
    run = copy_run(world, tmp_path)
    marker = tmp_path / "payload-ran"
    manifest = json.loads((run / "checkpoint.json").read_text())
    folder = run / manifest["folder"]
    _plant_payload(folder / "state.pt", marker)
    files = {k: v for k, v in manifest["files"].items() if not k.startswith("state.")}
    files["state.pt"] = checkpoints.sha256(folder / "state.pt")
    manifest.update(format="neumours-run-checkpoint/1", files=files)
    (run / "checkpoint.json").write_text(json.dumps(manifest))
    expect_one_line(resume(world, run), capsys, world, [folder / "state.pt", "never unpickled"],
                    extra_roots=[tmp_path])
    assert not marker.exists()


def test_a_pickle_payload_in_a_run_of_the_earliest_format_never_runs(world, capsys, tmp_path):
    """last.safetensors + last.state.pt, no manifest: the state is read with torch's restricted loader."""
    run = copy_run(world, tmp_path)
    marker = tmp_path / "payload-ran"
    shutil.copy(run / "last.safetensors", tmp_path / "keep.safetensors")
    checkpoints.remove_run(run)
    shutil.copy(world["run"] / "config.toml", run / "config.toml")
    shutil.copy(tmp_path / "keep.safetensors", run / "last.safetensors")
    (tmp_path / "keep.safetensors").unlink()
    _plant_payload(run / "last.state.pt", marker)
    expect_one_line(resume(world, run), capsys, world, [run / "last.state.pt", "never unpickled"],
                    extra_roots=[tmp_path])
    assert not marker.exists()


def test_no_unrestricted_unpickling_in_the_package():
    """No torch.load without weights_only=True, no pickle.load(s), no np.load(allow_pickle=True)."""
    import re

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [*(root / "neumours").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"torch\.load\((?![^)]*weights_only=True)|pickle\.loads?\(|allow_pickle\s*=\s*True", line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, found


# --- malformed checkpoint.json: one line naming it ------------------------------------------------------

@pytest.mark.parametrize("damage", ["list", "best-5", "no-step", "step-str", "folder-elsewhere", "files-list"])
def test_a_malformed_manifest_is_one_line_naming_it(world, capsys, tmp_path, damage):
    run = copy_run(world, tmp_path)
    manifest = json.loads((run / "checkpoint.json").read_text())
    if damage == "list":
        manifest = [manifest]
    elif damage == "best-5":
        manifest["best"] = 5
    elif damage == "no-step":
        del manifest["step"]
    elif damage == "step-str":
        manifest["step"] = "2"
    elif damage == "folder-elsewhere":
        manifest["folder"] = "../../elsewhere"
    else:
        manifest["files"] = list(manifest["files"])
    (run / "checkpoint.json").write_text(json.dumps(manifest))
    expect_one_line(resume(world, run), capsys, world, [run / "checkpoint.json", "malformed"], extra_roots=[tmp_path])


@pytest.mark.parametrize("damage", [{"step": "2"}, {"rows": 5}, {"sampler": [1]}, {"pool": {"refreshes": 10**12}},
                                    {"sampler": {"bit_generator": "PCG64", "state": "x"}}, {"data": {"train": 3}}])
def test_a_state_with_wrong_entries_is_one_line(world, capsys, tmp_path, damage):
    """state.json edited (valid JSON) and its SHA-256 in the manifest updated: refused, not a traceback."""
    run = copy_run(world, tmp_path)
    manifest = json.loads((run / "checkpoint.json").read_text())
    path = run / manifest["folder"] / "state.json"
    state = json.loads(path.read_text())
    state.update(damage)
    path.write_text(json.dumps(state))
    manifest["files"]["state.json"] = checkpoints.sha256(path)
    (run / "checkpoint.json").write_text(json.dumps(manifest))
    expect_one_line(resume(world, run), capsys, world, [run, "cannot resume"], extra_roots=[tmp_path])


# --- --resume on the run's own data only -----------------------------------------------------------------

def test_resume_refuses_other_case_ids(world, capsys, tmp_path):
    run = copy_run(world, tmp_path)
    other = tmp_path / "other"
    write_dataset(other, 4, shape=SHAPE, seed=11, progress=False)
    err = expect_one_line(resume(world, run, data=other), capsys, world, [other, run, "--resume-new-data"],
                          extra_roots=[tmp_path])
    assert "new" in err


def test_resume_refuses_the_same_ids_with_other_headers(world, capsys, tmp_path):
    run = copy_run(world, tmp_path)
    other = tmp_path / "other"
    write_dataset(other, 3, shape=(24, 24, 20), seed=11, progress=False)
    err = expect_one_line(resume(world, run, data=other), capsys, world, [other, run], extra_roots=[tmp_path])
    assert "headers" in err


def test_resume_new_data_continues_with_a_new_best(world, capsys, tmp_path):
    run = copy_run(world, tmp_path)
    other = tmp_path / "other"
    write_dataset(other, 4, shape=SHAPE, seed=12, progress=False)
    assert main([str(a) for a in resume(world, run, "--resume-new-data", data=other)]) == 0
    manifest = json.loads((run / "checkpoint.json").read_text())
    assert manifest["step"] == 4 and manifest["best"]["step"] == 4  # the best of the old data is forgotten
    state = json.loads((run / manifest["folder"] / "state.json").read_text())
    assert state["data"]["data"] == str(other) and len(state["data"]["train"]) + len(state["data"]["val"]) == 4
    # ... and from now on the run's data is the new one
    capsys.readouterr()
    expect_one_line(["train", "--data", world["data"], "--resume", run, "--steps", "6", "--device", "cpu"],
                    capsys, world, [run, "--resume-new-data"], extra_roots=[tmp_path])


def test_resume_new_data_needs_resume(world, capsys, tmp_path):
    expect_one_line(["train", "--data", world["data"], "--out", tmp_path / "new", "--resume-new-data",
                     "--preset", "tiny", "--device", "cpu"], capsys, world, ["--resume-new-data"],
                    extra_roots=[tmp_path])


# --- checkpoints that do not fit the data: refused before inference, naming both ---------------------------

def _checkpoint(path: Path, config: INRConfig, head: float | None = None) -> Path:
    state = TorchINR(config).state_dict()
    if head is not None:
        state["head.weight"] = torch.full_like(state["head.weight"], head)
    return save_checkpoint(path, state, config)


@pytest.mark.parametrize("field,value,words", [("num_modalities", 2, "reads 2 modalities"),
                                               ("num_classes", 7, "gives 7 classes")])
def test_a_checkpoint_that_does_not_fit_the_cases_is_refused_before_inference(world, capsys, tmp_path, field, value,
                                                                              words):
    import dataclasses

    ckpt = _checkpoint(tmp_path / "other.safetensors", dataclasses.replace(CONFIG, **{field: value}))
    out = tmp_path / "out"
    for args in (["segment", world["case"], "--checkpoint", ckpt, "--out", out / "seg.nii.gz"],
                 ["segment", world["data"], "--checkpoint", ckpt, "--out", out],
                 ["evaluate", "--checkpoint", ckpt, "--data", world["data"], "--out", out, "--quiet"],
                 ["render", world["case"], "--checkpoint", ckpt, "--out", out / "r.png", "--size", "16x16"],
                 ["refine", world["case"], "--checkpoint", ckpt, "--out", out / "r.safetensors", "--from-labels",
                  next(Path(world["case"]).glob("*-seg.nii.gz")), "--views", "1", "--steps", "1", "--size", "8x8"]):
        expect_one_line([*args, "--device", "cpu"], capsys, world, [ckpt, args[1] if args[0] != "evaluate"
                                                                    else world["data"], words],
                        extra_roots=[tmp_path])
        assert not out.exists()


def test_weights_that_overflow_are_an_error_naming_the_checkpoint(world, capsys, tmp_path):
    """A finite head weight of 3e38: NaN/Inf logits, which used to give all-background labels and exit 0."""
    ckpt = _checkpoint(tmp_path / "overflow.safetensors", CONFIG, head=3e38)
    out = tmp_path / "seg.nii.gz"
    for extra in ([], ["--probs", tmp_path / "p.nii.gz"]):
        expect_one_line(["segment", world["case"], "--checkpoint", ckpt, "--out", out, "--device", "cpu", "--quiet",
                         *extra], capsys, world, [ckpt, "NaN or Inf"], extra_roots=[tmp_path])
    assert not out.exists() and not (tmp_path / "p.nii.gz").exists()


def check_nonfinite_flag(device, rng) -> None:
    """The CHECK_FINITE flag of the arg-max kernel against numpy's isfinite; the labels are those without it."""
    from neumours.device import download, upload
    from neumours.kernels.probabilities import argmax_labels

    n = 200
    for bad in (None, np.nan, np.inf, -np.inf):
        logits = rng.normal(scale=5, size=(n, 4)).astype(np.float32)
        if bad is not None:
            logits[rng.integers(n), rng.integers(4)] = bad
        flag = upload(device, np.zeros(1, np.uint32), np.uint32)
        labels, flagless = (upload(device, np.zeros(n, np.uint32), np.uint32) for _ in range(2))
        argmax_labels(device, upload(device, logits), labels, 0, n, n, 4, nonfinite=flag)
        assert bool(download(flag, (1,), np.uint32)[0]) == (not np.isfinite(logits).all())
        argmax_labels(device, upload(device, logits), flagless, 0, n, n, 4)
        np.testing.assert_array_equal(download(labels, (n,), np.uint32), download(flagless, (n,), np.uint32))


def test_argmax_kernel_flags_nonfinite_logits_as_numpy_does(cpu_device, rng):
    check_nonfinite_flag(cpu_device, rng)


@pytest.mark.gpu
def test_argmax_kernel_flags_nonfinite_logits_on_the_gpu(cuda_device, rng):
    """The same on CUDA, where a fast-math compiler could fold isfinite away."""
    check_nonfinite_flag(cuda_device, rng)


# --- hostile sizes in metadata, long messages, long names, huge shapes -------------------------------------

def _checkpoint_with_config(path: Path, **fields) -> Path:
    from safetensors.numpy import save_file

    from neumours.model.checkpoint import CHECKPOINT_FORMAT

    state = {k: v.numpy() for k, v in TorchINR(CONFIG).state_dict().items()}
    text = json.dumps({**CONFIG.to_dict(), **{k: "@" for k in fields}})
    for key, value in fields.items():  # as JSON numbers, however long
        text = text.replace(f'"{key}": "@"', f'"{key}": {value}')
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT, "config": text})
    return path


@pytest.mark.parametrize("fields", [{"hidden_layers": 200_000}, {"hidden_width": 10**9},
                                    {"num_freqs": "1" + "0" * 5000}])
def test_metadata_declaring_absurd_sizes_is_one_short_line(world, capsys, tmp_path, fields):
    ckpt = _checkpoint_with_config(tmp_path / "absurd.safetensors", **fields)
    err = expect_one_line(["segment", world["case"], "--checkpoint", ckpt, "--out", tmp_path / "s.nii.gz",
                           "--device", "cpu"], capsys, world, [ckpt, "invalid config"], extra_roots=[tmp_path])
    assert len(err) < 600


def test_many_missing_tensors_are_counted_not_listed(world, capsys, tmp_path):
    ckpt = _checkpoint_with_config(tmp_path / "deep.safetensors", hidden_layers=64)
    err = expect_one_line(["segment", world["case"], "--checkpoint", ckpt, "--out", tmp_path / "s.nii.gz",
                           "--device", "cpu"], capsys, world, [ckpt, "more"], extra_roots=[tmp_path])
    assert len(err) < 600


def test_error_lines_are_cut_to_a_readable_length():
    from neumours.cli.main import MAX_ERROR_CHARS, error_line
    from neumours.errors import NeumoursError

    line = error_line(NeumoursError("x: " + "name, " * 1_000_000 + "\nsecond line"))
    assert len(line) < MAX_ERROR_CHARS + 100 and "\n" not in line and "6,000,015 characters" in line


def test_a_legal_long_output_name_is_written_and_a_too_long_one_is_one_line(world, capsys, tmp_path):
    legal = tmp_path / ("a" * 248 + ".nii.gz")  # 255 bytes: the longest name the file system takes
    capsys.readouterr()
    assert main(["segment", str(world["case"]), "--checkpoint", str(world["ckpt"]), "--out", str(legal),
                 "--device", "cpu", "--quiet"]) == 0
    assert legal.is_file() and [p.name for p in tmp_path.iterdir()] == [legal.name]  # no temporary left
    too_long = tmp_path / ("b" * 293 + ".nii.gz")
    for args in (["segment", world["case"], "--checkpoint", world["ckpt"], "--out", too_long],
                 ["segment", world["case"], "--checkpoint", too_long, "--out", tmp_path / "s.nii.gz"],
                 ["segment", too_long, "--checkpoint", world["ckpt"], "--out", tmp_path / "s.nii.gz"],
                 ["train", "--data", world["data"], "--out", tmp_path / "run", "--config", too_long]):
        expect_one_line([*args, "--device", "cpu"], capsys, world, ["file name too long"], extra_roots=[tmp_path])


def test_temporary_names_fit_the_name_limit_and_are_recognised_as_their_targets(tmp_path):
    import os

    from neumours.atomic import atomic_write_bytes, is_temporary, remove_stale_temporaries, temporary_name

    target = tmp_path / ("c" * 248 + ".nii.gz")
    tmp = temporary_name(target, pid=2**22 + 1)  # a pid that is not running
    assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(".nii.gz") and is_temporary(tmp.name)
    tmp.write_bytes(b"left by a crash")
    other = temporary_name(tmp_path / ("d" * 248 + ".nii.gz"), pid=2**22 + 1)
    other.write_bytes(b"another target's")
    assert remove_stale_temporaries(tmp_path, target.name) == [tmp]
    assert other.exists()
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == sorted([target.name, other.name])


@pytest.mark.parametrize("shape", [["4000", "4000", "4000"], ["600", "16", "16"], ["512", "512", "512"]])
def test_synth_refuses_shapes_beyond_its_range_up_front(world, capsys, tmp_path, shape):
    err = expect_one_line(["synth", "--out", tmp_path / "d", "--cases", "1", "--shape", *shape, "--quiet"], capsys,
                          world, ["--shape", max(shape, key=int)], extra_roots=[tmp_path])
    assert "512" in err or "33,554,432" in err
    assert not (tmp_path / "d").exists()


# --- inputs that are not regular files, or not readable ----------------------------------------------------

def _run_cli(args, timeout=120):
    """The CLI in a child process (a FIFO must not hang the test run if it hangs the command)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "neumours.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_a_fifo_given_as_an_input_is_refused_not_waited_on(world, tmp_path):
    import os

    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    toml_fifo = tmp_path / "pipe.toml"
    os.mkfifo(toml_fifo)
    for args, name in ((["render", world["case"], "--seg", fifo, "--out", tmp_path / "r.png", "--size", "16x16",
                         "--device", "cpu"], fifo),
                       (["segment", world["case"], "--checkpoint", fifo, "--out", tmp_path / "s.nii.gz",
                         "--device", "cpu"], fifo),
                       (["train", "--data", world["data"], "--out", tmp_path / "run", "--config", toml_fifo,
                         "--device", "cpu"], toml_fifo)):
        done = _run_cli(args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("neumours: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert str(name) in done.stderr and ("FIFO" in done.stderr or "not a file" in done.stderr), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.nii.gz", "pipe.toml"]


@pytest.fixture
def unreadable(monkeypatch):
    """Make files unreadable: chmod 000, and (root reads any file) an EACCES from os.open on them as well."""
    import errno
    import os

    paths: list[str] = []
    real_open = os.open

    def guarded_open(path, flags, *rest, **kwargs):
        if os.path.abspath(os.fspath(path)) in paths:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *rest, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", guarded_open)

    def make(path: Path) -> Path:
        path.chmod(0)
        paths.append(os.path.abspath(path))
        return path

    yield make
    for path in paths:
        os.chmod(path, 0o644)


def test_an_unreadable_input_says_permission_denied(world, capsys, tmp_path, unreadable):
    ckpt = tmp_path / "ck.safetensors"
    shutil.copy(world["ckpt"], ckpt)
    case = tmp_path / "case"
    shutil.copytree(world["case"], case)
    config = tmp_path / "c.toml"
    config.write_text("[schedule]\nsteps = 1\n")
    t1n = unreadable(next(case.glob("*-t1n.nii.gz")))
    unreadable(ckpt)
    unreadable(config)
    for args, name in ((["segment", world["case"], "--checkpoint", ckpt, "--out", tmp_path / "s.nii.gz"], ckpt),
                       (["segment", case, "--checkpoint", world["ckpt"], "--out", tmp_path / "s.nii.gz"], t1n),
                       (["train", "--data", world["data"], "--out", tmp_path / "run", "--config", config], config)):
        err = expect_one_line([*args, "--device", "cpu"], capsys, world, [name, "permission denied"],
                              extra_roots=[tmp_path])
        assert "No such file" not in err
