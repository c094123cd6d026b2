"""Every benchmark and example script imports (their GPU work runs only from main()): no stale imports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"_script_{script.stem}", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _run_script(name: str, argv: list[str], monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delenv("NEUMOURS_DEVICE", raising=False)
    spec = importlib.util.spec_from_file_location(f"_run_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(argv) == 0


@pytest.mark.slow
def test_devices_benchmark_runs_on_the_cpu_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    """benchmarks/devices.py: every task timed on the CPU device, one table column per device kind."""
    out = tmp_path / "devices.json"
    _run_script("devices", ["--devices", "cpu", "--config", "tiny", "--shape", "16", "16", "16", "--train-shape",
                            "16", "16", "16", "--size", "32x24", "--steps", "1", "--repeats", "1", "--json", str(out)],
                monkeypatch)
    cpu = json.loads(out.read_text())["devices"]["cpu"]
    assert cpu["precision"] == "fp32"
    for task in ("inference", "training step", "render"):
        assert cpu[task]["seconds"] > 0
    table = capsys.readouterr().out
    assert "cpu (fp32)" in table and "1.00x cpu" in table


def test_case_io_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "case_io.json"
    _run_script("case_io", ["--shape", "16", "16", "16", "--repeats", "1", "--json", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert result["read"]["sequential_s"] > 0 and result["read"]["parallel_s"] > 0
    assert set(result["write_levels"]) == {"0", "1", "2", "3", "zlib1", "zlib6"}
    assert "load_case" in capsys.readouterr().out


TRAIN_STEP_TINY = ["--preset", "tiny", "--cases", "3", "--shape", "24", "24", "16", "--steps", "2", "--block", "2",
                   "--repeats", "1"]
CUDA_ONLY_LOOPS = ("slang bf16 block 1", "slang bf16 block 2", "torch bf16", "torch bf16 cuda graph")


def test_train_step_benchmark_runs_on_the_cpu_and_reports_the_cuda_loops_as_not_run(tmp_path, monkeypatch, capsys):
    """benchmarks/train_step.py on the CPU device: the Slang fp32 loops (block 1 and a block) and torch fp32 timed,
    each against torch fp32; the CUDA-only loops present in the JSON as not run, with their reason."""
    import torch

    out = tmp_path / "train_step.json"
    threads = torch.get_num_threads()
    _run_script("train_step", ["--device", "cpu", *TRAIN_STEP_TINY, "--json", str(out)], monkeypatch)
    assert torch.get_num_threads() == threads  # the thread probe leaves torch as it found it
    result = json.loads(out.read_text())
    assert result["torch_device"] == "cpu" and result["points"] == "2 x 256"
    assert "1" in result["torch_thread_probe_ms"] and result["torch_threads"] in (1, threads)
    loops = result["loops"]
    assert set(loops) == {"slang fp32 block 1", "slang fp32 block 2", "torch fp32", *CUDA_ONLY_LOOPS}
    for name in ("slang fp32 block 1", "slang fp32 block 2", "torch fp32"):
        assert loops[name]["run"] and loops[name]["steps_per_s"] > 0
        assert set(loops[name]["vs"]) == {"torch fp32"}
    for name in CUDA_ONLY_LOOPS:
        assert loops[name]["run"] is False and "CUDA" in loops[name]["reason"]
    cpu_rows = [t for t in result["targets"] if t["target"].startswith("CPU device")]
    assert len(cpu_rows) == 2 and all(t["value"] > 0 for t in cpu_rows)
    printed = capsys.readouterr().out
    assert "slang fp32 block 2" in printed and "not run: torch bf16 cuda graph: CUDA graphs need torch on CUDA" \
        in printed and "quoted baseline (not a threshold): 148 ms/step" in printed


@pytest.mark.gpu
def test_train_step_benchmark_runs_every_loop_on_cuda(cuda_device, tmp_path, monkeypatch):
    """On a GPU every loop runs, the torch bf16 step captured in a CUDA graph included."""
    out = tmp_path / "train_step.json"
    _run_script("train_step", ["--device", "cuda", *TRAIN_STEP_TINY, "--json", str(out)], monkeypatch)
    loops = json.loads(out.read_text())["loops"]
    assert {name: loop.get("reason") for name, loop in loops.items() if not loop["run"]} == {}
    assert set(loops["slang bf16 block 2"]["vs"]) == {"torch fp32", "torch bf16", "torch bf16 cuda graph"}
