"""Validation sized for the run, scores that say what they rest on, time estimates (issue 31)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neumours.data import normalise
from neumours.data.phantom import make_case
from neumours.infer.cache import VolumeCache
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.estimates import format_duration, long_work_note
from neumours.train.estimate import training_seconds
from neumours.train.validate import Validator, dice_per_class, nearest_voxels, validation_grid
from conftest import CPU_ESTIMATES, cpu_device_only


def test_validation_grid_keeps_small_cases_and_shrinks_big_ones_evenly():
    assert validation_grid((48, 40, 32), None) == (48, 40, 32)
    assert validation_grid((48, 40, 32), 48 * 40 * 32) == (48, 40, 32)
    grid = validation_grid((96, 96, 64), 1 << 16)
    assert math.prod(grid) <= 1 << 16 and math.prod(grid) > 0.8 * (1 << 16)
    assert grid[0] == grid[1] and abs(grid[0] / grid[2] - 96 / 64) < 0.1  # the same field of view, evenly


def test_nearest_voxels_take_the_label_under_each_grid_point():
    label = np.arange(9 * 7 * 5).reshape(9, 7, 5)
    assert np.array_equal(nearest_voxels(label, (5, 4, 3)), label[::2, ::2, ::2])
    assert np.array_equal(nearest_voxels(label, label.shape), label)


def test_a_capped_validation_scores_the_coarse_grid_against_the_nearest_labels(cpu_device):
    inr = INR(INRConfig.tiny(), cpu_device, seed=0)
    cases = [make_case((24, 24, 16), seed=s) for s in (1, 2)]
    images, labels = [normalise(c.images) for c in cases], [c.label for c in cases]
    full = Validator(inr, images, labels)
    capped = Validator(inr, images, labels, max_voxels=2 * 12 * 12 * 8)
    assert full.voxels == 2 * 24 * 24 * 16 and full.describe() == "2 cases, 18,432 voxels"
    assert capped.voxels <= 2 * 12 * 12 * 8 and "of 18,432 voxels (a coarser grid)" in capped.describe()
    vols = CaseVolumes.upload(cpu_device, images)
    expected = np.mean([dice_per_class(VolumeCache(inr, vols, case_index=i, grid_shape=g).labels(),
                                       nearest_voxels(label, g)) for i, (label, g) in
                        enumerate(zip(labels, capped.grids))], axis=0)
    assert np.array_equal(capped(), expected)
    assert np.array_equal(full(), np.mean([dice_per_class(VolumeCache(inr, vols, case_index=i).labels(), label)
                                           for i, label in enumerate(labels)], axis=0))
    assert capped.seconds() > 0
    assert list(full.cases_without) == [sum(not (lab == c).any() for lab in labels) for c in range(4)]


def test_an_empty_class_follows_the_brats_rule():
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 2
    pred = truth.copy()
    pred[0, 0, 0] = 3  # ET predicted where the truth has none: 0; NCR absent from both: 1
    assert list(dice_per_class(pred, truth)) == pytest.approx([1.0, 1.0, 2 * 31 / 63, 0.0])


def test_estimates_name_the_time_and_say_nothing_for_short_work():
    assert format_duration(45) == "45 s" and format_duration(600) == "10 min"
    assert format_duration(2 * 3600) == "2.0 h" and format_duration(30 * 86400) == "30.0 days"
    assert training_seconds(2.0, 100, 2, 30.0) == 260.0
    assert long_work_note("training", 60, "measured", "x") is None
    line = long_work_note("refinement", 7200, "measured: 360 s a step", "for a CPU-sized run: --size 64x64")
    assert line == ("neumours: note: refinement will take about 2.0 h (measured: 360 s a step); "
                    "for a CPU-sized run: --size 64x64")


def test_one_case_or_fold_prints_no_zero_spread():
    from neumours.eval.evaluate import summary_markdown
    from neumours.eval.metrics import RegionMetric
    from neumours.sweep.results import TrialRecord, r_score

    metric = RegionMetric()
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:5, 2:5, 2:5] = 2
    metric(truth, truth, (1.0, 1.0, 1.0), case_id="case-1")
    text = summary_markdown(metric)
    assert "± 0.000" not in text and "± 0.00" not in text and "One case" in text
    record = TrialRecord("t1", {}, "finished", folds=[{"val_dice_mean": 0.5}],
                         scores={"val_dice_mean": 0.5, "val_dice_sd": 0.0})
    assert r_score(record) == "0.5000 (1 fold)"
    record.folds, record.scores["val_dice_sd"] = [{}, {}], 0.01
    assert r_score(record) == "0.5000 ± 0.0100 (2 folds)"


@cpu_device_only(CPU_ESTIMATES)
def test_segment_of_a_big_case_warns_before_work(cpu_device, capsys, tmp_path):
    """Ten BraTS-sized cases (240 x 240 x 155) on the CPU device: minutes even for the tiny network (one
    case is about a minute on 2 cores, below the note's 3 minutes)."""
    from neumours.infer.segment import Segmenter, announce_segmentation
    from neumours.model.checkpoint import save_checkpoint

    config = INRConfig.tiny()
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(config, cpu_device).state_dict(), config)
    segmenter = Segmenter(checkpoint, cpu_device)
    line = announce_segmentation(segmenter, [(240, 240, 155)] * 10)
    err = capsys.readouterr().err.strip().splitlines()
    assert line is not None and err == [line]
    assert line.startswith("neumours: note: segmenting 10 cases (89,280,000 voxels) will take about ")
    assert "--device cuda" in line
    assert announce_segmentation(segmenter, [(16, 16, 16)]) is None and capsys.readouterr().err == ""


@cpu_device_only(CPU_ESTIMATES)
def test_training_announces_a_long_run_with_its_validations(cpu_device, capsys):
    from types import SimpleNamespace

    from neumours.train.config import preset
    from neumours.train.estimate import announce_estimate

    validator = SimpleNamespace(voxels=262_144, seconds=lambda: 12.0,
                                describe=lambda: "2 cases, 262,144 of 393,216 voxels (a coarser grid)")
    for name, advice in (("paper", "--preset tiny"), ("tiny", "fewer --steps or a larger --val-every")):
        trainer = SimpleNamespace(config=preset(name), step=2, validator=validator, device=cpu_device)
        # 148 steps left at 2 s and validations at 50, 100 and 150 at 12 s each: 332 s
        line = announce_estimate(trainer, preset(name).schedule.steps - 2, 2.0) if name == "tiny" else \
            announce_estimate(trainer, 998, 60.0)
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [line] and line.startswith("neumours: note: training (") and advice in line
    assert "3 validations of 2 cases" in line and "about 6 min" in line and "2.00 s a step, 12 s a validation" in line
    trainer = SimpleNamespace(config=preset("tiny"), step=2, validator=validator, device=cpu_device)
    assert announce_estimate(trainer, 10, 0.5) is None and capsys.readouterr().err == ""
