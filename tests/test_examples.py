"""Every example runs (small sizes, CPU device) and writes what it says."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_segment(tmp_path, capsys):
    out = load_example("train_and_segment").main(
        ["--out", str(tmp_path), "--steps", "20", "--cases", "4", "--shape", "28", "28", "20", "--device", "cpu"])
    rows = list(csv.DictReader(open(out["per_case"])))
    assert {r["variant"] for r in rows} == {"raw", "denoised"}
    assert "Whole Tumor" in out["summary"].read_text()
    assert len(list((tmp_path / "segmentations").glob("*.nii.gz"))) == len(rows) // 2


def test_paper_figures(tmp_path):
    from neumours.data.phantom import make_case, write_case
    from neumours.device import get_device
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.inr import INR

    case = write_case(make_case((32, 32, 24), seed=1), tmp_path)
    config = INRConfig.tiny()
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(config, get_device("cpu")).state_dict(), config)
    slices, renders = load_example("paper_figures").main(
        [str(case), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "figs"), "--size", "40x32",
         "--device", "cpu"])
    assert np.asarray(Image.open(renders)).shape == (32, 120, 3)
    assert Image.open(slices).size[0] > 0


def test_refine_from_views(tmp_path, capsys):
    # Path (b) runs through `neumours refine --path direct` in tests/test_refine.py.
    path = "cache"
    result = load_example("refine_from_views").main(
        ["--out", str(tmp_path), "--cases", "3", "--shape", "16", "16", "16", "--train-steps", "4", "--steps", "2",
         "--size", "12", "--path", path, "--device", "cpu"])
    assert len(result["rows"]) == 2 and set(result["after"]) == {"NCR", "ED", "ET", "TC", "WT"}
    assert "Dice after" in capsys.readouterr().out


def test_custom_refinement_loss(tmp_path, capsys):
    result = load_example("custom_refinement_loss").main(
        ["--out", str(tmp_path), "--cases", "3", "--shape", "16", "16", "16", "--train-steps", "4", "--steps", "3",
         "--size", "12", "--device", "cpu"])
    assert len(result["losses"]) == 3 and result["losses"][-1] < result["losses"][0]
    assert set(result["after"]) == {"NCR", "ED", "ET", "TC", "WT"}
    assert "Dice after" in capsys.readouterr().out


@pytest.mark.integration
def test_viewer_screenshot(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs the system Chromium")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("aiohttp")
    from neumours.data.phantom import make_case, write_case
    from neumours.device import get_device
    from neumours.model.checkpoint import save_checkpoint
    from neumours.model.config import INRConfig
    from neumours.model.inr import INR

    case = write_case(make_case((32, 32, 24), seed=1), tmp_path)
    config = INRConfig.tiny()
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(config, get_device("cpu")).state_dict(), config)
    out = load_example("viewer_screenshot").main(
        [str(case), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "shot" / "viewer.png"),
         "--size", "900x560", "--scale", "0.25", "--device", "cpu", "--modality", "t2f"])
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (560, 900, 3) and image.std() > 10.0
