"""BraTS 2023 lesion-wise Dice/HD95 on hand-built cases: two lesions, one missed, one split, merging, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neumours.eval.lesionwise import BRATS_GLI_2023, LesionRules, ground_truth_lesions, lesion_scores, lesion_wise
from neumours.eval.metrics import hd95

SHAPE = (48, 40, 36)


def cube(corner, size, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    x, y, z = corner
    m[x:x + size, y:y + size, z:z + size] = True
    return m


def test_two_lesions_one_found_one_missed():
    a, b = cube((4, 4, 4), 6), cube((30, 25, 20), 6)
    s = lesion_wise(a, a | b)
    assert (s.tp, s.fn, s.fp) == (1, 1, 0)
    assert s.dice == pytest.approx((1.0 + 0.0) / 2)
    assert s.hd95 == pytest.approx((0.0 + 374.0) / 2)
    assert [v for v, _, _ in s.lesions] == [216.0, 216.0]


def test_split_prediction_is_one_match():
    g = cube((10, 10, 10), 10)
    p = g.copy()
    p[15] = False  # one slab removed: two predicted components, both touch the lesion
    s = lesion_wise(p, g)
    assert (s.tp, s.fn, s.fp) == (1, 0, 0)
    assert s.dice == pytest.approx(2 * 900 / (900 + 1000))
    assert s.hd95 == pytest.approx(hd95(p, g))


def test_false_positive_adds_a_zero_term():
    g = cube((4, 4, 4), 6)
    p = g | cube((30, 25, 20), 4)  # 64 voxels: counted as a false positive whatever its size
    s = lesion_wise(p, g)
    assert (s.tp, s.fn, s.fp) == (1, 0, 1)
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(187.0)


def test_nearby_components_merge_by_dilation():
    near = cube((4, 4, 4), 6) | cube((16, 4, 4), 6)   # gap 6: dilations (3 each) touch -> one lesion
    far = cube((4, 4, 4), 6) | cube((17, 4, 4), 6)    # gap 7: two lesions
    assert ground_truth_lesions(near, 3)[1] == 1 and ground_truth_lesions(far, 3)[1] == 2
    s = lesion_wise(cube((4, 4, 4), 6), near)          # half of the merged lesion found
    assert (s.tp, s.fn, s.fp) == (1, 0, 0) and s.dice == pytest.approx(2 * 216 / (216 + 432))
    assert lesion_wise(cube((4, 4, 4), 6), far).dice == pytest.approx(0.5)


def test_prediction_within_dilation_matches_without_overlap():
    g = cube((10, 10, 10), 6)
    s = lesion_wise(cube((18, 10, 10), 6), g)  # 2 voxels away from the lesion: inside its 3-voxel reach
    assert (s.tp, s.fn, s.fp) == (1, 0, 0) and s.dice == 0.0 and math.isfinite(s.hd95) and s.hd95 < 374
    s = lesion_wise(cube((24, 10, 10), 6), g)  # 8 voxels away: a miss and a false positive
    assert (s.tp, s.fn, s.fp) == (0, 1, 1) and s.dice == 0.0 and s.hd95 == pytest.approx(374.0)


def test_small_lesions_are_not_scored_and_spacing_sets_the_volume():
    small = cube((10, 10, 10), 3)  # 27 voxels
    s = lesion_wise(np.zeros(SHAPE, bool), small)
    assert (s.dice, s.hd95, s.tp, s.fn, s.fp) == (1.0, 0.0, 0, 0, 0)
    s = lesion_wise(small, small)  # a prediction of an unscored lesion is no false positive
    assert (s.tp, s.fn, s.fp) == (0, 0, 0) and s.dice == 1.0
    s = lesion_wise(np.zeros(SHAPE, bool), small, spacing=(2.0, 2.0, 2.0))  # 216 mm^3
    assert (s.tp, s.fn, s.fp) == (0, 1, 0) and s.dice == 0.0 and s.hd95 == 374.0
    assert lesion_wise(np.zeros(SHAPE, bool), small, rules=LesionRules(min_volume_mm3=2)).fn == 1


def test_both_empty_and_prediction_only():
    empty = np.zeros(SHAPE, bool)
    s = lesion_wise(empty, empty)
    assert (s.dice, s.hd95) == (1.0, 0.0)
    s = lesion_wise(cube((4, 4, 4), 2), empty)  # even a tiny false positive costs everything
    assert (s.dice, s.hd95, s.fp) == (0.0, 374.0, 1)


def test_region_columns_from_label_volumes():
    gt = np.zeros(SHAPE, np.uint8)
    gt[cube((4, 4, 4), 10)] = 2
    gt[cube((6, 6, 6), 6)] = 3          # ET inside ED
    gt[cube((30, 24, 20), 6)] = 2       # a second, edema-only lesion
    pred = gt.copy()
    pred[pred == 3] = 1                 # ET predicted as NCR
    out = lesion_scores(pred, gt)
    assert out["lw_dice_WT"] == 1.0 and (out["lw_tp_WT"], out["lw_fn_WT"], out["lw_fp_WT"]) == (2, 0, 0)
    assert out["lw_dice_TC"] == 1.0
    assert out["lw_dice_ET"] == 0.0 and out["lw_fn_ET"] == 1 and out["lw_hd95_ET"] == 374.0
    assert out["lw_fp_NCR"] == 1 and out["lw_dice_NCR"] == 0.0


def test_official_brats_2023_code_agrees(tmp_path, monkeypatch):
    """Cross-check against the challenge's own code (github.com/rachitsaluja/BraTS-2023-Metrics), if importable.

    It is not on PyPI: put its ``brats_2023_metrics`` package on PYTHONPATH (it needs cc3d and pandas).
    """
    official = pytest.importorskip("brats_2023_metrics.surface_distance.brats_metrics")
    import nibabel as nib

    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # its surface_distance predates numpy 2

    gt = np.zeros(SHAPE, np.uint8)
    gt[cube((4, 4, 4), 10)] = 2
    gt[cube((6, 6, 6), 6)] = 3
    gt[cube((30, 24, 20), 6)] = 1
    gt[cube((40, 4, 4), 3)] = 2
    pred = gt.copy()
    pred[30:36, 24:36, 20:26] = 0       # second lesion missed
    pred[cube((20, 30, 4), 5)] = 3      # a false positive
    pred[8] = 0                         # first lesion split
    paths = {}
    for name, vol in (("pred", pred), ("gt", gt)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), paths[name])
    ours = lesion_scores(pred, gt, rules=BRATS_GLI_2023)
    for region in ("WT", "TC", "ET"):
        # Its per-lesion core (merging, matching, per-lesion Dice/HD95, false positives); the mean over lesions is
        # the challenge's formula, done here because its pandas step fails on current pandas (object columns).
        store = official.get_lesion_wise_score(str(paths["pred"]), str(paths["gt"]), region, BRATS_GLI_2023.dilation)
        kept = [(len(ids), d, 374.0 if math.isinf(h) else h) for ids, _, vol, d, h in store["metric_pairs"]
                if vol > BRATS_GLI_2023.min_volume_mm3]
        fp = len(store["fp"])
        terms = len(kept) + fp
        ref_dice = sum(d for _, d, _ in kept) / terms if terms else 1.0
        ref_hd95 = (sum(h for _, _, h in kept) + 374.0 * fp) / terms if terms else 0.0
        assert (ours[f"lw_tp_{region}"], ours[f"lw_fn_{region}"], ours[f"lw_fp_{region}"]) == \
            (sum(n > 0 for n, _, _ in kept), sum(n == 0 for n, _, _ in kept), fp)
        assert ours[f"lw_dice_{region}"] == pytest.approx(ref_dice, abs=1e-9)
        # HD95: surface voxels (ours) vs area-weighted surface elements (theirs); within a voxel or two
        assert ours[f"lw_hd95_{region}"] == pytest.approx(ref_hd95, abs=2.0)
