"""Low-level NIfTI reading and writing with validation and a fast gzip path.

Why not plain ``nibabel.load``: it streams ``.nii.gz`` files through Python's
``gzip`` module, which is several times slower than reading the compressed
bytes at once and inflating them with ISA-L (``isal``, which also releases
the GIL so the four modalities of a case inflate in parallel). The inflated
bytes are then parsed by nibabel itself (``Nifti1Image.from_bytes``), so
header handling, ``scl_slope``/``scl_inter`` scaling and byte order stay
nibabel's.

Bounded reads: the fixed-size header is parsed first and the size of the data
it implies is checked against the file (its size, or for gzip what its
compressed size can inflate to) before anything that size is allocated; then
exactly that many bytes are read or inflated. A header claiming terabytes, or
a small gzip file that inflates to gigabytes of padding, costs nothing.

Geometry: every volume reader checks the header's geometry
(:mod:`neumours.data.geometry`) unless ``force_geometry`` is given.
:func:`read_header` runs every check that needs no voxels, for validating a
whole folder of cases before any output is written.

Every failure (missing file, unreadable file, truncated or corrupt gzip, not a
NIfTI file, short data section, unsupported data type, not 3-D, bad geometry,
NaN/Inf) is raised as :class:`~neumours.errors.NeumoursDataError` naming the
file and the problem; no raw nibabel, zlib or OS traceback escapes, and
nibabel's own log lines about header fixes are kept off stderr.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np

from neumours.atomic import atomic_write_bytes
from neumours.data.geometry import Geometry, make_geometry
from neumours.errors import NeumoursDataError
from neumours.input_files import open_input

try:  # ISA-L: ~3x faster inflate than zlib and GIL-free.
    from isal import igzip as _fast_gzip
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - exercised only without isal
    _fast_gzip = _fast_zlib = None

#: What the two inflaters raise for a corrupt stream.
_INFLATE_ERRORS = (zlib.error, OSError, ValueError) + ((_fast_zlib.error,) if _fast_zlib is not None else ())

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


class _QuietNibabel(logging.Filter):
    """Drops nibabel's header-check log lines while this thread reads a file.

    nibabel prints what it fixes or refuses in a header ("pixdim[1,2,3] should
    be non-zero; setting 0 dims to 1") on stderr through its own handler; the
    readers here report every problem themselves, in one line, so those lines
    would only add noise. Other code's use of nibabel is not affected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "depth", 0)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.local.depth = getattr(self.local, "depth", 0) + 1
        try:
            with np.errstate(all="ignore"):  # thread-local; nibabel divides by zero pixdims
                yield
        finally:
            self.local.depth -= 1


_QUIET = _QuietNibabel()
nib.imageglobals.logger.addFilter(_QUIET)

#: Deflate cannot expand data more than ~1032 times; a header that implies more
#: data than that bound allows for the compressed file is refused before inflating.
_MAX_DEFLATE_RATIO = 1032
_SLACK = 1 << 16
_FIELDS = {nib.Nifti1Image: nib.Nifti1Header, nib.Nifti2Image: nib.Nifti2Header}


@dataclass(frozen=True)
class HeaderFacts:
    """What a NIfTI header's own bytes say, read before any voxel is allocated.

    Attributes:
        image_class: ``nib.Nifti1Image`` or ``nib.Nifti2Image``.
        shape: dim[1 .. dim[0]].
        dtype: the stored voxel type.
        offset: vox_offset, where the voxels start.
        pixdim: pixdim[1..3] as stored (nibabel replaces 0 by 1 and negatives by their
            absolute value when it reads a header; these are the values before that).
    """

    image_class: type
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    pixdim: tuple[float, float, float]

    @property
    def header_size(self) -> int:
        return _NIFTI2_HEADER_SIZE if self.image_class is nib.Nifti2Image else _NIFTI1_HEADER_SIZE

    @property
    def end(self) -> int:
        """Bytes the file must hold: header, extensions and the whole data section."""
        return self.offset + math.prod(self.shape) * self.dtype.itemsize


def _header_facts(path: Path, head: bytes) -> HeaderFacts:
    """Parse the fixed-size header at the start of ``head`` (nibabel's header class, no fixes)."""
    cls = _image_class(path, head)
    header_size = _NIFTI2_HEADER_SIZE if cls is nib.Nifti2Image else _NIFTI1_HEADER_SIZE
    if len(head) < header_size:
        raise NeumoursDataError(path, "file is truncated: the NIfTI header is incomplete")
    try:
        with _QUIET.active():
            fields = _FIELDS[cls](head[:header_size], check=False)
            dim = [int(d) for d in fields["dim"]]
            code = int(fields["datatype"])
            vox_offset = float(fields["vox_offset"])
            pixdim = tuple(float(p) for p in fields["pixdim"][1:4])
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise NeumoursDataError(path, f"not a valid NIfTI header ({exc})") from None
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise NeumoursDataError(path, f"not a valid NIfTI header (dim[0] = {ndim}, expected 1..7 dimensions)")
    shape = tuple(dim[1: ndim + 1])
    if min(shape) < 0:
        raise NeumoursDataError(path, f"not a valid NIfTI header (negative size in dim {shape})")
    try:
        dtype = np.dtype(nib.nifti1.data_type_codes.dtype[code])
    except KeyError:
        raise NeumoursDataError(path, f"unsupported NIfTI data type code {code}") from None
    if not math.isfinite(vox_offset) or vox_offset < header_size + 4:
        raise NeumoursDataError(path, f"not a valid NIfTI file (vox_offset {vox_offset:g}: the voxels must start "
                                      f"after the {header_size + 4}-byte header)")
    return HeaderFacts(cls, shape, dtype, int(vox_offset), pixdim)  # type: ignore[arg-type]


def _decompressor():
    return _fast_zlib.decompressobj(31) if _fast_zlib is not None else zlib.decompressobj(31)


def _inflate(path: Path, blob: bytes, limit: int) -> bytes:
    """Inflate at most ``limit`` bytes of a (possibly multi-member) gzip byte string.

    Stops as soon as ``limit`` bytes are out, so no header can make this
    allocate more than it implies (see :func:`_read`). When the stream ends
    right there (the normal case) its CRC is checked too.
    """
    parts: list[bytes] = []
    total = 0
    data = blob
    try:
        while data and total < limit:
            inflater = _decompressor()
            part = inflater.decompress(data, limit - total)
            parts.append(part)
            total += len(part)
            if total >= limit and not inflater.eof:
                inflater.decompress(inflater.unconsumed_tail, _SLACK)  # reach the trailer's CRC, if it is there
            if not inflater.eof:
                if total < limit:
                    raise NeumoursDataError(
                        path, "file is truncated: the gzip stream ends early (incomplete download or copy?)")
                break
            data = inflater.unused_data
            if not data.strip(b"\0"):  # some writers pad the last member with zeros
                break
    except _INFLATE_ERRORS as exc:
        raise NeumoursDataError(path, f"corrupt gzip data ({exc})") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _gzip_holds(path: Path, size: int, needed: int) -> bool:
    """Whether the gzip file ``path`` (``size`` bytes) inflates to at least ``needed`` bytes, cheaply.

    The trailer's ISIZE (inflated size mod 2^32) settles the usual case at once;
    otherwise (several members, trailing bytes, a cut-off file) the stream is
    inflated in chunks and counted, nothing kept.
    """
    if needed > _MAX_DEFLATE_RATIO * size + _SLACK:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - 4))
            (isize,) = struct.unpack("<I", f.read(4).rjust(4, b"\0"))
            if isize == needed % (1 << 32):
                return True
            f.seek(0)
            count, inflater = 0, _decompressor()
            while count < needed:
                chunk = inflater.unconsumed_tail or f.read(1 << 22)
                if not chunk:
                    return False
                count += len(inflater.decompress(chunk, 1 << 24))
                if inflater.eof:
                    rest = inflater.unused_data + f.read()
                    if not rest.strip(b"\0"):
                        return count >= needed
                    inflater = _decompressor()
                    f = io.BytesIO(rest)  # noqa: PLW2901 - the remaining members, in memory (small)
    except _INFLATE_ERRORS as exc:
        raise NeumoursDataError(path, f"corrupt gzip data ({exc})") from None
    return True


