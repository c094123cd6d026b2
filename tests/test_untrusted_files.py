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
def world(tmp_path_factory):
    """Three phantom cases, a finished two-step tiny run on them, a tiny checkpoint."""
    root = tmp_path_factory.mktemp("untrusted")
    cases = write_dataset(root / "data", 3, shape=SHAPE, seed=11, progress=False)
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
                 "--steps", "2", "--val-every", "2", "--device", "cpu"]) == 0
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
