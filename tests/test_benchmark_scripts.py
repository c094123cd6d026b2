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
