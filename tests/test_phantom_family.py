"""The phantom family (neumours.data.phantom with difficulty easy/medium/hard, kind pre/post): determinism,
nesting, contrast signs per kind and tissue, the ranges covered over 50 cases, ranges files, ``neumours synth``."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from scipy import ndimage

from neumours.cli.main import main
from neumours.data import list_cases, load_case
from neumours.data import phantom_lesions as codes
from neumours.data.phantom import make_case, write_dataset
from neumours.data.phantom_acquire import CONTRAST
from neumours.data.phantom_anatomy import CSF, GM, WM
from neumours.data.phantom_ranges import PhantomRanges, load_ranges, phantom_ranges

SHAPE = (40, 40, 30)
MODS = {"t1n": 0, "t1c": 1, "t2w": 2, "t2f": 3}


@pytest.fixture(scope="module")
def pre():
    return [make_case(SHAPE, seed=2, index=i) for i in range(12)]


@pytest.fixture(scope="module")
def post():
    return [make_case(SHAPE, seed=2, index=i, kind="post") for i in range(12)]


def test_classic_recipe_is_the_original_bit_for_bit():
    """Hashes of the recipe on the base commit (dc0c4d2), before the family existed."""
    if np.__version__.split(".")[:2] != ["2", "4"]:
        pytest.skip("reference hashes were made with numpy 2.4")
    for (shape, seed, index), expected in [(((48, 48, 32), 0, 0), "e9834596cd5c7baa"),
                                           (((48, 48, 32), 3, 2), "8ffd976d2198a37b")]:
        c = make_case(shape, seed=seed, index=index, difficulty="classic")
        digest = hashlib.sha256(c.images.tobytes() + c.label.tobytes() + c.tissue.tobytes()).hexdigest()[:16]
        assert digest == expected, (shape, seed, index)


def test_determinism_per_seed_and_kind():
    for kind in ("pre", "post"):
        a, b = make_case(SHAPE, seed=5, index=3, kind=kind), make_case(SHAPE, seed=5, index=3, kind=kind)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.label, b.label)
        assert a.params == b.params
        for other in (make_case(SHAPE, seed=6, index=3, kind=kind), make_case(SHAPE, seed=5, index=4, kind=kind)):
            assert not np.array_equal(a.label, other.label)
    assert not np.array_equal(make_case(SHAPE, seed=5, index=3).label,
                              make_case(SHAPE, seed=5, index=3, kind="post").label)
    # Acquisition has its own stream: another noise range leaves anatomy and lesions as they were.
    quiet = dataclasses.replace(phantom_ranges(), noise=(0.0, 0.0))
    a, b = make_case(SHAPE, seed=5, index=3), make_case(SHAPE, seed=5, index=3, ranges=quiet)
    assert np.array_equal(a.label, b.label) and np.array_equal(a.tissue, b.tissue)
    assert not np.array_equal(a.images, b.images)


def test_ids_types_and_skull_stripping(pre, post):
    assert pre[0].case_id == "Phantom-00000-000" and post[3].case_id == "PhantomPost-00003-000"
    for case in pre + post:
        brain = case.tissue > 0
        assert case.images.dtype == np.float32 and case.label.dtype == np.uint8
        assert np.array_equal(case.images, np.rint(case.images))
        for m in range(4):
            assert np.array_equal(case.images[m] > 0, brain)  # >= 1 inside, 0 outside
        assert np.all(brain[case.label > 0]) and case.label.max() <= 3
        assert case.has_necrosis == bool((case.label == 1).any())
        assert case.has_enhancement == bool((case.label == 3).any())


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels just outside ``mask`` (6-neighbourhood)."""
    return ndimage.binary_dilation(mask) & ~mask


def test_nesting_pre(pre):
    """Edema wraps the tumour core (which only touches healthy tissue where edema cannot go:
    CSF, cortex); label 1 is wrapped by enhancement or edema, never mostly by healthy tissue."""
    for case in pre:
        lab = case.label
        tc = (lab == 1) | (lab == 3)
        if not tc.any():
            continue
        ring = _boundary(tc) & (case.tissue > 0)
        healthy = ring & (lab == 0) & (case.tissue == WM)
        assert healthy.sum() <= 0.5 * ring.sum(), case.case_id
        ncr = lab == 1
        if ncr.any():
            ring = _boundary(ncr) & (case.tissue > 0)
            assert (ring & (lab == 0) & (case.tissue == WM)).sum() <= 0.5 * ring.sum(), case.case_id
        assert case.cavity is None


