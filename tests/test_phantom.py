"""Tests of the synthetic BraTS-style phantom (neumours.data.phantom), on small volumes.

The case-level assertions here (labels, nesting, contrasts, variation) describe the
classic recipe (``difficulty="classic"``, the original single recipe, kept bit for bit);
the phantom family's own tests are in tests/test_phantom_family.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neumours.data import phantom
from neumours.data.phantom import PhantomCase, make_case, write_case, write_dataset

SHAPE = (48, 48, 32)
MODS = {name: m for m, name in enumerate(("t1n", "t1c", "t2w", "t2f"))}
SEEDS = range(12)


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [make_case(SHAPE, seed=s, index=0, difficulty="classic") for s in SEEDS]


def _brain(case: PhantomCase) -> np.ndarray:
    return (case.images > 0).any(axis=0)


def test_types_shapes_and_affine(cases):
    for case in cases:
        assert case.images.shape == (4, *SHAPE) and case.images.dtype == np.float32
        assert case.label.shape == SHAPE and case.label.dtype == np.uint8
        assert case.affine.shape == (4, 4) and case.affine.dtype == np.float64
        assert np.all(np.isfinite(case.images)) and case.images.min() >= 0
        assert np.array_equal(case.images, np.rint(case.images))  # integer-valued: int16 on disk
        np.testing.assert_allclose(np.diag(case.affine), 1.0)
        np.testing.assert_allclose(case.affine @ [*(np.array(SHAPE) - 1) / 2, 1], [0, 0, 0, 1])
    assert cases[0].case_id == "Phantom-00000-000"
    assert make_case(SHAPE, index=7).case_id == "Phantom-00007-000"
    assert make_case(SHAPE, case_id="X-1").case_id == "X-1"


def test_labels_present(cases):
    for case in cases:
        present = set(np.unique(case.label).tolist())
        assert {0, 2, 3} <= present <= {0, 1, 2, 3}
        assert (1 in present) == case.has_necrosis
    kinds = {case.has_necrosis for case in cases}
    assert kinds == {True, False}


def test_nesting_and_skull_stripping(cases):
    for case in cases:
        lab = case.label
        brain = _brain(case)
        # Skull-stripped: every modality is nonzero on exactly the brain, 0 elsewhere.
        for m in range(4):
            assert np.array_equal(case.images[m] > 0, brain)
        assert 0.15 < brain.mean() < 0.5
        assert np.all(brain[lab > 0])  # tumour inside the brain
        assert np.array_equal(case.tissue > 0, brain)
        # NCR is enclosed by the enhancing rim (a hole of ET), so NCR ⊂ TC ⊂ WT nest.
        ncr = lab == 1
        assert np.all(ndimage.binary_fill_holes(lab == 3)[ncr])
        wt = (lab > 0).sum() / brain.sum()
        assert 0.01 < wt < 0.15


# (modality, brighter region, darker region): qualitative MRI contrasts of real gliomas.
CONTRASTS = [
    ("t1n", "WM", "GM"),
    ("t1n", "WM", "CSF"),
    ("t1n", "WM", "ED"),
    ("t1c", "ET", "WM"),
    ("t1c", "WM", "NCR"),
    ("t2w", "ED", "WM"),
    ("t2w", "CSF", "WM"),
    ("t2w", "CSF", "ED"),
    ("t2w", "GM", "WM"),
    ("t2w", "NCR", "WM"),
    ("t2f", "ED", "WM"),
    ("t2f", "WM", "CSF"),
    ("t2f", "ED", "NCR"),
]


@pytest.mark.parametrize("modality,bright,dark", CONTRASTS)
def test_contrast_signs(cases, modality, bright, dark):
    for case in cases:
        healthy = case.label == 0
        regions = {
            "WM": healthy & (case.tissue == 3), "GM": healthy & (case.tissue == 2),
            "CSF": healthy & (case.tissue == 1),
            "ED": case.label == 2, "ET": case.label == 3, "NCR": case.label == 1,
        }
        if not (regions[bright].any() and regions[dark].any()):
            continue  # no necrosis in this case
        img = case.images[MODS[modality]]
        assert np.median(img[regions[bright]]) > np.median(img[regions[dark]]), case.case_id


def test_variation_between_cases(cases):
    centroids = np.array([np.argwhere(c.label > 0).mean(axis=0) for c in cases])
    volumes = np.array([(c.label > 0).sum() for c in cases])
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert np.min(gaps[np.triu_indices(len(cases), 1)]) > 0.5
    assert volumes.max() > 1.5 * volumes.min()
    # White-matter level per modality differs between cases (scanner/protocol scale).
    wm = np.array([[np.median(c.images[m][(c.tissue == 3) & (c.label == 0)]) for m in range(4)]
                   for c in cases])
    assert np.all(wm.max(axis=0) > 2 * wm.min(axis=0))
    # Tumour is off the midline (mostly one hemisphere).
    sides = np.sign(centroids[:, 0] - (SHAPE[0] - 1) / 2)
    assert set(sides.tolist()) == {-1.0, 1.0}


def test_determinism():
    a, b = make_case(SHAPE, seed=3, index=2), make_case(SHAPE, seed=3, index=2)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.label, b.label)
    assert a.has_necrosis == b.has_necrosis
    for other in (make_case(SHAPE, seed=4, index=2), make_case(SHAPE, seed=3, index=3)):
        assert not np.array_equal(a.images, other.images)
        assert not np.array_equal(a.label, other.label)


def test_write_dataset_layout_and_reproducible(tmp_path):
    nib = pytest.importorskip("nibabel")
    first = write_dataset(tmp_path / "a", 2, shape=SHAPE, seed=5, progress=False)
    second = write_dataset(tmp_path / "b", 2, shape=SHAPE, seed=5, progress=False)
    ids = ["Phantom-00000-000", "Phantom-00001-000"]
    assert [p.name for p in first] == ids and [p.name for p in second] == ids
    suffixes = ["t1n", "t1c", "t2w", "t2f", "seg"]
    for index, (da, db) in enumerate(zip(first, second)):
        names = sorted(p.name for p in da.iterdir())
        assert names == sorted(f"{da.name}-{s}.nii.gz" for s in suffixes)  # no temp files left
        case = make_case(SHAPE, seed=5, index=index)
        for m, s in enumerate(suffixes):
            ia, ib = nib.load(da / f"{da.name}-{s}.nii.gz"), nib.load(db / f"{db.name}-{s}.nii.gz")
            xa, xb = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
            assert np.array_equal(xa, xb)
            assert (da / f"{da.name}-{s}.nii.gz").read_bytes() == (db / f"{db.name}-{s}.nii.gz").read_bytes()
            assert ia.header.get_zooms() == (1.0, 1.0, 1.0)
            np.testing.assert_allclose(ia.affine, case.affine)
            if s == "seg":
                assert xa.dtype == np.uint8 and np.array_equal(xa, case.label)
            else:
                assert xa.dtype == np.int16 and np.array_equal(xa, case.images[m])


def test_write_case_float_fallback(tmp_path):
    nib = pytest.importorskip("nibabel")
    case = make_case(SHAPE, seed=1)
    case.images = case.images * np.float32(0.5)  # not integer-valued any more
    folder = write_case(case, tmp_path)
    data = np.asanyarray(nib.load(folder / f"{case.case_id}-t2w.nii.gz").dataobj)
    assert data.dtype == np.float32 and np.array_equal(data, case.images[2])


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_case((8, 48, 32))
    with pytest.raises(ValueError):
        make_case(SHAPE, anatomy="atlas")
    try:
        import nilearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="nilearn"):
            make_case(SHAPE, anatomy="mni")
    assert phantom._MODALITIES == tuple(MODS)


def test_modality_order_matches_data_layer():
    layouts = pytest.importorskip("neumours.data.layouts")
    assert phantom._MODALITIES == tuple(layouts.MODALITIES)
