"""benchmarks/boundary_loss.py end to end on the CPU device with a tiny network (a check that the script runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "boundary_loss.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "_boundary_loss")


@pytest.mark.slow
def test_boundary_loss_benchmark_runs_on_the_cpu(bench, tmp_path):
    out = tmp_path / "bl"
    argv = ["--out", str(out), "--preset", "tiny", "--device", "cpu", "--steps", "3", "--cases", "3",
            "--test-cases", "2", "--shape", "24", "24", "24", "--weights", "0.5", "--workers", "1"]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["w0", "w0.5"]
    assert [r["weight"] for r in results["runs"].values()] == [0.0, 0.5]
    rows = results["rows"]  # runs x test cases x variants
    assert {(r["run"], r["variant"]) for r in rows} == {(w, v) for w in ("w0", "w0.5") for v in bench.VARIANTS}
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        for region in bench.REGIONS:
            assert 0.0 <= row[f"dice_{region}"] <= 1.0 and float(row[f"hd95_{region}"]) >= 0.0  # strict JSON: inf is "inf"
        assert row["lw_fp_WT"] >= 0
    for run in results["runs"].values():
        for variant in bench.VARIANTS:
            stats = run["stats"][variant]
            assert stats["dice_WT"]["n"] == 2 and stats["lw_fp_WT"]["n"] == 2
            assert stats["hd95_WT"]["n"] + stats["hd95_WT"]["excluded"] == 2
    # Same seed, data and points: the runs differ only by the boundary term, which moved the weights.
    a, b = (load_file(out / "runs" / w / "last.safetensors") for w in ("w0", "w0.5"))
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    assert "boundary_weight = 0.5" in (out / "runs" / "w0.5" / "config.toml").read_text()
    tables = (out / "tables.md").read_text()
    assert "## raw" in tables and "## denoised" in tables and tables.count("| 0.5 | 2 |") == 2


def test_bad_weights_are_refused(bench, tmp_path, capsys):
    for weights in (["0"], ["11"], ["-0.1"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--out", str(tmp_path / "x"), "--weights", *weights])
        assert exc.value.code == 2
    assert "--weights must each be in (0, 10]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
