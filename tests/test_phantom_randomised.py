"""The randomised phantom family (difficulty "randomised"): determinism per seed, label conventions (cavity fluid
is label 0), its documented ranges covered over 50 cases, factors that can be held fixed, ``neumours synth``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neumours.cli.main import main
from neumours.data import list_cases, load_case
from neumours.data.phantom import make_case, write_dataset
from neumours.data.phantom_lesions import BLOOD
from neumours.data.phantom_randomised_acquire import (CONTRAST_RANGES, FIXED_CONTRAST, draw_appearance, resample)
from neumours.data.phantom_randomised_ranges import (FACTOR_FIELDS, FACTORS, FIXED, RANDOMISED, RandomisedRanges,
                                                     randomised_ranges)
from neumours.data.phantom_ranges import PhantomRanges

SHAPE = (24, 24, 24)
CASES = 50


def _make(index, kind="pre", seed=7, ranges=None, shape=SHAPE):
    return make_case(shape, seed=seed, index=index, kind=kind, difficulty="randomised", ranges=ranges)


@pytest.fixture(scope="module")
def pre():
    return [_make(i) for i in range(CASES)]


@pytest.fixture(scope="module")
def post():
    return [_make(i, "post") for i in range(CASES)]


def _covers(values, lo, hi, name, slack=0.2):
    """Every value in [lo, hi], and the values reach within ``slack`` of the range's width of both ends."""
    values = np.asarray(values, np.float64)
    assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6, (name, values.min(), values.max(), lo, hi)
    if hi > lo:
        assert values.min() <= lo + slack * (hi - lo) and values.max() >= hi - slack * (hi - lo), \
            (name, values.min(), values.max(), lo, hi)


def test_deterministic_per_seed_index_and_kind():
    for kind in ("pre", "post"):
        a, b = _make(3, kind, shape=(32, 32, 24)), _make(3, kind, shape=(32, 32, 24))
        assert np.array_equal(a.images, b.images) and np.array_equal(a.label, b.label)
        assert a.params == b.params and a.difficulty == "randomised"
        for other in (_make(3, kind, seed=8, shape=(32, 32, 24)), _make(4, kind, shape=(32, 32, 24))):
            assert not np.array_equal(a.images, other.images)
    # Not the hard family's case of the same seed: the randomised family has streams of its own.
    hard = make_case((32, 32, 24), seed=7, index=3)
    assert not np.array_equal(hard.images, _make(3, shape=(32, 32, 24)).images)


def test_label_conventions(pre, post):
    for case in pre + post:
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) <= {0, 1, 2, 3}
        brain = case.tissue > 0
        assert (case.images[:, ~brain] == 0).all() and (case.images[:, brain] >= 1).all()
        assert np.array_equal(case.images, np.rint(case.images))
        assert not case.label[~brain].any()
    for case in post:
        assert case.cavity is not None and case.cavity.any(), case.case_id
        assert not case.label[case.cavity].any(), f"{case.case_id}: cavity fluid must be label 0"
    assert all(c.cavity is None for c in pre)
    # The post-operative variants appear: residual nodules, treatment-effect oedema, cases without enhancement.
    assert sum(c.params["postop"]["nodule_voxels"] > 0 for c in post) >= 5
    assert sum(c.params["postop"]["treatment_edema"] for c in post) >= 5
    assert 5 <= sum((c.label == 3).any() for c in post) <= CASES - 3


def test_appearance_covers_its_ranges_over_50_cases():
    r = RANDOMISED
    draws = [draw_appearance(np.random.default_rng([1, i]), np.random.default_rng([2, i]), r) for i in range(CASES)]
    contrast = np.stack([d.contrast for d in draws])  # (cases, 4, codes)
    lo, hi = CONTRAST_RANGES[..., 0], CONTRAST_RANGES[..., 1]
    for m in range(4):
        for code in range(1, contrast.shape[2]):
            _covers(contrast[:, m, code], lo[m, code], hi[m, code], f"contrast[{m}, {code}]")
    for name in ("tissue_sd", "gamma", "pv_sigma", "bias", "noise", "ghosting", "motion", "motion_shift", "offset"):
        values = np.concatenate([np.ravel(getattr(d, name)) for d in draws])
        _covers(values, *getattr(r, name), name)
    _covers([d.heterogeneity for d in draws], *r.heterogeneity, "heterogeneity")
    _covers(np.log([d.wm_level for d in draws]), *np.log(r.wm_level), "wm_level")
    spacing = np.stack([d.spacing for d in draws])  # (cases, 4, 3)
    axis = np.stack([d.slice_axis for d in draws])
    thick = np.take_along_axis(spacing, axis[..., None], 2)[..., 0]
    _covers(thick, *r.slice_thickness, "slice_thickness")
    in_plane = spacing[np.arange(3)[None, None, :] != axis[..., None]]
    _covers(in_plane, *r.resolution, "resolution")
    phase = np.stack([d.phase_axis for d in draws])
    assert not (phase == axis).any()  # the phase-encoding axis lies in the slice plane


