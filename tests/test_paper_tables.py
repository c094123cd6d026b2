"""benchmarks/paper_tables.py --smoke: the whole pipeline on the CPU device, its files and their shape."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from neumours.conventions import CLASS_KEYS

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "paper_tables.py"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("_paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_writes_every_table(monkeypatch, tmp_path):
    module = _load(monkeypatch)
    assert module.main(["--out", str(tmp_path), "--smoke", "--cases", "4", "--runs", "adamw:off", "adamw:on"]) == 0
    runs = ["adamw_aug-off", "adamw_aug-on"]
    t2 = _rows(tmp_path / "table2.csv")
    assert [(r["run"], r["class"]) for r in t2] == [(run, k) for run in runs for k in CLASS_KEYS]
    assert all(0.0 <= float(r["train_dice"]) <= 1.0 for r in t2)
    results = json.loads((tmp_path / "results.json").read_text())
    for table, n in (("table3", results["val"]), ("table4", results["post"])):
        rows = _rows(tmp_path / f"{table}.csv")
        assert [(r["run"], r["variant"]) for r in rows] == [(run, v) for run in runs for v in ("raw", "denoised")]
        assert all(int(r["n"]) == n for r in rows)
        for r in rows:
            mean, sd = (float(x) for x in r["dice_WT"].split(" ± "))
            assert 0.0 <= mean <= 1.0 and sd >= 0.0
    assert results["post"] == 2 and results["train"] + results["val"] == 4
    t5 = _rows(tmp_path / "table5.csv")
    assert [r["run"] for r in t5] == runs
    assert all(int(r["parameters"]) > 0 and float(r["inference_s_per_case"]) > 0 and r["precision"] == "fp32"
               for r in t5)
    # Each run's resolved configuration: augmentation on in one, off in the other.
    assert (tmp_path / "adamw_aug-on" / "config.toml").read_text().count("noise = 0.1") == 1
    assert "noise = 0.0" in (tmp_path / "adamw_aug-off" / "config.toml").read_text()
    text = (tmp_path / "tables.md").read_text()
    for title in ("Table II", "Table III", "Table IV", "Table V"):
        assert title in text
