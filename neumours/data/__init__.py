"""NIfTI data layer: case layouts, loading and saving, normalisation, splits.

``nifti`` (reading with validation and a fast gzip path, atomic writing),
``layouts`` (BraTS, MU-Glioma-Post and nnU-Net raw: ``list_cases``, ``CaseRef``),
``case`` (``Case``, ``load_case``, ``save_label``), ``normalise`` (brain z-score),
``split`` (``split_cases``, ``kfold``). ``phantom`` and ``phantom_anatomy``
(synthetic cases) are imported explicitly; they are not re-exported here.
"""

from __future__ import annotations

from neumours.data.case import Case, load_case, save_label
from neumours.data.layouts import MODALITIES, CaseRef, list_cases
from neumours.data.nifti import read_nifti
from neumours.data.normalise import brain_mask, normalise
from neumours.data.split import kfold, split_cases

__all__ = [
    "Case",
    "CaseRef",
    "MODALITIES",
    "brain_mask",
    "kfold",
    "list_cases",
    "load_case",
    "normalise",
    "read_nifti",
    "save_label",
    "split_cases",
]