def test_post_cavity_is_not_tumour_and_residue_lines_it(post):
    for case in post:
        cav = case.cavity
        assert cav.any(), case.case_id
        assert np.all(case.label[cav] == 0)
        assert np.all(np.isin(case.appearance[cav], (codes.CAVITY, codes.BLOOD)))
        # FLAIR change (label 2) borders the cavity: a cavity is never bare healthy tissue all round.
        ring = _boundary(cav) & (case.tissue > 0) & ~cav
        assert (case.label[ring] > 0).mean() > 0.3, case.case_id
        near = ndimage.binary_dilation(cav, iterations=4)
        resected_et = (case.label == 3) & near
        details = case.params["lesion_details"]
        assert details[0]["resected"] and not any(d["resected"] for d in details[1:])
        if details[0]["enhancement"]:
            assert resected_et.any(), case.case_id


# (modality, brighter code, darker code): per-tissue contrast signs of both kinds.
SIGNS = [
    ("t1n", WM, GM), ("t1n", WM, CSF), ("t1n", WM, codes.ED), ("t1c", codes.ET, WM), ("t1c", WM, codes.NCR),
    ("t2w", codes.ED, WM), ("t2w", CSF, WM), ("t2w", GM, WM), ("t2w", codes.NCR, WM), ("t2f", codes.ED, WM),
    ("t2f", WM, CSF), ("t2f", codes.ED, codes.NCR), ("t2f", codes.NET, WM), ("t1c", codes.ET, codes.NET),
    ("t1n", WM, codes.CAVITY), ("t2w", codes.CAVITY, WM), ("t1n", codes.BLOOD, WM), ("t1c", codes.VESSEL, WM),
    ("t2w", WM, codes.VESSEL), ("t2f", codes.WMH, WM),
]


def test_contrast_table_signs():
    for modality, bright, dark in SIGNS:
        assert CONTRAST[MODS[modality], bright] > CONTRAST[MODS[modality], dark], (modality, bright, dark)


@pytest.mark.parametrize("kind", ["pre", "post"])
def test_contrast_signs_per_tissue(kind):
    """With the acquisition's blur, bias, noise and nonlinearity switched off, every voxel shows its
    tissue's drawn contrast: the signs hold in every case, whatever the jitter and overlap drew."""
    clean = dataclasses.replace(phantom_ranges("hard", kind), pv_sigma=(0.0, 0.0), thick_slice_share=0.0,
                                bias=(0.0, 0.0), noise=(0.0, 0.0), gamma=(1.0, 1.0), offset=(0.0, 0.0),
                                texture=(0.0, 0.0), vessels=(3, 6), wm_lesions=(2, 4))
    seen = set()
    for i in range(10):
        case = make_case(SHAPE, seed=4, index=i, kind=kind, ranges=clean)
        code = case.appearance
        for modality, bright, dark in SIGNS:
            a, b = code == bright, code == dark
            if a.sum() < 2 or b.sum() < 2:
                continue
            seen.add((modality, bright, dark))
            img = case.images[MODS[modality]]
            assert np.median(img[a]) > np.median(img[b]), (case.case_id, modality, bright, dark)
    assert len(seen) >= (len(SIGNS) - 2 if kind == "post" else len(SIGNS) - 5)  # cavity/blood only post


def test_large_region_signs_survive_the_hard_acquisition(pre, post):
    """Through blur, thick slices, bias, noise and gamma: FLAIR edema brighter than the white matter
    around it, T2 CSF brighter than white matter, T2 cavity fluid brighter than white matter."""
    for case in pre + post:
        wt = case.label > 0
        around = ndimage.binary_dilation(wt, iterations=6) & ~ndimage.binary_dilation(wt, iterations=2)
        wm = around & (case.tissue == WM) & (case.label == 0) & (case.appearance == WM)
        ed = (case.label == 2) & (case.appearance == codes.ED)
        if ed.sum() > 20 and wm.sum() > 20:
            assert np.median(case.images[3][ed]) > np.median(case.images[3][wm]), case.case_id
        healthy_wm = (case.appearance == WM) & (case.label == 0)
        assert np.median(case.images[2][case.appearance == CSF]) > np.median(case.images[2][healthy_wm])
        if case.cavity is not None and (case.appearance == codes.CAVITY).sum() > 20:
            fluid = case.appearance == codes.CAVITY
            assert np.median(case.images[2][fluid]) > np.median(case.images[2][healthy_wm]), case.case_id