def test_lesions_and_post_operative_sites_cover_their_ranges_over_50_cases(pre, post):
    r = RANDOMISED
    shapes = [s for case in pre for s in case.params["shapes"]]
    for name in ("elongation", "roughness", "lobulation", "rim", "solid_label1"):
        _covers([s[name] for s in shapes], *getattr(r, name), name, slack=0.3)
    # whole tumour over core radius, where neither radius was clamped (smallest core, a rim around it)
    reach = [s["r_wt"] / s["r_tc"] for s in shapes if s["r_tc"] > 1.5001 and s["r_wt"] > s["r_tc"] + 1.0001]
    _covers(np.round(reach, 3), *r.edema_reach, "edema_reach", slack=0.35)
    counts = [c.lesions for c in pre]
    assert max(counts) <= r.max_lesions and max(counts) >= 3
    assert abs(np.mean([n > 1 for n in counts]) - r.multifocal_share) < 0.2
    assert abs(np.mean([s["necrotic"] for s in shapes]) - r.necrosis_share) < 0.2
    assert abs(np.mean([s["enhancing"] for s in shapes]) - r.enhancement_share) < 0.2
    assert abs(np.mean([(c.appearance == BLOOD).any() for c in post]) - r.blood_share) < 0.2
    extras = [c.params["postop"] for c in post]
    assert abs(np.mean([e["nodule"] for e in extras]) - r.nodule_share) < 0.2
    assert abs(np.mean([e["treatment_edema"] for e in extras]) - r.treatment_edema_share) < 0.2
    _covers([e["nodule_size"] for e in extras], *r.nodule_size, "nodule_size")
    _covers([e["treatment_edema_reach"] for e in extras], *r.treatment_edema_reach, "treatment_edema_reach")


def test_fixed_factors_take_the_canonical_values():
    everything = randomised_ranges(fixed=FACTORS)
    assert everything == FIXED
    look = draw_appearance(np.random.default_rng(0), np.random.default_rng(1), everything)
    assert np.array_equal(look.contrast, FIXED_CONTRAST)
    assert (look.spacing == 1).all() and (look.motion == 0).all() and (look.ghosting == 0).all()
    assert np.allclose(look.gamma, 1.0)
    # Each factor switches exactly its own fields.
    for factor in FACTORS:
        one = randomised_ranges(fixed=[factor])
        changed = {f.name for f in dataclasses.fields(RandomisedRanges)
                   if getattr(one, f.name) != getattr(RANDOMISED, f.name)}
        assert changed <= set(FACTOR_FIELDS[factor]) and changed, factor
    assert sorted(n for names in FACTOR_FIELDS.values() for n in names) == sorted(
        f.name for f in dataclasses.fields(RandomisedRanges))
    with pytest.raises(ValueError, match="unknown factor"):
        randomised_ranges(fixed=["colour"])
    with pytest.raises(ValueError, match="noise"):
        RandomisedRanges(noise=(0.2, 0.1))
    # The morphology and post-operative fields that PhantomRanges also has mean the same there.
    shared = {f.name for f in dataclasses.fields(PhantomRanges)} & set(FACTOR_FIELDS["morphology"])
    assert len(shared) == len(FACTOR_FIELDS["morphology"])


def test_appearance_factors_leave_the_labels_and_change_the_images():
    base = _make(5, "post", shape=(32, 32, 24))
    for factor in ("contrast", "acquisition"):
        other = _make(5, "post", ranges=randomised_ranges(fixed=[factor]), shape=(32, 32, 24))
        assert np.array_equal(base.label, other.label) and np.array_equal(base.cavity, other.cavity)
        assert not np.array_equal(base.images, other.images)
        assert other.params["fixed"] == [factor]
    shapes = _make(5, ranges=randomised_ranges(fixed=["morphology"]), shape=(32, 32, 24)).params["shapes"]
    assert len(shapes) == 1 and FIXED.elongation[0] <= shapes[0]["elongation"] <= FIXED.elongation[1]


def test_resample_keeps_the_grid_and_blurs_along_the_thick_axis():
    img = np.zeros((20, 20, 30), np.float32)
    img[:, :, ::2] = 1.0  # stripes along z
    same = resample(img, (1.0, 1.0, 1.0), 0.0)
    assert np.array_equal(same, img)
    thick = resample(img, (1.0, 1.0, 4.0), 0.5)
    assert thick.shape == img.shape
    assert thick[10, 10].std() < 0.1 * img[10, 10].std()  # the stripes are gone
    assert np.allclose(thick[5:15, 5:15].mean(), 0.5, atol=0.05)


def test_synth_cli_randomised_with_fixed_factors(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--cases", "2", "--shape", "24", "24", "24", "--difficulty",
                 "randomised", "--kind", "post", "--fixed", "contrast", "--quiet"]) == 0
    assert "randomised, fixed contrast, post-operative" in capsys.readouterr().out
    record = (out / "synth.toml").read_text()
    assert 'difficulty = "randomised"' in record and 'fixed = ["contrast"]' in record
    refs = list_cases(out)
    made = make_case(SHAPE, seed=0, index=1, kind="post", difficulty="randomised",
                     ranges=randomised_ranges(fixed=["contrast"]))
    loaded = load_case(refs[1])
    assert np.array_equal(loaded.label, made.label) and np.array_equal(loaded.images, made.images)
    for argv, words in [(["--fixed", "contrast"], "--fixed"),
                        (["--difficulty", "randomised", "--ranges", str(tmp_path / "r.toml")], "--ranges")]:
        assert main(["synth", "--out", str(tmp_path / "x"), "--quiet"] + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("neumours: error:") and words in err[0]
        assert not (tmp_path / "x").exists()


def test_write_dataset_records_the_ranges(tmp_path):
    import tomllib

    write_dataset(tmp_path, 1, shape=SHAPE, seed=2, progress=False, difficulty="randomised",
                  ranges=randomised_ranges(fixed=["acquisition", "postop"]))
    record = tomllib.loads((tmp_path / "synth.toml").read_text())
    assert record["fixed"] == ["postop", "acquisition"]
    assert RandomisedRanges(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["ranges"].items()}) == \
        randomised_ranges(fixed=["acquisition", "postop"])
    with pytest.raises(ValueError, match="RandomisedRanges"):
        make_case(SHAPE, difficulty="randomised", ranges=PhantomRanges())
