"""benchmarks/generalisation.py end to end on the CPU device with a tiny network (a check that the script runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "generalisation.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "_generalisation")


@pytest.mark.slow
def test_generalisation_benchmark_runs_on_the_cpu(bench, tmp_path):
    out = tmp_path / "gen"
    argv = ["--out", str(out), "--preset", "tiny", "--device", "cpu", "--steps", "3", "--cases", "3",
            "--test-cases", "1", "--shape", "24", "24", "24", "--runs", "acquisition", "none", "--workers", "1"]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    # runs x kinds x test cases x variants
    assert len(rows) == 2 * 2 * 1 * len(bench.VARIANTS) == 2 * 2 * 6
    assert {(r["run"], r["kind"], r["variant"]) for r in rows} == {
        (run, kind, v) for run in ("acquisition", "none") for kind in ("pre", "post") for v in bench.VARIANTS}
    for row in rows:
        for region in bench.REGIONS:
            assert 0.0 <= row[f"dice_{region}"] <= 1.0 and 0.0 <= row[f"lw_dice_{region}"] <= 1.0
        assert row["lw_fp_WT"] >= 0
    stats = results["runs"]["none"]["stats"]["post"]["raw"]
    assert stats["n"] == 1 and "lw_fp_WT" in stats
    tables = (out / "tables.md").read_text()
    assert "## pre-operative test cases" in tables and "## post-operative test cases" in tables
    assert tables.count("| acquisition | denoised+tta+smooth |") == 2
    # The training sets hold the factor fixed; the test set randomises every factor.
    record = (out / "data" / "train-acquisition" / "pre" / "synth.toml").read_text()
    assert 'fixed = ["acquisition"]' in record
    assert "fixed = []" in (out / "data" / "test" / "post" / "synth.toml").read_text()
    # Data already written with the same arguments is reused, not written again.
    assert bench.write_one(out / "data" / "test" / "post", 1, "post", 1000, [], (24, 24, 24)) == "reused"


def test_datasets_are_rewritten_when_their_arguments_change(bench, tmp_path):
    from neumours.data import list_cases

    folder = tmp_path / "d"
    assert bench.write_one(folder, 2, "pre", 0, ["contrast"], (24, 24, 24)) == "written"
    assert bench.write_one(folder, 2, "pre", 0, ["contrast"], (24, 24, 24)) == "reused"
    assert bench.write_one(folder, 1, "pre", 0, [], (24, 24, 24)) == "written"
    assert [r.case_id for r in list_cases(folder)] == ["Phantom-00000-000"]  # no stale second case
    assert "fixed = []" in (folder / "synth.toml").read_text()
