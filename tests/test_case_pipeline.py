"""The case pipeline's fast paths give exactly what the plain ones gave.

Voxels cast straight from the inflated bytes equal nibabel's ``get_fdata(float32)``
bit for bit; ``load_case`` decodes into one array (no stack) and hands each modality
to ``on_modality`` in order while the rest decode; the segmenter's streamed upload
gives the labels of a whole-case upload; labels downloaded in Fortran order are the
same labels, and the label file written from them decompresses to the same bytes as
one written from C-ordered labels, at every gzip level.
"""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from neumours.data import MODALITIES, load_case, save_label
from neumours.data.nifti import read_image_volume, write_nifti
from neumours.device import download, empty_buffer, upload, upload_into
from neumours.errors import NeumoursDataError
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.inr import INR

SHAPE = (13, 11, 9)


def _write(path, data, slope=None, inter=None, big_endian=False):
    img = nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.5, 1.0]), dtype=data.dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    if big_endian:
        img = nib.Nifti1Image(data, img.affine, img.header.as_byteswapped(">"))
    img.to_filename(path)
    return path


@pytest.mark.parametrize("kind", ["uint8", "int16", "uint16", "int32", "int64", "float32", "float64",
                                  "int16-big-endian", "int16-scaled", "float32-scaled"])
def test_voxels_equal_nibabel_get_fdata_bit_for_bit(tmp_path, rng, kind):
    dtype = np.dtype(kind.split("-")[0])
    if dtype.kind == "f":
        data = (rng.normal(size=SHAPE) * 1e3).astype(dtype)
        data[0, 0, 0] = 1.0000001  # rounds differently through float32
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -(2**62)), min(info.max, 2**62), SHAPE, dtype=dtype, endpoint=True)
        data[0, 0, 0] = 1  # never all zero
        if dtype == np.int64:
            data[1, 0, 0] = 2**53 + 2**29 + 1  # where int64 -> float32 and int64 -> float64 -> float32 differ
    slope = (0.37, -12.5) if kind.endswith("scaled") else (None, None)
    path = _write(tmp_path / f"{kind}.nii.gz", data, *slope, big_endian=kind.endswith("big-endian"))
    got, _ = read_image_volume(path)
    expected = nib.load(path).get_fdata(dtype=np.float32)
    assert got.dtype == np.float32 and got.flags.f_contiguous
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    from neumours.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("pipeline") / "data", 1, shape=(24, 22, 20), seed=0,
                         progress=False)[0]


def test_load_case_decodes_into_one_array_and_hands_out_each_modality_in_order(case_dir):
    seen = []
    case = load_case(case_dir, on_modality=lambda i, voxels: seen.append((i, voxels.copy(), voxels)))
    expected = np.stack([nib.load(case.paths[m]).get_fdata(dtype=np.float32) for m in MODALITIES])
    np.testing.assert_array_equal(case.images, expected)
    assert case.images.strides == expected.strides  # each modality Fortran-ordered, as np.stack of nibabel's
    assert [i for i, _, _ in seen] == list(range(len(MODALITIES)))
    for i, copy, view in seen:
        np.testing.assert_array_equal(copy, case.images[i])  # final when handed out
        assert np.shares_memory(view, case.images)


