"""Tests of the NIfTI data layer: layouts, load/save, validation, normalisation, splits."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neumours.data import (
    MODALITIES,
    Case,
    brain_mask,
    kfold,
    list_cases,
    load_case,
    normalise,
    read_nifti,
    save_label,
    split_cases,
)
from neumours.data.layouts import CaseRef
from neumours.errors import NeumoursDataError

SHAPE = (12, 10, 8)
AFFINE = np.array(
    [
        [-1.2, 0.0, 0.0, 30.5],
        [0.0, 1.2, 0.0, -12.25],
        [0.0, 0.0, 1.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


# ---------------------------------------------------------------------------
# Helpers that write tiny cases
# ---------------------------------------------------------------------------


def _brain(shape=SHAPE) -> np.ndarray:
    x, y, z = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    r = [n / 2.2 for n in shape]
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1


def _volumes(shape=SHAPE, seed=0) -> np.ndarray:
    """int16 (4, X, Y, Z): distinct per-modality levels inside a brain ellipsoid, 0 outside."""
    rng = np.random.default_rng(seed)
    brain = _brain(shape)
    vols = np.zeros((4, *shape), np.int16)
    for i in range(4):
        vols[i][brain] = 100 * (i + 1) + rng.integers(0, 50, size=int(brain.sum()))
    return vols


def _label(shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[4:7, 3:6, 2:5] = 2
    lab[5:6, 4:5, 3:4] = 1
    lab[4, 3, 2] = 3
    return lab


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def make_brats(root: Path, case_id="BraTS-GLI-00001-000", *, label=True, ext=".nii.gz", seed=0) -> Path:
    folder = root / case_id
    vols = _volumes(seed=seed)
    for i, m in enumerate(MODALITIES):
        _save(folder / f"{case_id}-{m}{ext}", vols[i])
    if label is True:
        label = _label()
    if label is not None and label is not False:
        _save(folder / f"{case_id}-seg{ext}", np.asarray(label))
    return folder


def make_mu(root: Path, patient="PatientID_0001", timepoint="Timepoint_1", *, seed=1) -> Path:
    folder = root / patient / timepoint
    stem = f"{patient}_{timepoint}"
    vols = _volumes(seed=seed)
    for i, m in enumerate(MODALITIES):
        _save(folder / f"{stem}_brain_{m}.nii.gz", vols[i])
    _save(folder / f"{stem}_tumorMask.nii.gz", _label())
    return folder


def make_nnunet(root: Path, tr=("case_a", "case_b"), ts=("case_c",), *, channel_names=None) -> Path:
    ds = root / "Dataset001_Test"
    for split, cases in (("Tr", tr), ("Ts", ts)):
        for k, case in enumerate(cases):
            vols = _volumes(seed=10 + k)
            for ch in range(4):
                _save(ds / f"images{split}" / f"{case}_{ch:04d}.nii.gz", vols[ch])
            if split == "Tr":
                _save(ds / "labelsTr" / f"{case}.nii.gz", _label())
    if channel_names is not None:
        (ds / "dataset.json").write_text(json.dumps({"channel_names": channel_names}))
    return ds


def _raises(fn, *words: str) -> NeumoursDataError:
    """Assert ``fn()`` raises NeumoursDataError whose message holds every word."""
    with pytest.raises(NeumoursDataError) as info:
        fn()
    msg = str(info.value)
    for word in words:
        assert word.lower() in msg.lower(), f"{word!r} not in {msg!r}"
    return info.value


# ---------------------------------------------------------------------------
# Round trip, scaling, labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_round_trip_brats(tmp_path, ext):
    folder = make_brats(tmp_path, ext=ext)
    case = load_case(folder)
    assert isinstance(case, Case)
    assert case.case_id == "BraTS-GLI-00001-000" and case.layout == "brats"
    assert case.images.dtype == np.float32 and case.images.shape == (4, *SHAPE)
    np.testing.assert_array_equal(case.images, _volumes().astype(np.float32))
    assert case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.label, _label())
    assert case.affine.dtype == np.float64
    np.testing.assert_allclose(case.affine, AFFINE, atol=1e-5)
    assert case.spacing == pytest.approx((1.2, 1.2, 1.5))
    assert isinstance(case.header, nib.Nifti1Header)
    assert set(case.paths) == {*MODALITIES, "seg"}

    pred = np.roll(case.label, 1, axis=0)
    out = save_label(pred, tmp_path / "out" / f"pred{ext}", like=case)
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), pred)
    np.testing.assert_allclose(img.affine, case.affine, atol=1e-6)
    assert int(img.header["sform_code"]) == int(case.header["sform_code"])
    assert int(img.header["qform_code"]) == int(case.header["qform_code"])

    # The saved label is a valid seg file for the same case.
    os.replace(out, folder / f"{case.case_id}-seg{ext}")
    again = load_case(folder)
    np.testing.assert_array_equal(again.label, pred)
    np.testing.assert_array_equal(again.affine, case.affine)


def test_scl_slope_inter_applied(tmp_path):
    folder = make_brats(tmp_path, label=None)
    path = folder / f"{folder.name}-t1c.nii.gz"
    raw = _volumes()[1]
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, path)
    case = load_case(folder)
    assert case.label is None
    np.testing.assert_allclose(case.images[1], raw.astype(np.float32) * 2 + 10)


def test_legacy_label_4_maps_to_3(tmp_path):
    lab = _label()
    lab[lab == 3] = 4
    case = load_case(make_brats(tmp_path, label=lab))
    assert case.label.max() == 3 and not (case.label == 4).any()
    np.testing.assert_array_equal(case.label, _label())


def test_float_label_with_integral_values_accepted(tmp_path):
    case = load_case(make_brats(tmp_path, label=_label().astype(np.float32)))
    np.testing.assert_array_equal(case.label, _label())


def test_trailing_singleton_axis_accepted(tmp_path):
    folder = make_brats(tmp_path, label=None)
    _save(folder / f"{folder.name}-t2w.nii.gz", _volumes()[2][..., None])
    assert load_case(folder).images.shape == (4, *SHAPE)


def test_read_nifti_returns_image(tmp_path):
    path = _save(tmp_path / "v.nii.gz", _volumes()[0])
    img = read_nifti(path)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), _volumes()[0])


# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------


def test_mu_glioma_post_layout(tmp_path):
    folder = make_mu(tmp_path)
    (ref,) = list_cases(tmp_path)
    assert ref.layout == "mu-glioma-post"
    assert ref.case_id == "PatientID_0001_Timepoint_1"
    assert ref.path == folder and ref.has_label
    case = load_case(ref)
    np.testing.assert_array_equal(case.images, _volumes(seed=1).astype(np.float32))
    np.testing.assert_array_equal(case.label, _label())
    assert load_case(folder).case_id == ref.case_id


def test_mu_tolerant_naming(tmp_path):
    folder = tmp_path / "P2" / "tp"
    vols = _volumes()
    for i, m in enumerate(MODALITIES):
        _save(folder / f"P2_tp-{m}.nii", vols[i])
    _save(folder / "P2_tp_seg.nii", _label())
    case = load_case(folder)
    assert case.case_id == "P2_tp" and case.label is not None


def test_brats2021_aliases(tmp_path):
    folder = tmp_path / "BraTS2021_00000"
    vols = _volumes()
    for i, token in enumerate(("t1", "t1ce", "t2", "flair")):
        _save(folder / f"BraTS2021_00000_{token}.nii.gz", vols[i])
    case = load_case(folder)
    np.testing.assert_array_equal(case.images, vols.astype(np.float32))


def test_nnunet_layout_and_addressing(tmp_path):
    ds = make_nnunet(tmp_path)
    refs = list_cases(ds)
    assert [(r.case_id, r.path.parent.name, r.has_label) for r in refs] == [
        ("case_a", "imagesTr", True),
        ("case_b", "imagesTr", True),
        ("case_c", "imagesTs", False),
    ]
    case = load_case(refs[0])
    # Project convention: _0000=t1n, _0001=t1c, _0002=t2w, _0003=t2f.
    np.testing.assert_array_equal(case.images, _volumes(seed=10).astype(np.float32))
    np.testing.assert_array_equal(case.label, _label())
    assert case.paths["t2f"].name == "case_a_0003.nii.gz"
    assert load_case(refs[2]).label is None
    # A CaseRef is path-like; its path string, <dataset>/<case> and a modality file all load.
    for address in (os.fspath(refs[1]), str(ds / "case_b"), ds / "imagesTr" / "case_b_0002.nii.gz"):
        assert load_case(address).case_id == "case_b"


def test_nnunet_dataset_json_channel_order(tmp_path):
    ds = make_nnunet(
        tmp_path, tr=("c1",), ts=(), channel_names={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    )
    case = load_case(ds / "imagesTr" / "c1")
    vols = _volumes(seed=10).astype(np.float32)
    np.testing.assert_array_equal(case.images, vols[[1, 2, 3, 0]])  # t1n, t1c, t2w, t2f


def test_mixed_root_lists_everything(tmp_path):
    make_brats(tmp_path / "brats", "BraTS-GLI-00002-000")
    make_brats(tmp_path / "brats", "BraTS-GLI-00001-000", label=None)
    make_mu(tmp_path / "mu")
    make_mu(tmp_path / "mu", timepoint="Timepoint_2")
    make_nnunet(tmp_path / "nn")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    refs = list_cases(tmp_path)
    assert [r.case_id for r in refs] == [
        "BraTS-GLI-00001-000",
        "BraTS-GLI-00002-000",
        "PatientID_0001_Timepoint_1",
        "PatientID_0001_Timepoint_2",
        "case_a",
        "case_b",
        "case_c",
    ]
    assert [r.layout for r in refs] == ["brats"] * 2 + ["mu-glioma-post"] * 2 + ["nnunet"] * 3
    assert refs == list_cases(str(tmp_path))
    for ref in refs:
        assert load_case(str(ref.path)).case_id == ref.case_id


def test_flat_folder_with_several_cases(tmp_path):
    for p in ("A", "B"):
        vols = _volumes()
        for i, m in enumerate(MODALITIES):
            _save(tmp_path / "flat" / f"{p}_brain_{m}.nii.gz", vols[i])
    _save(tmp_path / "flat" / "B_tumorMask.nii.gz", _label())
    refs = list_cases(tmp_path)
    assert [(r.case_id, r.has_label) for r in refs] == [("A", False), ("B", True)]
    assert load_case(tmp_path / "flat" / "B").label is not None
    _raises(lambda: load_case(tmp_path / "flat"), "flat", "2 cases")


def test_empty_root_raises(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _raises(lambda: list_cases(tmp_path / "empty"), "empty", "no cases")
    _raises(lambda: list_cases(tmp_path / "nope"), "nope", "does not exist")


# ---------------------------------------------------------------------------
# Bad input: each names the file and the problem
# ---------------------------------------------------------------------------


def test_missing_modality(tmp_path):
    folder = make_brats(tmp_path)
    (folder / f"{folder.name}-t2f.nii.gz").unlink()
    _raises(lambda: load_case(folder), f"{folder.name}-t2f", "missing modality t2f")
    _raises(lambda: list_cases(tmp_path), "missing modality t2f")


def test_nnunet_missing_channel(tmp_path):
    ds = make_nnunet(tmp_path, tr=("c1",), ts=())
    (ds / "imagesTr" / "c1_0001.nii.gz").unlink()
    _raises(lambda: list_cases(ds), "c1_0001.nii.gz", "missing modality t1c")


def test_path_does_not_exist(tmp_path):
    _raises(lambda: load_case(tmp_path / "ghost-case"), "ghost-case", "does not exist")


def test_shape_mismatch_names_both_files(tmp_path):
    folder = make_brats(tmp_path)
    _save(folder / f"{folder.name}-t2w.nii.gz", _volumes(shape=(12, 10, 9))[2])
    _raises(lambda: load_case(folder), "-t2w.nii.gz", "-t1n.nii.gz", "shape")


def test_affine_mismatch_names_both_files(tmp_path):
    folder = make_brats(tmp_path)
    moved = AFFINE.copy()
    moved[0, 3] += 5.0
    _save(folder / f"{folder.name}-t1c.nii.gz", _volumes()[1], moved)
    _raises(lambda: load_case(folder), "-t1c.nii.gz", "-t1n.nii.gz", "affine")


def test_tiny_affine_noise_tolerated(tmp_path):
    folder = make_brats(tmp_path)
    _save(folder / f"{folder.name}-t1c.nii.gz", _volumes()[1], AFFINE + 1e-5)
    load_case(folder)


def test_not_3d(tmp_path):
    folder = make_brats(tmp_path)
    _save(folder / f"{folder.name}-t1c.nii.gz", np.stack([_volumes()[1]] * 2, axis=-1))
    _raises(lambda: load_case(folder), "-t1c.nii.gz", "not 3-D")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_voxels(tmp_path, bad):
    folder = make_brats(tmp_path)
    vol = _volumes()[3].astype(np.float32)
    vol[3, 3, 3] = bad
    _save(folder / f"{folder.name}-t2f.nii.gz", vol)
    _raises(lambda: load_case(folder), "-t2f.nii.gz", "NaN/Inf")


def test_all_zero_modality(tmp_path):
    folder = make_brats(tmp_path)
    _save(folder / f"{folder.name}-t1n.nii.gz", np.zeros(SHAPE, np.int16))
    _raises(lambda: load_case(folder), "-t1n.nii.gz", "all zero")


def test_label_values_out_of_range(tmp_path):
    lab = _label()
    lab[0, 0, 0] = 5
    folder = make_brats(tmp_path, label=lab)
    _raises(lambda: load_case(folder), "-seg.nii.gz", "outside", "5")


def test_label_non_integer(tmp_path):
    lab = _label().astype(np.float32)
    lab[0, 0, 0] = 1.5
    folder = make_brats(tmp_path, label=lab)
    _raises(lambda: load_case(folder), "-seg.nii.gz", "non-integer")


def test_label_shape_mismatch(tmp_path):
    folder = make_brats(tmp_path, label=None)
    _save(folder / f"{folder.name}-seg.nii.gz", np.zeros((12, 10, 7), np.uint8))
    _raises(lambda: load_case(folder), "-seg.nii.gz", "-t1n.nii.gz", "shape")


def test_label_affine_mismatch(tmp_path):
    folder = make_brats(tmp_path, label=None)
    _save(folder / f"{folder.name}-seg.nii.gz", _label(), np.diag([1.0, 1.0, 1.0, 1.0]))
    _raises(lambda: load_case(folder), "-seg.nii.gz", "-t1n.nii.gz", "affine")


def test_truncated_gz(tmp_path):
    folder = make_brats(tmp_path)
    path = folder / f"{folder.name}-t1c.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    _raises(lambda: load_case(folder), "-t1c.nii.gz", "truncated")


def test_truncated_uncompressed_nii(tmp_path):
    folder = make_brats(tmp_path, ext=".nii")
    path = folder / f"{folder.name}-t2w.nii"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    _raises(lambda: load_case(folder), "-t2w.nii", "truncated")


def test_corrupt_gz(tmp_path):
    folder = make_brats(tmp_path)
    path = folder / f"{folder.name}-t2w.nii.gz"
    header = path.read_bytes()[:10]  # a valid gzip member header ...
    path.write_bytes(header + np.random.default_rng(0).bytes(2000))  # ... then garbage
    _raises(lambda: load_case(folder), "-t2w.nii.gz", "corrupt")


def test_not_nifti_text_file(tmp_path):
    folder = make_brats(tmp_path)
    (folder / f"{folder.name}-t1n.nii.gz").write_text("this is not an image\n" * 30)
    _raises(lambda: load_case(folder), "-t1n.nii.gz", "not a NIfTI")


def test_gzipped_non_nifti(tmp_path):
    path = tmp_path / "x-t1n.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    _raises(lambda: read_nifti(path), "x-t1n.nii.gz", "not a NIfTI")


def test_folder_without_case(tmp_path):
    _raises(lambda: load_case(tmp_path), tmp_path.name, "no case files")


# ---------------------------------------------------------------------------
# save_label validation
# ---------------------------------------------------------------------------


def test_save_label_rejects_bad_input(tmp_path):
    case = load_case(make_brats(tmp_path))
    _raises(lambda: save_label(np.zeros((3, 3, 3), np.uint8), tmp_path / "a.nii.gz", like=case), "a.nii.gz", "shape")
    bad = case.label.copy()
    bad[0, 0, 0] = 4
    _raises(lambda: save_label(bad, tmp_path / "b.nii.gz", like=case), "b.nii.gz", "0..3")
    _raises(lambda: save_label(case.label, tmp_path / "c.png", like=case), "c.png", ".nii")
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


# ---------------------------------------------------------------------------
# normalise
# ---------------------------------------------------------------------------


def test_normalise_matches_float64_formula():
    images = _volumes().astype(np.float32) * np.float32(3.7)
    images[2][_brain() & (np.indices(SHAPE)[0] < 4)] = 0  # some brain voxels zero in one modality only
    mask = brain_mask(images)
    assert mask.dtype == bool and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, _brain())
    out = normalise(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    for c in range(4):
        vals = images[c][mask].astype(np.float64)
        expect = (images[c].astype(np.float64) - vals.mean()) / vals.std()
        np.testing.assert_allclose(out[c][mask], expect[mask], rtol=1e-5, atol=1e-5)
        assert abs(out[c][mask].mean()) < 1e-5 and abs(out[c][mask].std() - 1) < 1e-5
    assert (out[:, ~mask] == 0).all()


def test_normalise_constant_modality_no_division_by_zero():
    images = _volumes().astype(np.float32)
    images[1][_brain()] = 42.0
    out = normalise(images)
    assert np.isfinite(out).all()
    assert (out[1] == 0).all()


# ---------------------------------------------------------------------------
# split / kfold
# ---------------------------------------------------------------------------


def _ids(items):
    return [getattr(i, "case_id", None) or Path(i).name for i in items]


def test_split_deterministic_and_order_independent():
    cases = [f"/data/BraTS-GLI-{i:05d}-000" for i in range(50)]
    train, val = split_cases(cases, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(cases)
    assert (train, val) == split_cases(list(reversed(cases)), 0.1, seed=3)
    assert (train, val) == split_cases(cases, val_fraction=0.1, seed=3)
    assert val != split_cases(cases, 0.1, seed=4)[1]
    assert train == sorted(train) and val == sorted(val)


def test_split_small_counts():
    assert len(split_cases(["a", "b"], 0.1)[1]) == 1  # at least one validation case
    assert len(split_cases(["a", "b", "c"], 0.9)[0]) == 1  # and at least one training case
    assert split_cases(["a"], 0.1) == (["a"], [])
    assert split_cases([], 0.1) == ([], [])
    with pytest.raises(ValueError):
        split_cases(["a", "b"], 1.0)


def test_split_uses_case_ids_of_refs(tmp_path):
    refs = [CaseRef(f"c{i}", tmp_path / f"x{i}", "brats", {}) for i in range(10)]
    paths = [tmp_path / f"c{i}" for i in range(10)]
    assert _ids(split_cases(refs, 0.3, seed=1)[1]) == _ids(split_cases(paths, 0.3, seed=1)[1])


def test_kfold_properties():
    cases = [f"case{i:03d}" for i in range(23)]
    folds = kfold(cases, 5, seed=7)
    assert len(folds) == 5
    vals = [v for _, v in folds]
    assert sorted(c for v in vals for c in v) == sorted(cases)  # disjoint and covering
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for train, val in folds:
        assert set(train).isdisjoint(val) and len(train) + len(val) == len(cases)
    assert folds == kfold(list(reversed(cases)), 5, seed=7)
    assert folds != kfold(cases, 5, seed=8)
    with pytest.raises(ValueError):
        kfold(cases, 1)
    with pytest.raises(ValueError):
        kfold(cases[:3], 4)
