"""Dice and HD95 against MONAI on phantom label volumes; empty-region conventions; ``neumours evaluate``."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from neumours.cli.main import main
from neumours.data.phantom import make_case, write_dataset
from neumours.eval.metrics import REGION_NAMES, RegionMetric, dice, hd95, region_scores
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.reference import TorchINR
from neumours.regions import REGIONS

monai_metrics = pytest.importorskip("monai.metrics")


def perturbations(label: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Predictions a segmenter might make: grown, shrunk, shifted, noisy, classes swapped, a far false positive."""
    noisy = label.copy()
    flip = rng.random(label.shape) < 0.02
    noisy[flip] = rng.integers(0, 4, int(flip.sum()))
    swapped = np.array([0, 3, 2, 1], np.uint8)[label]
    far = label.copy()
    far[1:3, 1:4, 1:3] = 2
    return [ndimage.grey_dilation(label, size=(3, 3, 3)), ndimage.grey_erosion(label, size=(2, 2, 2)),
            np.roll(label, (2, -1, 1), axis=(0, 1, 2)), noisy, swapped, far]


def monai_scores(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    out = {}
    for name, labels in REGIONS.items():
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        P = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
        G = torch.from_numpy(np.stack([~g, g])[None].astype(np.float32))
        out[f"dice_{name}"] = monai_metrics.compute_dice(P, G, include_background=False, ignore_empty=False).item()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f"hd95_{name}"] = monai_metrics.compute_hausdorff_distance(
                P, G, include_background=False, percentile=95, spacing=list(spacing)).item()
    return out


@pytest.mark.parametrize("index,spacing", [(1, (1.0, 1.0, 1.0)), (2, (0.9, 1.2, 2.5))])
def test_dice_and_hd95_match_monai_on_phantom_labels(index, spacing, rng):
    gt = make_case((48, 48, 40), seed=3, index=index).label
    assert len(np.unique(gt)) >= 3
    for pred in perturbations(gt, rng):
        ours = region_scores(pred, gt, spacing)
        ref = monai_scores(pred, gt, spacing)
        for name in REGION_NAMES:
            assert ours[f"dice_{name}"] == pytest.approx(ref[f"dice_{name}"], abs=1e-6)
            if np.isin(pred, REGIONS[name]).any() and np.isin(gt, REGIONS[name]).any():
                assert ours[f"hd95_{name}"] == pytest.approx(ref[f"hd95_{name}"], rel=1e-5, abs=1e-4)


def test_empty_region_conventions():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(full, empty) == 0.0 and hd95(full, empty) == math.inf
    assert dice(empty, full) == 0.0 and hd95(empty, full) == math.inf
    assert dice(full, full) == 1.0 and hd95(full, full) == 0.0
    # Hand-checkable: two single voxels 3 voxels apart along an axis of 2 mm.
    a, b = empty.copy(), empty.copy()
    a[1, 1, 1], b[1, 1, 4] = True, True
    assert hd95(a, b, spacing=(1, 1, 2)) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        dice(full, full[:5])


def test_accumulator_excludes_infinite_hd95_and_counts_it():
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[2:6, 2:6, 2:6] = 2
    metric = RegionMetric()
    metric(gt, gt, case_id="a", variant="raw")
    no_tumour = np.zeros_like(gt)
    metric(no_tumour, gt, case_id="b", variant="raw")
    agg = metric.aggregate("raw")
    assert agg["dice_ED"]["mean"] == pytest.approx(0.5) and agg["dice_ED"]["n"] == 2
    assert agg["dice_NCR"]["mean"] == 1.0  # both empty in both cases
    assert agg["hd95_ED"] == {"mean": 0.0, "sd": 0.0, "n": 1, "excluded": 1}
    assert math.isnan(metric.aggregate("denoised")["dice_WT"]["mean"])
    metric.reset()
    assert metric.rows == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cases = write_dataset(root / "data", 3, shape=(24, 24, 20), seed=1, progress=False)
    return root, cases


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_evaluate_pred_gt(dataset, tmp_path, capsys):
    from neumours.data import load_case, save_label

    root, cases = dataset
    preds = tmp_path / "pred"
    for i, c in enumerate(cases):
        case = load_case(c)
        label = case.label if i == 0 else ndimage.grey_dilation(case.label, size=(2, 2, 2))
        save_label(label, preds / f"{case.case_id}.nii.gz", like=case)
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(preds), "--gt", str(root / "data"), "--out", str(out), "--quiet"]) == 0
    rows = read_csv(out / "per_case.csv")
    scores = [f"{k}_{r}" for k in ("dice", "hd95", "lw_dice", "lw_hd95") for r in REGION_NAMES]
    counts = [f"lw_{c}_{r}" for c in ("tp", "fn", "fp") for r in REGION_NAMES]
    assert list(rows[0]) == ["case_id"] + scores + counts
    assert float(rows[0]["lw_dice_WT"]) == 1.0 and float(rows[0]["lw_hd95_WT"]) == 0.0  # exact prediction
    assert int(rows[0]["lw_fn_WT"]) == 0 and int(rows[0]["lw_fp_WT"]) == 0 and int(rows[0]["lw_tp_WT"]) >= 1
    assert [r["case_id"] for r in rows] == [c.name for c in cases]
    assert float(rows[0]["dice_WT"]) == 1.0 and float(rows[0]["hd95_WT"]) == 0.0
    assert 0 < float(rows[1]["dice_WT"]) < 1
    summary = (out / "summary.md").read_text()
    assert "Whole Tumor (WT)" in summary and "±" in summary and "HD95" in summary
    assert "Dice = 1 and HD95 = 0" in summary  # the empty-region convention is stated
    assert "Lesion-wise Dice (BraTS 2023)" in summary and "374 mm" in summary  # and the lesion-wise definition
    # A missing prediction is one error line naming the case, and no report.
    (preds / f"{cases[2].name}.nii.gz").unlink()
    out2 = tmp_path / "report2"
    assert main(["evaluate", "--pred", str(preds), "--gt", str(root / "data"), "--out", str(out2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and cases[2].name in err[0]
    assert not out2.exists()
    assert main(["evaluate", "--pred", str(preds), "--out", str(out2)]) == 2


def test_cli_evaluate_checkpoint_scores_raw_and_denoised(dataset, tmp_path):
    root, cases = dataset
    config = INRConfig.tiny()
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", TorchINR(config).state_dict(), config)
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root / "data"), "--split", "val",
                 "--seed", "0", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    rows = read_csv(out / "per_case.csv")
    assert [r["variant"] for r in rows] == ["raw", "denoised"]  # 3 cases: one validation case
    assert list(rows[0])[:2] == ["case_id", "variant"]
    summary = (out / "summary.md").read_text()
    assert "INR (raw)" in summary and "INR (denoised)" in summary