def _open(path: Path):
    if not path.exists():
        raise NeumoursDataError(path, "file does not exist")
    if path.is_dir():
        raise NeumoursDataError(path, "is a folder, expected a NIfTI file (.nii or .nii.gz)")
    return open_input(path, "NIfTI file")


def _truncated(path: Path, facts: HeaderFacts, present: int | None) -> NeumoursDataError:
    have = f", only {present} present" if present is not None else ", more than the file can hold"
    return NeumoursDataError(path, f"file is truncated: the data section needs {facts.end} bytes{have}")


def _read(path: Path) -> tuple[bytes, HeaderFacts]:
    """The NIfTI bytes of ``path`` (inflated if gzip-compressed), exactly up to the data's end.

    Nothing is allocated beyond what the header implies *and* the file can
    hold: the header is parsed first, its data size checked against the file
    size (a raw file) or against what the compressed size can inflate to (a gzip
    file); then only that many bytes are read or inflated. Compression is
    detected from the gzip magic number, not the name.
    """
    with _open(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            start = f.read(_NIFTI2_HEADER_SIZE)
            if start[:2] == _GZIP_MAGIC:
                blob = start + f.read()
                head = _inflate(path, blob, _NIFTI2_HEADER_SIZE)
                facts = _header_facts(path, head)
                if facts.end > _MAX_DEFLATE_RATIO * len(blob) + _SLACK:
                    raise _truncated(path, facts, None)
                raw = _inflate(path, blob, facts.end)
            else:
                facts = _header_facts(path, start)
                if size < facts.end:
                    raise _truncated(path, facts, size)
                raw = start[: facts.end] + f.read(max(0, facts.end - len(start)))
        except OSError as exc:
            raise NeumoursDataError(path, f"cannot read file ({exc.strerror or exc})") from None
    if len(raw) < facts.end:
        raise _truncated(path, facts, len(raw))
    return raw, facts


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


def _image(path: Path, raw: bytes, facts: HeaderFacts) -> nib.Nifti1Image:
    """nibabel's image over ``raw`` (no voxel decoded yet), with its header checks."""
    try:
        with _QUIET.active():
            img = facts.image_class.from_bytes(raw)
            img.affine  # noqa: B018 - nibabel derives it here; a header it cannot use fails now
    except NeumoursDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise NeumoursDataError(path, f"not a valid NIfTI file ({_first_line(exc)})") from None
    dtype = facts.dtype
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NeumoursDataError(path, f"unsupported NIfTI data type {dtype} (need integer or float voxels)")
    return img


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Read and check one NIfTI file; the data is held in memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2, single file).

    Returns:
        The nibabel image (a ``Nifti2Image`` for NIfTI-2 files). Its header is
        validated and its data section is known to be complete, so reading
        ``img.dataobj`` cannot fail for lack of bytes. Geometry is not checked
        here (see :func:`read_geometry`).

    Raises:
        NeumoursDataError: the file is missing, unreadable, a truncated or
            corrupt gzip stream, not NIfTI, has an incomplete data section or
            an unsupported (non-numeric / complex) data type.
    """
    path = Path(path)
    raw, facts = _read(path)
    return _image(path, raw, facts)


def read_header(path: str | os.PathLike, force_geometry: bool = False) -> tuple[HeaderFacts, Geometry]:
    """Check one NIfTI file from its header alone: cheap, no voxel is read.

    What :func:`read_image_volume` / :func:`read_label_volume` would refuse
    about the header (not NIfTI, bad dimensions or data type, a data section
    the file cannot hold, bad geometry) is refused here; what needs the voxels
    (NaN/Inf values, an all-zero volume, label values) is not. A gzip file is
    inflated only as far as its header, plus (rarely) a count of its length
    when the gzip trailer does not settle it.

    Returns:
        ``(facts, geometry)``.

    Raises:
        NeumoursDataError: naming the file and the problem.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            start = f.read(_NIFTI2_HEADER_SIZE)
            gz = start[:2] == _GZIP_MAGIC
            if gz:
                start = _inflate(path, start + f.read(1 << 16), _NIFTI2_HEADER_SIZE)
        except OSError as exc:
            raise NeumoursDataError(path, f"cannot read file ({exc.strerror or exc})") from None
    facts = _header_facts(path, start)
    if (gz and not _gzip_holds(path, size, facts.end)) or (not gz and size < facts.end):
        raise _truncated(path, facts, None if gz else size)
    if facts.dtype.kind not in "biuf" or facts.dtype.fields is not None:
        raise NeumoursDataError(path, f"unsupported NIfTI data type {facts.dtype} (need integer or float voxels)")
    try:
        with _QUIET.active():
            header = _FIELDS[facts.image_class](start[: facts.header_size], check=True)
            affine = header.get_best_affine()
    except Exception as exc:  # noqa: BLE001
        raise NeumoursDataError(path, f"not a valid NIfTI file ({_first_line(exc)})") from None
    return facts, _geometry(path, facts, affine, force_geometry)


