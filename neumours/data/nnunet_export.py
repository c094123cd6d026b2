"""Write a dataset as an nnU-Net v2 raw dataset, for the paper's baseline (``neumours export-nnunet``).

Layout written under ``out`` (which must be absent or empty; everything is built
in a temporary sibling folder and renamed, so a failure leaves no partial dataset,
and the temporary folder a killed export leaves is removed by the next one)::

    out/Dataset<NNN>_<name>/
        imagesTr/<case>_0000.nii.gz ... <case>_0003.nii.gz   # MODALITIES order: t1n, t1c, t2w, t2f
        labelsTr/<case>.nii.gz                               # uint8, 0 background, 1 NCR, 2 ED, 3 ET
        dataset.json
        splits_final.json   # copy to nnUNet_preprocessed/Dataset<NNN>_<name>/ after planning

Labels: ``labels`` maps names to values. With ``regions=True`` nnU-Net trains
region-based (sigmoid per region, as its BraTS configuration does): whole tumour
{1, 2, 3}, tumour core {1, 3}, enhancing {3}, painted back to labels in
``regions_class_order`` (2, 1, 3): WT as ED, then TC over it as NCR, then ET.

Splits: fold 0 is Neumours's own training split (``split_cases(cases, 0.1, seed)``:
the validation cases INR training holds out); with ``folds`` > 1, the folds of
``kfold(cases, folds, seed)`` instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from neumours import strict_json
from neumours.conventions import CLASS_NAMES, MODALITIES
from neumours.data.case import load_case, save_label
from neumours.atomic import make_folder, remove_stale_temporaries, temporary_name
from neumours.data.layouts import case_files, list_cases
from neumours.data.split import kfold, split_cases
from neumours.errors import NeumoursDataError, NeumoursError
from neumours.outputs import Output, check_outputs, write_error

#: nnU-Net channel names per modality (nnU-Net z-scores every non-CT channel).
CHANNEL_NAMES = {"t1n": "T1", "t1c": "T1Gd", "t2w": "T2", "t2f": "FLAIR"}
#: Region-based labels for our label values (1 NCR, 2 ED, 3 ET) and the painting order back to labels.
REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [3]}
REGIONS_CLASS_ORDER = [2, 1, 3]
FILE_ENDING = ".nii.gz"


def dataset_name(dataset_id: int, name: str) -> str:
    """``Dataset<NNN>_<name>``, the folder name nnU-Net requires (id 1..999)."""
    if not 1 <= dataset_id <= 999:
        raise NeumoursError(f"--dataset-id must be 1..999 (nnU-Net's three digits), got {dataset_id}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise NeumoursError(f"--name must be letters, digits, '-' or '_', got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def dataset_json(num_training: int, regions: bool = False) -> dict:
    """The ``dataset.json`` of the export: channel names, labels, numTraining, file ending."""
    out = {
        "channel_names": {str(i): CHANNEL_NAMES[m] for i, m in enumerate(MODALITIES)},
        "labels": dict(REGION_LABELS) if regions else {n: i for i, n in enumerate(CLASS_NAMES)},
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "description": "exported by neumours export-nnunet; label values 0 background, 1 NCR, 2 ED, 3 ET",
    }
    if regions:
        out["regions_class_order"] = list(REGIONS_CLASS_ORDER)
    return out


def splits(case_ids: list[str], folds: int = 1, seed: int = 0) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` content: one fold (our training split) or ``folds`` k-fold folds."""
    if folds < 1:
        raise NeumoursError(f"--folds must be at least 1, got {folds}")
    if folds == 1:
        train, val = split_cases(case_ids, 0.1, seed)
        return [{"train": list(train), "val": list(val)}]
    if folds > len(case_ids):
        raise NeumoursError(f"--folds {folds} needs at least {folds} cases, got {len(case_ids)}")
    return [{"train": list(t), "val": list(v)} for t, v in kfold(case_ids, folds, seed)]


def _write_images(case, images_dir: Path) -> None:
    header = case.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    for channel in range(len(MODALITIES)):
        img = nib.Nifti1Image(np.ascontiguousarray(case.images[channel], dtype=np.float32), case.affine, header)
        nib.save(img, images_dir / f"{case.case_id}_{channel:04d}{FILE_ENDING}")


def export_nnunet(data: str | os.PathLike, out: str | os.PathLike, dataset_id: int, name: str = "Neumours",
                  regions: bool = False, folds: int = 1, seed: int = 0, progress: bool = True) -> Path:
    """Export every labelled case of ``data`` (any layout :func:`list_cases` reads) to ``out``.

    Returns:
        The dataset folder ``out/Dataset<NNN>_<name>``.

    Raises:
        NeumoursError: ``out`` exists and is not an empty folder, a case has no labels, a bad
            id/name/fold count, or a case fails to load (naming the file); nothing is left behind.
    """
    from tqdm import tqdm

    folder = dataset_name(dataset_id, name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NeumoursDataError(out, "output exists and is not an empty folder; give a new one")
    refs = list_cases(data)
    check_outputs([Output(out, "nnU-Net raw output folder", folder=True)], case_files(refs))
    unlabelled = [r.case_id for r in refs if not r.has_label]
    if unlabelled:
        raise NeumoursDataError(data, f"case {unlabelled[0]} has no label file "
                                      f"({len(unlabelled)} case(s) without labels); nnU-Net trains on labelled cases")
    ids = [r.case_id for r in refs]
    fold_list = splits(ids, folds, seed)
    make_folder(out.parent)
    remove_stale_temporaries(out.parent, out.name)  # what a killed export left
    tmp = temporary_name(out)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise write_error(out, exc) from None
    try:
        root = tmp / folder
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for ref in tqdm(refs, desc="export", unit="case", disable=not progress or len(refs) < 2):
            case = load_case(ref)
            _write_images(case, root / "imagesTr")
            save_label(case.label, root / "labelsTr" / f"{case.case_id}{FILE_ENDING}", like=case)
        (root / "dataset.json").write_text(strict_json.dumps(dataset_json(len(refs), regions), indent=2) + "\n")
        (root / "splits_final.json").write_text(strict_json.dumps(fold_list, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:  # a full disk half-way: one line, nothing left
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / folder
