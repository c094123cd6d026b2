"""NIfTI data layer: case layouts, loading and saving, normalisation, splits.

``neumours.data.phantom`` (synthetic cases) is a separate module, imported
explicitly; it is not re-exported here.
"""

from __future__ import annotations

from neumours.data.case import Case, CaseFailure, check_case, check_cases, load_case, save_label
from neumours.data.layouts import MODALITIES, CaseRef, list_cases
from neumours.data.nifti import read_nifti
from neumours.data.normalise import brain_mask, normalise
from neumours.data.split import kfold, split_cases

__all__ = [
    "Case",
    "CaseFailure",
    "CaseRef",
    "MODALITIES",
    "brain_mask",
    "check_case",
    "check_cases",
    "kfold",
    "list_cases",
    "load_case",
    "normalise",
    "read_nifti",
    "save_label",
    "split_cases",
]