@pytest.mark.parametrize("kind", ["pre", "post"])
def test_ranges_covered_over_50_cases(kind):
    """The hard preset actually varies what it says: multifocal share, no-necrosis share (post as in
    MU-Glioma-Post: most without), cavity in every post case, sizes, acquisition."""
    cases = [make_case((32, 32, 24), seed=9, index=i, kind=kind) for i in range(50)]
    r = phantom_ranges("hard", kind)
    multifocal = np.mean([c.lesions > 1 for c in cases])
    no_necrosis = np.mean([not c.has_necrosis for c in cases])
    no_enhancement = np.mean([not c.has_enhancement for c in cases])
    assert abs(multifocal - r.multifocal_share) < 0.15
    separate = [ndimage.label(c.label > 0, structure=np.ones((3, 3, 3)))[1] for c in cases]
    assert max(separate) >= 2  # multifocal lesions are separate components
    if kind == "pre":
        assert 0.05 < no_necrosis < 0.45 and 0.0 < no_enhancement < 0.3
        assert all(c.cavity is None for c in cases)
    else:
        assert 0.45 < no_necrosis < 0.85 and 0.1 < no_enhancement < 0.6
        assert all(c.cavity.any() for c in cases)
    fractions = np.array([(c.label > 0).sum() / (c.tissue > 0).sum() for c in cases])
    assert fractions.max() > 4 * fractions.min()
    acq = [c.params["acquisition"] for c in cases]
    assert any(a >= 0 for x in acq for a in x["thick_axis"]) and any(a < 0 for x in acq for a in x["thick_axis"])
    levels = np.array([x["wm_level"] for x in acq])
    assert levels.max() > 10 * levels.min()
    noise = np.array([x["noise"] for x in acq])
    assert noise.min() < 0.02 and noise.max() > 0.06
    looks = [c.params["look_alikes"] for c in cases]
    assert any(x["vessels"] > 0 for x in looks) and any(x["wm_lesions"] > 0 for x in looks)


def test_difficulties_differ():
    easy = [make_case(SHAPE, seed=1, index=i, difficulty="easy") for i in range(8)]
    assert all(c.lesions == 1 and c.params["look_alikes"]["vessels"] == 0 for c in easy)
    assert all(x < 0 for c in easy for x in c.params["acquisition"]["thick_axis"])
    with pytest.raises(ValueError, match="classic"):
        make_case(SHAPE, difficulty="classic", kind="post")
    with pytest.raises(ValueError):
        make_case(SHAPE, difficulty="brutal")
    with pytest.raises(ValueError):
        make_case(SHAPE, kind="during")


def test_ranges_validation_and_files(tmp_path):
    with pytest.raises(ValueError, match="lo <= hi"):
        PhantomRanges(noise=(0.1, 0.01))
    with pytest.raises(ValueError, match="share"):
        PhantomRanges(multifocal_share=1.5)
    path = tmp_path / "r.toml"
    path.write_text("noise = [0.0, 0.01]\nmax_lesions = 1\n")
    r = load_ranges(path, phantom_ranges())
    assert r.noise == (0.0, 0.01) and r.max_lesions == 1 and r.vessels == phantom_ranges().vessels
    path.write_text("nois = [0.0, 0.01]\n")
    with pytest.raises(ValueError, match="nois"):
        load_ranges(path, phantom_ranges())
    # A dataset records its ranges; reading them back gives the same preset.
    write_dataset(tmp_path / "d", 1, shape=(24, 24, 16), seed=0, progress=False, kind="post")
    assert load_ranges(tmp_path / "d" / "synth.toml", PhantomRanges()) == phantom_ranges("hard", "post")


def test_written_cases_read_back(tmp_path):
    folders = write_dataset(tmp_path, 2, shape=(24, 24, 16), seed=3, progress=False, kind="post", difficulty="medium")
    refs = list_cases(tmp_path)
    assert [r.case_id for r in refs] == [f.name for f in folders] == ["PhantomPost-00000-000", "PhantomPost-00001-000"]
    case = load_case(refs[1])
    made = make_case((24, 24, 16), seed=3, index=1, kind="post", difficulty="medium")
    assert np.array_equal(case.images, made.images) and np.array_equal(case.label, made.label)


def test_cli_synth_kinds_preview_and_errors(tmp_path, capsys):
    out, png = tmp_path / "post", tmp_path / "preview.png"
    assert main(["synth", "--out", str(out), "--cases", "2", "--shape", "24", "24", "16", "--kind", "post",
                 "--preview", str(png), "--quiet"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hard, post-operative" in capsys.readouterr().out
    assert [r.case_id for r in list_cases(out)] == ["PhantomPost-00000-000", "PhantomPost-00001-000"]
    for argv, words in [(["--kind", "post", "--difficulty", "classic"], "classic"),
                        (["--ranges", str(tmp_path / "missing.toml")], "not found"),
                        (["--preview-cases", "0"], "--preview-cases")]:
        bad = tmp_path / "bad"
        assert main(["synth", "--out", str(bad), "--shape", "24", "24", "16", "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and err[0].startswith("neumours: error:")
        assert not bad.exists()
