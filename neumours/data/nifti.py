"""Low-level NIfTI reading and writing with validation and a fast gzip path.

Why not plain ``nibabel.load``: it streams ``.nii.gz`` files through Python's
``gzip`` module, which is several times slower than reading the compressed
bytes at once and inflating them with ISA-L (``isal.igzip``, which also releases
the GIL so the four modalities of a case inflate in parallel). The inflated
bytes are then parsed by nibabel itself (``Nifti1Image.from_bytes``), so
header handling, ``scl_slope``/``scl_inter`` scaling and byte order stay
nibabel's.

Every failure (missing file, unreadable file, truncated or corrupt gzip, not a
NIfTI file, short data section, unsupported data type, not 3-D, NaN/Inf) is
raised as :class:`~neumours.errors.NeumoursDataError` naming the file and the
problem; no raw nibabel, zlib or OS traceback escapes.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from neumours.atomic import atomic_write_bytes
from neumours.errors import NeumoursDataError

try:  # ISA-L: ~3x faster inflate than zlib and GIL-free.
    from isal import igzip as _fast_gzip
except ImportError:  # pragma: no cover - exercised only without isal
    _fast_gzip = None

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""File name endings recognised as NIfTI files (single-file NIfTI-1/2)."""

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HEADER_SIZE = 348
_NIFTI2_HEADER_SIZE = 540


def is_nifti_name(name: str | os.PathLike) -> bool:
    """Return whether a file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """Return ``name`` without its ``.nii``/``.nii.gz`` ending (unchanged otherwise)."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _gunzip(path: Path, blob: bytes) -> bytes:
    """Inflate a (possibly multi-member) gzip byte string.

    ISA-L is tried first; on any failure Python's ``gzip`` gets a second go
    (it tolerates trailing zero padding that some writers add) and its error
    is the one reported, so messages do not depend on whether isal is present.
    """
    if _fast_gzip is not None:
        try:
            return _fast_gzip.decompress(blob)
        except Exception:  # noqa: BLE001 - re-checked with the reference decoder below
            pass
    try:
        return gzip.decompress(blob)
    except EOFError:
        raise NeumoursDataError(
            path, "file is truncated: the gzip stream ends early (incomplete download or copy?)"
        ) from None
    except (zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise NeumoursDataError(path, f"corrupt gzip data ({exc})") from None


def _read_bytes(path: Path) -> bytes:
    """Return the NIfTI bytes of ``path``, inflated when the file is gzip-compressed.

    Compression is detected from the gzip magic number rather than the file
    name, so a mislabelled ``.nii`` / ``.nii.gz`` still reads.
    """
    if not path.exists():
        raise NeumoursDataError(path, "file does not exist")
    if path.is_dir():
        raise NeumoursDataError(path, "is a folder, expected a NIfTI file (.nii or .nii.gz)")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise NeumoursDataError(path, f"cannot read file ({exc.strerror or exc})") from None
    if blob[:2] == _GZIP_MAGIC:
        blob = _gunzip(path, blob)
    return blob


def _image_class(path: Path, raw: bytes) -> type[nib.Nifti1Image]:
    """Pick Nifti1Image or Nifti2Image from ``sizeof_hdr`` (either byte order)."""
    if len(raw) < 4:
        raise NeumoursDataError(path, "not a NIfTI file (too short to hold a NIfTI header)")
    for order in ("<", ">"):
        (size,) = struct.unpack(order + "i", raw[:4])
        if size == _NIFTI1_HEADER_SIZE:
            return nib.Nifti1Image
        if size == _NIFTI2_HEADER_SIZE:
            return nib.Nifti2Image
    raise NeumoursDataError(path, "not a NIfTI file (no NIfTI-1/NIfTI-2 header found)")


def read_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Read and check one NIfTI file; the data is held in memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2, single file).

    Returns:
        The nibabel image (a ``Nifti2Image`` for NIfTI-2 files). Its header is
        validated and its data section is known to be complete, so reading
        ``img.dataobj`` cannot fail for lack of bytes.

    Raises:
        NeumoursDataError: the file is missing, unreadable, a truncated or
            corrupt gzip stream, not NIfTI, has an incomplete data section or
            an unsupported (non-numeric / complex) data type.
    """
    path = Path(path)
    raw = _read_bytes(path)
    cls = _image_class(path, raw)
    header_size = _NIFTI2_HEADER_SIZE if cls is nib.Nifti2Image else _NIFTI1_HEADER_SIZE
    if len(raw) < header_size:
        raise NeumoursDataError(path, "file is truncated: the NIfTI header is incomplete")
    try:
        img = cls.from_bytes(raw)
        header = img.header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        # nibabel resets the in-memory header's vox_offset; the proxy keeps the file's.
        offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    except NeumoursDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise NeumoursDataError(path, f"not a valid NIfTI file ({exc})") from None
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NeumoursDataError(path, f"unsupported NIfTI data type {dtype} (need integer or float voxels)")
    needed = offset + math.prod(shape) * dtype.itemsize
    if len(raw) < needed:
        raise NeumoursDataError(
            path,
            f"file is truncated: the data section needs {needed} bytes, only {len(raw)} present",
        )
    return img


def volume_shape(path: Path, img: nib.Nifti1Image) -> tuple[int, int, int]:
    """Return the 3-D shape of ``img``, dropping trailing length-1 axes.

    Some tools write a 3-D volume as (X, Y, Z, 1); that is accepted. Anything
    else that is not three non-empty axes is refused.
    """
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise NeumoursDataError(path, f"volume is not 3-D (shape {shape}); expected one 3-D volume per file")
    if min(shape) < 1:
        raise NeumoursDataError(path, f"volume is empty (shape {shape})")
    return shape  # type: ignore[return-value]


def _has_float_scaling(img: nib.Nifti1Image) -> bool:
    """Whether reading ``img`` can produce non-finite values (float storage or scaling)."""
    if img.header.get_data_dtype().kind == "f":
        return True
    slope, inter = img.header.get_slope_inter()
    return slope is not None or inter is not None


def read_image_volume(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one MRI modality as float32 with nibabel's intensity scaling applied.

    Args:
        path: a NIfTI file holding one 3-D volume.

    Returns:
        ``(data, img)``: ``data`` is float32 of shape (X, Y, Z) (``scl_slope`` /
        ``scl_inter`` applied), ``img`` the source image (header and affine).

    Raises:
        NeumoursDataError: anything :func:`read_nifti` refuses, a volume that is
            not 3-D, NaN/Inf voxels, or an all-zero volume (an empty modality
            would make normalisation meaningless, and usually means a failed export).
    """
    path = Path(path)
    img = read_nifti(path)
    shape = volume_shape(path, img)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged").reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise NeumoursDataError(path, f"cannot decode voxel data ({exc})") from None
    if _has_float_scaling(img) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise NeumoursDataError(path, f"volume has {bad} NaN/Inf voxels")
    if not data.any():
        raise NeumoursDataError(path, "volume is all zero (empty modality)")
    return data, img


