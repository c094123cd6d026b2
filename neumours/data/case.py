"""One case in memory (:class:`Case`), :func:`load_case`, :func:`check_case(s) <check_cases>` and :func:`save_label`.

Loading reads the four modalities (and the label) concurrently: the fast gzip
path in :mod:`neumours.data.nifti` releases the GIL while inflating, and numpy
while casting and checking, so on a multi-core machine the files decode in
parallel, each straight into its slice of the case's array. A caller can take each
modality as soon as it is ready (``on_modality``: the segmenter's upload).

:func:`check_cases` validates a whole folder of cases from their headers only
(about a millisecond a file), so a command over many cases can refuse a bad
one before it writes anything, or (``keep_going``) leave it out and report it.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from neumours.data.geometry import Geometry
from neumours.data.layouts import MODALITIES, CaseRef, resolve_case
from neumours.data.nifti import Volume, header_bytes, read_header, read_volume, volume_shape, write_nifti
from neumours.errors import NeumoursDataError, NeumoursError

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
        spacing: voxel size in mm along the three array axes, from the checked
            geometry (:func:`neumours.data.geometry.voxel_spacing` of the affine).
        header: the nibabel header of the first modality, kept so that
            :func:`save_label` writes outputs that overlay the input exactly.
        paths: modality -> source file, plus ``"seg"`` when a label was read.
        layout: ``"brats"``, ``"mu-glioma-post"`` or ``"nnunet"``.
        geometry_problem: None when the headers passed the geometry checks;
            otherwise (loaded with ``force_geometry``) what is wrong with them.
    """

    case_id: str
    images: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header
    paths: dict[str, Path] = field(default_factory=dict)
    layout: str = ""
    geometry_problem: str | None = None

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
        with np.errstate(all="ignore"):  # a forced, non-finite affine: the difference is NaN or Inf
            diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(ref_affine))))
        raise NeumoursDataError(
            path,
            f"affine disagrees with {ref_path.name} (largest difference {diff:.4g}; "
            "volumes must be co-registered on the same voxel grid)",
        )


def _case_items(ref: CaseRef) -> list[tuple[str, Path]]:
    items = [(m, Path(ref.paths[m])) for m in MODALITIES]
    if "seg" in ref.paths:
        items.append(("seg", Path(ref.paths["seg"])))
    return items


