"""One case in memory (:class:`Case`), :func:`load_case` and :func:`save_label`.

Loading reads the four modalities (and the label) concurrently: the fast gzip
path in :mod:`neumours.data.nifti` releases the GIL while inflating, so on a
multi-core machine the files decompress in parallel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from neumours.data.layouts import MODALITIES, CaseRef, resolve_case
from neumours.data.nifti import read_image_volume, read_label_volume, write_nifti
from neumours.errors import NeumoursDataError

# Affines "agree" when every entry is within this tolerance: BraTS exports
# carry float32 rounding noise of ~1e-5 between modalities of one case.
_AFFINE_RTOL = 1e-4
_AFFINE_ATOL = 1e-3


@dataclass(eq=False)
class Case:
    """A loaded case: four co-registered MRI volumes and, if present, its labels.

    Attributes:
        case_id: identifier of the case (see :class:`~neumours.data.layouts.CaseRef`).
        images: float32, shape (4, X, Y, Z): raw intensities (scaling from the
            header applied, not normalised) in :data:`MODALITIES` order.
        label: uint8, shape (X, Y, Z), values 0..3 (legacy label 4 already
            mapped to 3), or ``None`` when the case has no label file.
        affine: float64, shape (4, 4): voxel -> scanner (RAS+ mm) transform of
            the first modality (all modalities agree with it).
        spacing: voxel size in mm along the three array axes, from the header zooms.
        header: the nibabel header of the first modality, kept so that
            :func:`save_label` writes outputs that overlay the input exactly.
        paths: modality -> source file, plus ``"seg"`` when a label was read.
        layout: ``"brats"``, ``"mu-glioma-post"`` or ``"nnunet"``.
    """

    case_id: str
    images: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header
    paths: dict[str, Path] = field(default_factory=dict)
    layout: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (X, Y, Z)."""
        return tuple(int(n) for n in self.images.shape[1:])  # type: ignore[return-value]


def _affines_agree(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL))


def _check_same_grid(
    ref_path: Path, ref_shape: tuple[int, ...], ref_affine: np.ndarray,
    path: Path, shape: tuple[int, ...], affine: np.ndarray,
) -> None:
    """Raise if ``path``'s voxel grid (shape, affine) differs from ``ref_path``'s."""
    if shape != ref_shape:
        raise NeumoursDataError(
            path, f"shape {shape} disagrees with {ref_path.name} shape {ref_shape} (volumes must be co-registered)"
        )
    if not _affines_agree(affine, ref_affine):
        diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(ref_affine))))
        raise NeumoursDataError(
            path,
            f"affine disagrees with {ref_path.name} (largest difference {diff:.4g}; "
            "volumes must be co-registered on the same voxel grid)",
        )


def _read_one(item: tuple[str, Path]) -> tuple[np.ndarray, nib.Nifti1Image]:
    key, path = item
    return read_label_volume(path) if key == "seg" else read_image_volume(path)


def load_case(source: CaseRef | str | os.PathLike) -> Case:
    """Load and validate one case.

    Args:
        source: a :class:`~neumours.data.layouts.CaseRef` from
            :func:`~neumours.data.layouts.list_cases`, a case folder, a virtual
            ``<folder>/<case id>`` path (nnU-Net: ``<dataset>/imagesTr/<case>``
            or ``<dataset>/<case>``), or one modality file of the case.

    Returns:
        The :class:`Case`, images float32 (4, X, Y, Z), label uint8 (X, Y, Z) or None.

    Raises:
        NeumoursDataError: naming the offending file for a missing path or
            modality, a corrupt/truncated/non-NIfTI file, a volume that is not
            3-D, NaN/Inf voxels, an all-zero modality, bad label values, or
            modalities/label whose shapes or affines disagree.
    """
    ref = resolve_case(source)
    items = [(m, Path(ref.paths[m])) for m in MODALITIES]
    if "seg" in ref.paths:
        items.append(("seg", Path(ref.paths["seg"])))
    with ThreadPoolExecutor(max_workers=min(len(items), max(2, os.cpu_count() or 1))) as pool:
        results = list(pool.map(_read_one, items))  # re-raises the first failure in modality order

    first_path = items[0][1]
    first_data, first_img = results[0]
    shape = first_data.shape
    for (key, path), (data, img) in zip(items[1:], results[1:]):
        _check_same_grid(first_path, shape, first_img.affine, path, data.shape, img.affine)

    images = np.stack([results[i][0] for i in range(len(MODALITIES))])
    label = results[len(MODALITIES)][0] if len(results) > len(MODALITIES) else None
    header = first_img.header
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    return Case(
        case_id=ref.case_id,
        images=images,
        label=label,
        affine=np.asarray(first_img.affine, dtype=np.float64).copy(),
        spacing=spacing,  # type: ignore[arg-type]
        header=header,
        paths={key: path for key, path in items},
        layout=ref.layout,
    )


def save_label(label: Any, path: str | os.PathLike, like: Case) -> Path:
    """Write a label volume that overlays ``like`` exactly (3D Slicer, ITK-SNAP).

    The source affine and header of ``like`` are reused (sform/qform codes,
    orientation, units); the data type is set to uint8 with no intensity
    scaling so viewers read the labels as they are. The write is atomic.

    Args:
        label: integer-valued array of shape ``like.shape`` (X, Y, Z), values
            0..3 (numpy array or anything ``np.asarray`` accepts, e.g. a CPU tensor).
        path: output file ending in ``.nii.gz`` or ``.nii``.
        like: the case the labels were predicted for.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        NeumoursDataError: wrong shape, values outside 0..3 or non-integral,
            a bad output suffix, or the file cannot be written.
    """
    path = Path(path)
    arr = np.asarray(label)
    if arr.shape != like.shape:
        raise NeumoursDataError(path, f"label shape {arr.shape} does not match case {like.case_id} shape {like.shape}")
    if arr.dtype.kind not in "biuf":
        raise NeumoursDataError(path, f"label data type {arr.dtype} is not numeric")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise NeumoursDataError(path, "label values must be integers 0..3 (found non-integer or NaN values)")
    if arr.size and (arr.min() < 0 or arr.max() > 3):
        raise NeumoursDataError(path, f"label values must be 0..3 (found {arr.min():g}..{arr.max():g})")
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = 0
    header["cal_max"] = 3
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(arr.astype(np.uint8), like.affine, header)
    write_nifti(img, path)
    return path