def read_label_volume(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a segmentation as uint8 labels 0..3, mapping legacy label 4 to 3.

    Old BraTS releases (up to 2021) stored enhancing tumour as 4; BraTS 2023
    uses 3. Float label files are accepted when every value is integral.

    Args:
        path: a NIfTI file holding one 3-D label volume.

    Returns:
        ``(label, img)``: ``label`` is uint8 of shape (X, Y, Z) with values in
        {0, 1, 2, 3}; ``img`` the source image.

    Raises:
        NeumoursDataError: anything :func:`read_nifti` refuses, not 3-D,
            NaN/Inf or non-integral values, or values outside {0, 1, 2, 3, 4}.
    """
    path = Path(path)
    img = read_nifti(path)
    shape = volume_shape(path, img)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise NeumoursDataError(path, f"cannot decode voxel data ({exc})") from None
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise NeumoursDataError(path, "label volume has NaN/Inf voxels")
        frac = data != np.round(data)
        if frac.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(data[frac])[:5])
            raise NeumoursDataError(path, f"label volume has non-integer values (e.g. {examples})")
    bad = (data < 0) | (data > 4)
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(data[bad])[:5])
        raise NeumoursDataError(
            path, f"label values outside {{0, 1, 2, 3, 4}} (found {examples}); expected BraTS labels"
        )
    label = data.astype(np.uint8)
    label[label == 4] = 3
    return label, img


def write_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Write ``img`` atomically to ``path`` (``.nii`` raw, ``.nii.gz`` compressed).

    Compression uses ISA-L (level 2) when available: label volumes are mostly
    zeros, so this is both fast and small.

    Raises:
        NeumoursDataError: the path does not end in ``.nii``/``.nii.gz``, or the
            file cannot be written.
    """
    path = Path(path)
    if not is_nifti_name(path.name):
        raise NeumoursDataError(path, "output must end in .nii or .nii.gz")
    try:
        blob = img.to_bytes()
        if path.name.lower().endswith(".gz"):
            blob = _fast_gzip.compress(blob, 2) if _fast_gzip is not None else gzip.compress(blob, 1)
        atomic_write_bytes(path, blob)
    except OSError as exc:
        raise NeumoursDataError(path, f"cannot write file ({exc.strerror or exc})") from None
