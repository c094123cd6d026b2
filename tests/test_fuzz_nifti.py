"""Property-based fuzzing of the NIfTI loaders with hypothesis.

Random NIfTI-1 files (dimensions, data types, pixdim, qform/sform codes and
matrices, scl_slope/scl_inter, vox_offset, header extensions, byte order,
truncated data, gzip or not) are written as the four modalities of one case
and go through ``check_case``, ``load_case`` and ``neumours inspect``. The
properties:

* ``load_case`` returns a valid :class:`~neumours.data.Case` (float32 finite
  images of shape (4, X, Y, Z), positive finite spacing) or raises
  :class:`~neumours.errors.NeumoursDataError`; nothing else escapes;
* the header-only ``check_case`` never refuses a case that ``load_case`` loads;
* the peak of Python-tracked allocations (numpy's included) while loading stays
  within a small multiple of the bytes the files hold, whatever the header claims;
* ``neumours inspect`` exits 0, or 2 with one ``neumours: error:`` line, and
  prints no Python warning (a user would see it as extra lines on stderr).

``NEUMOURS_FUZZ_EXAMPLES`` sets the number of examples (default 200; e.g.
``NEUMOURS_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_nifti.py`` for a long run).
By default the examples are derandomised (the same ones every run, so a CI
run's result does not depend on luck); ``NEUMOURS_FUZZ_RANDOM=1`` draws fresh
ones. A file that a random run found wrong becomes a fixed test below.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install 'neumours[test]'")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from neumours.cli.main import main  # noqa: E402
from neumours.conventions import MODALITIES, NUM_MODALITIES  # noqa: E402
from neumours.data import load_case  # noqa: E402
from neumours.data.case import check_case  # noqa: E402
from neumours.errors import NeumoursDataError  # noqa: E402

EXAMPLES = int(os.environ.get("NEUMOURS_FUZZ_EXAMPLES", "200"))
DERANDOMIZE = os.environ.get("NEUMOURS_FUZZ_RANDOM", "") != "1"
HEADER_BYTES = 348

#: NIfTI data type codes nibabel knows, and some it does not.
DATATYPES = [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 128, 2304, 1536, 1792, 0, 1, 3, 9999, -4]
#: Bits per voxel of the known codes (the header's bitpix is sometimes left wrong on purpose).
BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64, 32: 64, 128: 24,
          2304: 32, 1536: 128, 1792: 128}
#: Data types whose voxels can be made from small integers (so some examples load successfully).
NUMERIC = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}

odd_floats = st.one_of(st.sampled_from([0.0, -1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf]),
                       st.floats(allow_nan=True, allow_infinity=True, width=32))
#: What can be wrong with (or merely unusual about) a file; each example applies a few of them.
MUTATIONS = ["ndim", "dims", "fourth-dim", "datatype", "bitpix", "pixdim", "qform", "sform", "shear", "flip",
             "scaling", "vox_offset", "extensions", "big-endian", "magic", "sizeof_hdr", "truncate",
             "random-bytes", "gzip-cut", "gzip-trailing"]


@st.composite
def nifti_files(draw):
    """(file bytes, gzip?, bytes the uncompressed file holds, mutations) for one random NIfTI-1 file.

    A valid small 3-D file is drawn first; then (in four examples of five) one to three :data:`MUTATIONS` change it, so
    a good part of the examples stay loadable and the rest probe one or a few problems at a time.
    """
    fewest = 0 if draw(st.integers(0, 4)) == 0 else 1  # a fifth of the files are left valid
    mutations = set(draw(st.lists(st.sampled_from(MUTATIONS), min_size=fewest, max_size=3)))
    endian = ">" if "big-endian" in mutations else "<"
    header = nib.Nifti1Header(endianness=endian)
    dims = [draw(st.integers(1, 10)) for _ in range(3)] + [1, 1, 1, 1]
    ndim = 3
    if "fourth-dim" in mutations:
        ndim, dims[3] = 4, draw(st.integers(1, 3))
    if "dims" in mutations:
        dims[draw(st.integers(0, 6))] = draw(st.sampled_from([0, -1, 32767, -32768, 20000]))
    if "ndim" in mutations:
        ndim = draw(st.integers(-1, 8))
    header["dim"] = [ndim] + dims
    code = draw(st.sampled_from(sorted(NUMERIC)))
    if "datatype" in mutations:
        code = draw(st.sampled_from(DATATYPES))
    header["datatype"] = code
    header["bitpix"] = draw(st.sampled_from([0, 7, 16, 999])) if "bitpix" in mutations else BITPIX.get(code, 8)
    pixdim = [1.0] + [draw(st.floats(0.5, 3.0)) for _ in range(3)] + [1.0] * 4
    if "pixdim" in mutations:
        pixdim[draw(st.integers(1, 3))] = draw(odd_floats)
    header["pixdim"] = pixdim
    spacing = [abs(p) if math.isfinite(p) else 1.0 for p in pixdim[1:4]]
    linear = np.diag(spacing)
    if "flip" in mutations:
        linear[0] *= -1
    if "shear" in mutations:
        linear[0, 1] = draw(st.floats(0.1, 2.0))
    rows = np.concatenate([linear, np.array([[draw(st.floats(-100, 100))] for _ in range(3)])], axis=1)
    if "sform" in mutations:
        rows = np.array([[draw(odd_floats) for _ in range(4)] for _ in range(3)])
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    header["sform_code"] = draw(st.integers(-5, 300)) if "sform" in mutations else draw(st.sampled_from([0, 1, 2]))
    header["qform_code"] = draw(st.integers(-5, 300)) if "qform" in mutations else draw(st.sampled_from([0, 1]))
    if "qform" in mutations:
        for name in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
            header[name] = draw(odd_floats)
    slope, inter = (draw(odd_floats), draw(odd_floats)) if "scaling" in mutations else (1.0, 0.0)
    header["scl_slope"], header["scl_inter"] = slope, inter
    if "magic" in mutations:
        header["magic"] = draw(st.sampled_from([b"ni1", b"n+2", b"xyz", b""]))
    if "sizeof_hdr" in mutations:
        header["sizeof_hdr"] = draw(st.sampled_from([0, 540, 347, 2**20]))

    extensions = b""
    if "extensions" in mutations:
        for _ in range(draw(st.integers(1, 3))):
            content = draw(st.binary(max_size=40))
            size = 8 + len(content) + (-(8 + len(content)) % 16)
            esize = size if draw(st.booleans()) else draw(st.integers(-16, 10**6))
            extensions += struct.pack(endian + "ii", esize, draw(st.integers(0, 40))) + content.ljust(size - 8, b"\0")
    extender = bytes([1 if extensions else 0, 0, 0, 0])
    natural = HEADER_BYTES + 4 + len(extensions)
    offset = natural
    if "vox_offset" in mutations:
        offset = draw(st.one_of(st.integers(0, 1200), st.just(2**31), st.floats(0, 1000)))
    header["vox_offset"] = offset

    # The data section: what the header implies (capped, so the file stays small), then maybe cut short.
    voxels = math.prod(d for d in dims[: max(0, min(ndim, 7))] if d > 0) if ndim > 0 else 0
    length = min(voxels * max(BITPIX.get(code, 8), 8) // 8, 64 * 1024)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if code in NUMERIC and "random-bytes" not in mutations:
        dtype = np.dtype(NUMERIC[code]).newbyteorder(endian)
        data = rng.integers(1, 100, length // dtype.itemsize).astype(dtype).tobytes()
    else:
        data = rng.bytes(length)
    if "truncate" in mutations:
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    start = int(offset) if isinstance(offset, int) and offset < 4096 else natural
    body = header.binaryblock + extender + extensions
    raw = body[:start] + b"\0" * max(0, start - len(body)) + data
    compress = draw(st.booleans()) or bool(mutations & {"gzip-cut", "gzip-trailing"})
    blob = gzip.compress(raw, compresslevel=1) if compress else raw
    if "gzip-cut" in mutations:
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    if "gzip-trailing" in mutations:
        blob += draw(st.binary(min_size=1, max_size=64))
    return blob, compress, len(raw), sorted(mutations)


def write_case(folder: Path, blob: bytes, compressed: bool) -> Path:
    """The four modalities of a BraTS-layout case, each holding ``blob``."""
    case = folder / "Fuzz-00000-000"
    case.mkdir()
    suffix = ".nii.gz" if compressed else ".nii"
    for modality in MODALITIES:
        (case / f"{case.name}-{modality}{suffix}").write_bytes(blob)
    return case


def check_loaded(case) -> None:
    assert case.images.dtype == np.float32
    assert case.images.shape == (NUM_MODALITIES, *case.shape) and len(case.shape) == 3
    assert np.isfinite(case.images).all()
    assert all(math.isfinite(s) and s > 0 for s in case.spacing)
    assert case.affine.shape == (4, 4) and np.isfinite(case.affine).all()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
@given(file=nifti_files(), force=st.booleans())
def test_random_headers_load_or_raise_one_data_error(file, force):
    blob, compressed, raw_bytes, mutations = file
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = write_case(Path(tmp), blob, compressed)
        try:
            check_case(case_dir, force_geometry=force)
            header_ok = True
        except NeumoursDataError as exc:
            assert case_dir.name in str(exc)
            header_ok = False

        tracemalloc.start()
        try:
            case = load_case(case_dir, force_geometry=force)
        except NeumoursDataError as exc:
            case = None
            assert case_dir.name in str(exc) and "\n" not in str(exc)
            event(f"refused: {exc.problem.split('(')[0][:40]}")
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        # Four files of raw_bytes each: raw bytes, parsed data, float64 scaling and the float32 stack fit in this.
        budget = NUM_MODALITIES * 24 * raw_bytes + 16 * 2**20
        assert peak <= budget, f"peak {peak} bytes for files of {raw_bytes} bytes"
        if case is not None:
            event("loaded" + (" (forced geometry)" if case.geometry_problem else ""))
            event(f"loaded with {'+'.join(mutations) or 'no mutation'}")
            check_loaded(case)
            assert header_ok, "check_case refused a case that load_case loads"


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None, derandomize=DERANDOMIZE, suppress_health_check=[HealthCheck.too_slow,
                                                                                     HealthCheck.data_too_large])
@given(file=nifti_files())
def test_inspect_exits_0_or_2_with_one_line(file):
    blob, compressed, _, _ = file
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()) as err, \
            contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a user's terminal would show, pytest's capture aside
        case_dir = write_case(Path(tmp), blob, compressed)
        code = main(["inspect", str(case_dir)])
    assert code in (0, 2)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    if code == 2:
        text = err.getvalue()
        assert text.startswith("neumours: error: ") and text.count("\n") == 1 and case_dir.name in text, text



def test_forced_infinite_pixdim_without_sform_or_qform_gets_a_finite_affine(tmp_path):
    """Found by a random run: pixdim (inf, 1, 1), sform and qform codes 0. nibabel then
    builds the affine from pixdim (so it holds Inf); a forced load must not pass that on."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 1))
    header.set_data_dtype(np.float32)
    header["pixdim"][1:4] = (np.inf, 1.0, 1.0)
    header["sform_code"] = header["qform_code"] = 0
    header["vox_offset"] = 352
    blob = header.binaryblock + b"\0" * 4 + np.full(4, 85.0, np.float32).tobytes()
    case_dir = write_case(tmp_path, blob, compressed=False)
    with pytest.raises(NeumoursDataError, match="pixdim"):
        load_case(case_dir)
    case = load_case(case_dir, force_geometry=True)
    check_loaded(case)
    assert case.spacing == (1.0, 1.0, 1.0) and "assumed" in case.geometry_problem


def test_integer_data_scaled_to_infinity_is_refused(tmp_path):
    """Found by a random run: uint8 data with a raw scl_slope of 4e36. nibabel's
    get_slope_inter() does not report that slope, yet reading applies it, so the float32
    image holds Inf; the loader must refuse it rather than trust the header's type."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 1))
    header.set_data_dtype(np.uint8)
    header["pixdim"][1:4] = (1.0, 1.0, 1.0)
    header["vox_offset"] = 352
    header["scl_slope"], header["scl_inter"] = 4e36, 0.0
    blob = header.binaryblock + b"\0" * 4 + np.full(4, 200, np.uint8).tobytes()
    case_dir = write_case(tmp_path, blob, compressed=False)
    with pytest.raises(NeumoursDataError, match="NaN/Inf") as caught:
        load_case(case_dir)
    assert case_dir.name in str(caught.value)