def test_parallel_decoding_names_the_first_bad_file_in_modality_order(case_dir, tmp_path):
    """A later file's error waits for the earlier files, as before: the message names the first bad one."""
    bad = tmp_path / "case"
    shutil.copytree(case_dir, bad)
    files = {m: next(bad.glob(f"*-{m}.nii.gz")) for m in MODALITIES}
    blob = files["t2f"].read_bytes()
    files["t2f"].write_bytes(blob[: len(blob) // 2])  # truncated: the last modality
    img = nib.load(files["t1c"])
    data = img.get_fdata(dtype=np.float32)
    data[3, 4, 5] = np.nan
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.Nifti1Image(data, img.affine, header).to_filename(files["t1c"])  # NaN: the second modality
    calls = []
    with pytest.raises(NeumoursDataError) as err:
        load_case(bad, on_modality=lambda i, v: calls.append(i))
    assert str(files["t1c"]) in str(err.value) and "NaN" in str(err.value)
    assert calls == [0]  # t1n went up before t1c's error; nothing after it
    files["t1c"].unlink()
    with pytest.raises(NeumoursDataError) as err:
        load_case(bad)
    assert "t1c" in str(err.value)


@pytest.mark.parametrize("shape", [(3, 4, 2), (64, 64, 65)], ids=["small", "1MB"])  # 1 MB and up: CUDA's torch path
def test_upload_into_an_offset(cpu_device, rng, shape):
    size = int(np.prod(shape))
    buffer = upload(cpu_device, np.full(size + 20, -1, np.float32))
    block = np.asfortranarray(rng.normal(size=shape).astype(np.float32))
    upload_into(cpu_device, buffer, block, offset=10)
    got = download(buffer, (size + 20,))
    np.testing.assert_array_equal(got[10:10 + size], block.reshape(-1))  # C order on the device, whatever the host's
    assert (got[:10] == -1).all() and (got[10 + size:] == -1).all()
    with pytest.raises(ValueError, match="do not fit"):
        upload_into(cpu_device, buffer, block, offset=21)


def test_labels_download_in_fortran_order(cpu_device, rng):
    from neumours.infer.cache import download_labels
    from neumours.kernels.probabilities import pack_labels

    for shape in ((1, 1, 1), (5, 3, 1), (7, 6, 5), (24, 22, 20)):
        labels = rng.integers(0, 4, shape).astype(np.uint32)
        buffer = upload(cpu_device, labels, np.uint32)
        fortran = download_labels(cpu_device, buffer, shape, order="F")
        assert fortran.dtype == np.uint8 and fortran.flags.f_contiguous
        np.testing.assert_array_equal(fortran, labels)
        np.testing.assert_array_equal(download_labels(cpu_device, buffer, shape), labels)
    with pytest.raises(ValueError, match="does not hold"):
        pack_labels(cpu_device, buffer, empty_buffer(cpu_device, 10**4, np.uint32), labels.size, (24, 22, 21))
    with pytest.raises(ValueError, match="order"):
        download_labels(cpu_device, buffer, shape, order="A")


def _inflated(path):
    return gzip.decompress(path.read_bytes())


def test_label_file_has_the_same_bytes_from_either_order_and_every_gzip_level(case_dir, tmp_path, rng):
    case = load_case(case_dir)
    labels = rng.integers(0, 4, case.shape).astype(np.uint8)
    c_file = save_label(np.ascontiguousarray(labels), tmp_path / "c.nii.gz", like=case)
    f_file = save_label(np.asfortranarray(labels), tmp_path / "f.nii.gz", like=case)
    reference = _inflated(c_file)
    assert _inflated(f_file) == reference
    np.testing.assert_array_equal(np.asanyarray(nib.load(f_file).dataobj), labels)
    img = nib.load(f_file)
    for level in (0, 1, 2, 3):
        path = tmp_path / f"level{level}.nii.gz"
        write_nifti(img, path, level=level)
        assert _inflated(path) == reference


def test_streamed_upload_segments_like_a_whole_case_upload(case_dir, cpu_device, tmp_path, monkeypatch):
    """Segmenting a path (each modality uploaded as it is decoded) equals segmenting the loaded case,
    and the file written from the Fortran-ordered labels holds them."""
    import neumours.infer.segment as segment
    from neumours.infer.segment import Segmenter, write_segmentation

    config = INRConfig.tiny()
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(config, cpu_device, seed=2).state_dict(), config)
    seg = Segmenter(checkpoint, cpu_device)
    whole_uploads = []
    upload = segment.CaseVolumes.upload
    monkeypatch.setattr(segment.CaseVolumes, "upload", lambda *a, **k: whole_uploads.append(1) or upload(*a, **k))
    streamed = seg(case_dir)
    assert whole_uploads == []  # every modality went up while loading
    whole = seg(load_case(case_dir))
    assert whole_uploads == [1]
    assert streamed.labels.flags.f_contiguous
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    assert len(np.unique(streamed.labels)) > 1  # a real test of the labels' order
    out = write_segmentation(streamed, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), whole.labels)
