"""``neumours export-nnunet``: the nnU-Net v2 raw layout, dataset.json, splits, refusals, nnU-Net's own check."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from neumours.cli.main import main
from neumours.conventions import CLASS_NAMES, MODALITIES, NUM_MODALITIES
from neumours.data import list_cases, load_case, split_cases
from neumours.data.phantom import write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "data"
    write_dataset(root, 6, shape=(24, 24, 20), seed=3, progress=False)
    return root


def test_layout_json_and_splits(data, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["export-nnunet", str(data), str(out), "--dataset-id", "7", "--quiet"]) == 0
    ds = out / "Dataset007_Neumours"
    assert "Dataset007_Neumours" in capsys.readouterr().out
    refs = list_cases(data)
    ids = [r.case_id for r in refs]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == sorted(f"{i}.nii.gz" for i in ids)
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == \
        sorted(f"{i}_{c:04d}.nii.gz" for i in ids for c in range(NUM_MODALITIES))
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {n: i for i, n in enumerate(CLASS_NAMES)}
    assert meta["numTraining"] == len(ids) and meta["file_ending"] == ".nii.gz"
    assert len(meta["channel_names"]) == NUM_MODALITIES
    folds = json.loads((ds / "splits_final.json").read_text())
    train, val = split_cases(refs, 0.1, 0)
    assert folds == [{"train": [r.case_id for r in train], "val": [r.case_id for r in val]}]
    # Voxel for voxel what load_case reads, on the same grid; and our own nnU-Net reader takes it back.
    src = load_case(refs[0])
    for c, m in enumerate(MODALITIES):
        img = nib.load(ds / "imagesTr" / f"{src.case_id}_{c:04d}.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj, dtype=np.float32), src.images[c])
        np.testing.assert_allclose(img.affine, src.affine)
    back = load_case(list_cases(ds)[0])
    np.testing.assert_array_equal(back.label, src.label)
    np.testing.assert_array_equal(back.images, src.images)


def test_regions_and_kfold(data, tmp_path):
    out = tmp_path / "raw"
    assert main(["export-nnunet", str(data), str(out), "--dataset-id", "8", "--regions", "--folds", "3",
                 "--name", "Pre", "--quiet"]) == 0
    ds = out / "Dataset008_Pre"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"]["whole tumor"] == [1, 2, 3] and meta["labels"]["tumor core"] == [1, 3]
    # painting regions in this order gives back our labels: WT -> ED(2), TC -> NCR(1), ET -> ET(3)
    assert meta["regions_class_order"] == [2, 1, 3]
    folds = json.loads((ds / "splits_final.json").read_text())
    assert len(folds) == 3 and sorted(sum((f["val"] for f in folds), [])) == sorted(r.case_id for r in list_cases(data))


@pytest.mark.parametrize("argv, message", [
    (["--dataset-id", "1000"], "1..999"),
    (["--dataset-id", "3", "--name", "a b"], "--name"),
    (["--dataset-id", "3", "--folds", "0"], "--folds"),
])
def test_bad_arguments_are_one_line_and_write_nothing(data, tmp_path, capsys, argv, message):
    out = tmp_path / "raw"
    assert main(["export-nnunet", str(data), str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumours: error:") and message in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_non_empty_output_and_leaves_nothing_on_failure(data, tmp_path, capsys):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export-nnunet", str(data), str(out), "--dataset-id", "3"]) == 2
    assert "not an empty folder" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # a corrupt case midway: no dataset, no temporary folder
    bad = tmp_path / "bad"
    write_dataset(bad, 3, shape=(24, 24, 20), seed=4, progress=False)
    victim = sorted(list_cases(bad), key=lambda r: r.case_id)[-1].paths["t2f"]
    victim.write_bytes(b"not a nifti")
    out2 = tmp_path / "raw2"
    assert main(["export-nnunet", str(bad), str(out2), "--dataset-id", "3", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("neumours: error:")
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".raw2")]


def test_nnunet_accepts_the_export(data, tmp_path):
    """nnU-Net's own dataset integrity check, where nnunetv2 is installed."""
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    out = tmp_path / "raw"
    assert main(["export-nnunet", str(data), str(out), "--dataset-id", "9", "--quiet"]) == 0
    verify.verify_dataset_integrity(str(out / "Dataset009_Neumours"), num_processes=1)