class _CaseImages:
    """The (modalities, X, Y, Z) float32 array the reading threads decode the modalities into.

    Made by the first thread whose header is checked (its shape is the case's unless the
    files disagree, which the grid checks refuse afterwards); each modality of that shape
    gets its slice, so the case is never copied together after decoding (``np.stack`` of
    a 240 x 240 x 155 case: 143 MB, one thread). Every slice is Fortran-ordered, as
    nibabel's arrays are (the layout ``np.stack`` of them had).
    """

    def __init__(self, count: int):
        self.count = count
        self.array: np.ndarray | None = None
        self.granted: set[int] = set()
        self._lock = threading.Lock()

    def slot(self, index: int, shape: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            if self.array is None:
                self.array = np.empty((self.count, *shape[::-1]), np.float32).transpose(0, 3, 2, 1)
            if self.array.shape[1:] != tuple(shape):
                return None
            self.granted.add(index)
            return self.array[index]


def load_case(source: CaseRef | str | os.PathLike, force_geometry: bool = False,
              on_modality: Callable[[int, np.ndarray], None] | None = None) -> Case:
    """Load and validate one case.

    Args:
        source: a :class:`~neumours.data.layouts.CaseRef` from
            :func:`~neumours.data.layouts.list_cases`, a case folder, a virtual
            ``<folder>/<case id>`` path (nnU-Net: ``<dataset>/imagesTr/<case>``
            or ``<dataset>/<case>``), or one modality file of the case.
        on_modality: called in the calling thread with ``(index, voxels)`` for each
            modality in :data:`MODALITIES` order (voxels: its float32 (X, Y, Z) slice of
            ``Case.images``, final) as soon as it and the ones before it are decoded,
            while the later files are still being decoded: the segmenter uploads each
            one to the device meanwhile. Not called for a modality whose shape differs
            from the case's (the case is refused anyway). The case may still be refused
            after calls (a later file's error, disagreeing grids).
        force_geometry: load files whose geometry fails the checks of
            :mod:`neumours.data.geometry` (singular or non-finite affine, zero,
            negative or non-finite spacing, shear); ``Case.geometry_problem`` then
            says what is wrong, and 1 mm is assumed where no voxel size is usable.

    Returns:
        The :class:`Case`, images float32 (4, X, Y, Z), label uint8 (X, Y, Z) or None.

    Raises:
        NeumoursDataError: naming the offending file for a missing path or
            modality, a corrupt/truncated/non-NIfTI file, a volume that is not
            3-D, bad geometry, NaN/Inf voxels, an all-zero modality, bad label
            values, or modalities/label whose shapes or affines disagree.
    """
    ref = resolve_case(source)
    items = _case_items(ref)

    shared = _CaseImages(len(MODALITIES))

    def read(index: int, key: str, path: Path) -> Volume:
        into = None if key == "seg" else functools.partial(shared.slot, index)
        return read_volume(path, label=key == "seg", force_geometry=force_geometry, into=into)

    results: list[Volume] = []
    with ThreadPoolExecutor(max_workers=min(len(items), max(2, os.cpu_count() or 1))) as pool:
        futures = [pool.submit(read, i, key, path) for i, (key, path) in enumerate(items)]
        for index, future in enumerate(futures):
            results.append(future.result())  # re-raises the first failure in modality order
            if on_modality is not None and index in shared.granted:
                on_modality(index, results[index].data)

    first_path = items[0][1]
    first = results[0]
    for (key, path), volume in zip(items[1:], results[1:]):
        _check_same_grid(first_path, first.data.shape, first.img.affine, path, volume.data.shape, volume.img.affine)

    if len(shared.granted) == len(MODALITIES):
        images = shared.array
    else:  # unreachable after the grid checks; kept so that no layout assumption can go wrong silently
        images = np.stack([results[i].data for i in range(len(MODALITIES))])
    label = results[len(MODALITIES)].data if len(results) > len(MODALITIES) else None
    geometry: Geometry = first.geometry
    return Case(
        case_id=ref.case_id,
        images=images,
        label=label,
        affine=geometry.affine.copy(),
        spacing=geometry.spacing,
        header=first.img.header,
        paths={key: path for key, path in items},
        layout=ref.layout,
        geometry_problem=geometry.problem,
    )


def check_case(source: CaseRef | str | os.PathLike, force_geometry: bool = False, need_label: bool = False) -> CaseRef:
    """Check a case from its headers alone (no voxels read): what :func:`load_case` would refuse about them.

    Refused: anything :func:`neumours.data.nifti.read_header` refuses for a file
    (not NIfTI, truncated, bad dimensions, data type or geometry), a volume that
    is not 3-D, modalities or label on different grids, and, with ``need_label``,
    a case without a label file. Not checked (it needs the voxels): NaN/Inf,
    all-zero modalities, label values.

    Returns:
        The case's :class:`CaseRef`.

    Raises:
        NeumoursDataError: naming the file at fault.
    """
    ref = resolve_case(source)
    if need_label and "seg" not in ref.paths:
        raise NeumoursDataError(ref.path, f"case {ref.case_id} has no label file")
    first_path = first_shape = first_affine = None
    for _, path in _case_items(ref):
        facts, geometry = read_header(path, force_geometry=force_geometry)
        shape = volume_shape(path, facts)
        if first_path is None:
            first_path, first_shape, first_affine = path, shape, geometry.affine
        else:
            _check_same_grid(first_path, first_shape, first_affine, path, shape, geometry.affine)
    return ref


@dataclass
class CaseFailure:
    """A case left out of a run: its id, where it is, and the one-line error."""

    case_id: str
    path: str
    error: str


def check_cases(refs, force_geometry: bool = False, need_label: bool = False,
                keep_going: bool = False) -> tuple[list[CaseRef], list[CaseFailure]]:
    """:func:`check_case` for every case, before a command writes anything.

    Returns:
        ``(good, failures)``: the cases that passed, in order, and one
        :class:`CaseFailure` per case that did not (only with ``keep_going``).

    Raises:
        NeumoursDataError: the first bad case, when not ``keep_going``.
    """
    good, failures = [], []
    for ref in refs:
        try:
            good.append(check_case(ref, force_geometry, need_label))
        except NeumoursError as exc:
            if not keep_going:
                raise
            failures.append(CaseFailure(getattr(ref, "case_id", str(ref)), str(getattr(ref, "path", ref)), str(exc)))
    return good, failures


def headers_sha256(refs) -> str:
    """SHA-256 over the cases' ids and the NIfTI headers of their files (modalities and label), in order.

    A dataset's fingerprint without reading a voxel: a resumed training run
    checks that it is given the data it was trained on. Two datasets with the
    same case ids but other grids, spacings, data types or scalings differ here.

    Raises:
        NeumoursDataError: a file whose header cannot be read (naming it).
    """
    import hashlib

    digest = hashlib.sha256()
    for ref in refs:
        digest.update(f"case {ref.case_id}\n".encode())
        for key in sorted(ref.paths):
            digest.update(f"{key}\n".encode())
            digest.update(header_bytes(ref.paths[key]))
    return digest.hexdigest()


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
    img = cls(arr.astype(np.uint8, copy=False), like.affine, header)  # memory order kept: Fortran writes as is
    write_nifti(img, path)
    return path