def header_bytes(path: str | os.PathLike) -> bytes:
    """The fixed-size NIfTI header of ``path`` as stored (inflated from a gzip file): 348 or 540 bytes.

    What fingerprints a dataset without reading voxels (:func:`neumours.data.case.headers_sha256`).

    Raises:
        NeumoursDataError: naming the file (as :func:`read_header`).
    """
    path = Path(path)
    with _open(path) as f:
        try:
            start = f.read(_NIFTI2_HEADER_SIZE)
            if start[:2] == _GZIP_MAGIC:
                start = _inflate(path, start + f.read(1 << 16), _NIFTI2_HEADER_SIZE)
        except OSError as exc:
            raise NeumoursDataError(path, f"cannot read file ({exc.strerror or exc})") from None
    return start[: _header_facts(path, start).header_size]


def _geometry(path: Path, facts: HeaderFacts, affine: np.ndarray, force: bool) -> Geometry:
    geometry = make_geometry(facts.pixdim[: min(3, len(facts.shape))], affine)
    if geometry.problem is not None and not force:
        raise NeumoursDataError(path, f"{geometry.problem} (--force-geometry loads it anyway)")
    return geometry


def volume_shape(path: Path, img) -> tuple[int, int, int]:
    """Return the 3-D shape of ``img`` (an image or a header's facts: anything with ``.shape``),
    dropping trailing length-1 axes.

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


@dataclass(frozen=True)
class Volume:
    """One checked 3-D volume: its voxels, the nibabel image and the checked geometry."""

    data: np.ndarray
    img: nib.Nifti1Image
    geometry: Geometry


def _checked_image(path: Path, force_geometry: bool) -> tuple[bytes, nib.Nifti1Image, tuple[int, int, int], Geometry]:
    raw, facts = _read(path)
    img = _image(path, raw, facts)
    shape = volume_shape(path, img)
    return raw, img, shape, _geometry(path, facts, img.affine, force_geometry)


def _float32_voxels(raw: bytes, img: nib.Nifti1Image, shape, out: np.ndarray | None) -> np.ndarray:
    """``img.get_fdata(dtype=float32)`` (the same values, Fortran order), written into ``out`` when given.

    Unscaled data (nibabel's slope 1, intercept 0, the usual case) is cast straight
    from the inflated bytes into ``out``: one pass, no intermediate copy, where
    nibabel would copy the bytes, then cast, then (for :func:`neumours.data.load_case`)
    the caller would copy again. The cast goes through the type nibabel promotes to
    (``promote_types(stored, float32)``: float64 for 32/64-bit integers), so every
    value rounds as nibabel's does. Scaled data goes through nibabel itself.
    """
    proxy = img.dataobj
    if out is None:
        out = np.empty(shape, np.float32, order="F")
    direct = isinstance(proxy, nib.arrayproxy.ArrayProxy) and (proxy.slope, proxy.inter) == (1, 0)
    if direct:
        count = math.prod(proxy.shape)
        stored = np.frombuffer(raw, dtype=proxy.dtype, count=count, offset=proxy.offset)
        stored = stored.reshape(shape, order=proxy.order)
        np.copyto(out, stored.astype(np.promote_types(stored.dtype, np.float32), copy=False), casting="unsafe")
    else:
        np.copyto(out, img.get_fdata(dtype=np.float32, caching="unchanged").reshape(shape), casting="unsafe")
    return out


def _image_data(path: Path, raw: bytes, img: nib.Nifti1Image, shape, out: np.ndarray | None = None) -> np.ndarray:
    try:
        # Overflow to Inf is reported below, in one line, instead of as numpy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            data = _float32_voxels(raw, img, shape, out)
    except Exception as exc:  # noqa: BLE001
        raise NeumoursDataError(path, f"cannot decode voxel data ({_first_line(exc)})") from None
    # Checked whatever the header's type: nibabel can scale integer data by a raw scl_slope that
    # get_slope_inter() does not report (found by fuzzing: uint8 x 4e36 -> Inf in float32).
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise NeumoursDataError(path, f"volume has {bad} NaN/Inf voxels")
    if not data.any():
        raise NeumoursDataError(path, "volume is all zero (empty modality)")
    return data


def _label_data(path: Path, img: nib.Nifti1Image, shape) -> np.ndarray:
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise NeumoursDataError(path, f"cannot decode voxel data ({_first_line(exc)})") from None
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
    return label


def read_volume(path: str | os.PathLike, label: bool = False, force_geometry: bool = False,
                into: Callable[[tuple[int, int, int]], np.ndarray | None] | None = None) -> Volume:
    """Read one 3-D volume with its checked geometry.

    Args:
        path: a NIfTI file holding one 3-D volume.
        label: read a segmentation (:func:`read_label_volume`'s rules) instead of
            an MRI modality (:func:`read_image_volume`'s).
        force_geometry: accept a header whose geometry fails the checks of
            :mod:`neumours.data.geometry` (``Volume.geometry.problem`` says what is wrong).
        into: modalities only: called with the volume's (X, Y, Z) shape once the header
            is checked; it returns a float32 array of that shape to decode the voxels into
            (``load_case`` hands out its slice of the case's array, saving a copy), or None
            for a new one. ``Volume.data`` is then that array.

    Raises:
        NeumoursDataError: naming the file: anything the two readers refuse, or bad geometry.
    """
    path = Path(path)
    raw, img, shape, geometry = _checked_image(path, force_geometry)
    if label:
        data = _label_data(path, img, shape)
    else:
        data = _image_data(path, raw, img, shape, into(shape) if into is not None else None)
    return Volume(data, img, geometry)


def read_image_volume(path: str | os.PathLike, force_geometry: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one MRI modality as float32 with nibabel's intensity scaling applied.

    Args:
        path: a NIfTI file holding one 3-D volume.
        force_geometry: skip the geometry checks (see :mod:`neumours.data.geometry`).

    Returns:
        ``(data, img)``: ``data`` is float32 of shape (X, Y, Z) (``scl_slope`` /
        ``scl_inter`` applied), ``img`` the source image (header and affine).

    Raises:
        NeumoursDataError: anything :func:`read_nifti` refuses, a volume that is
            not 3-D, bad geometry (singular or non-finite affine, zero/negative
            spacing, shear), NaN/Inf voxels, or an all-zero volume (an empty
            modality would make normalisation meaningless, and usually means a
            failed export).
    """
    volume = read_volume(path, label=False, force_geometry=force_geometry)
    return volume.data, volume.img


def read_label_volume(path: str | os.PathLike, force_geometry: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a segmentation as uint8 labels 0..3, mapping legacy label 4 to 3.

    Old BraTS releases (up to 2021) stored enhancing tumour as 4; BraTS 2023
    uses 3. Float label files are accepted when every value is integral.

    Args:
        path: a NIfTI file holding one 3-D label volume.
        force_geometry: skip the geometry checks (see :mod:`neumours.data.geometry`).

    Returns:
        ``(label, img)``: ``label`` is uint8 of shape (X, Y, Z) with values in
        {0, 1, 2, 3}; ``img`` the source image.

    Raises:
        NeumoursDataError: anything :func:`read_nifti` refuses, not 3-D, bad
            geometry, NaN/Inf or non-integral values, or values outside {0, 1, 2, 3, 4}.
    """
    volume = read_volume(path, label=True, force_geometry=force_geometry)
    return volume.data, volume.img


#: ISA-L's gzip level for written files: label volumes are mostly zeros, so this is both fast and
#: small (``benchmarks/case_io.py`` times every level; zlib level 1 is the fallback without ISA-L).
GZIP_LEVEL = 2


def write_nifti(img: nib.Nifti1Image, path: str | os.PathLike, level: int = GZIP_LEVEL) -> None:
    """Write ``img`` atomically to ``path`` (``.nii`` raw, ``.nii.gz`` compressed).

    Compression uses ISA-L at ``level`` (0..3) when available, else zlib at level 1.
    Data in Fortran order (a NIfTI file's order: what nibabel reads, and what
    :func:`neumours.infer.cache.download_labels` gives with ``order="F"``) is written
    with a plain copy; C-ordered data costs nibabel a transposing copy first.

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
            blob = _fast_gzip.compress(blob, level) if _fast_gzip is not None else gzip.compress(blob, 1)
    except (OSError, MemoryError) as exc:
        raise NeumoursDataError(path, f"cannot encode the image ({exc})") from None
    atomic_write_bytes(path, blob)  # write problems: one NeumoursError line naming the path
