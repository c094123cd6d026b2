"""Volume caching, the arg-max kernel, super-resolution and ``neumours segment`` on the CPU device."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from neumours.cli.main import main
from neumours.data import load_case
from neumours.data.nifti import read_label_volume
from neumours.device import download, empty_buffer, upload
from neumours.kernels.probabilities import argmax_labels
from neumours.infer.cache import VolumeCache, super_resolution_affine, super_resolution_shape
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.inr import INR
from neumours.model.reference import TorchINR, patches_np

CONFIG = INRConfig.tiny()


def torch_logits(inr: INR, volume: np.ndarray, grid) -> np.ndarray:
    """float64 TorchINR logits on every point of ``grid`` over the field of view of ``volume``."""
    shape = np.array(volume.shape[1:])
    index = np.stack(np.unravel_index(np.arange(int(np.prod(grid))), grid), -1)
    positions = index * ((shape - 1) / (np.array(grid) - 1))
    coords = 2.0 * positions / (shape - 1) - 1.0
    model = TorchINR(CONFIG).double()
    model.load_state_dict({k: torch.as_tensor(v).double() for k, v in inr.state_dict().items()})
    with torch.no_grad():
        return model(torch.from_numpy(coords), torch.from_numpy(patches_np(volume, positions))).numpy()


def check_labels(got: np.ndarray, logits: np.ndarray, margin: float = 1e-4) -> None:
    """Labels equal the float64 arg-max wherever the top two logits are not within ``margin``."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > margin
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got.reshape(-1)[clear], logits.argmax(1)[clear])


def test_argmax_kernel_matches_numpy(cpu_device, rng):
    n, total, start = 300, 1000, 123
    logits = rng.normal(scale=5, size=(n, 4)).astype(np.float32)
    logits[:20, 2] = logits[:20, 1] = 50.0  # ties go to the lowest class, as numpy's argmax
    labels = upload(cpu_device, np.full(total, 99, np.uint32), np.uint32)
    probs = upload(cpu_device, np.full(4 * total, -1, np.float32))
    argmax_labels(cpu_device, upload(cpu_device, logits), labels, start, n, total, 4, probs=probs)
    got = download(labels, (total,), np.uint32)
    np.testing.assert_array_equal(got[start:start + n], logits.argmax(1))
    assert (got[:start] == 99).all() and (got[start + n:] == 99).all()  # nothing outside the chunk
    e = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    np.testing.assert_allclose(download(probs, (4, total))[:, start:start + n], (e / e.sum(1, keepdims=True)).T,
                               rtol=1e-5, atol=1e-7)
    # Without probabilities the kernel binds no probability buffer.
    labels2 = empty_buffer(cpu_device, total, np.uint32)
    argmax_labels(cpu_device, upload(cpu_device, logits), labels2, 0, n, total, 4)
    np.testing.assert_array_equal(download(labels2, (n,), np.uint32), logits.argmax(1))


@pytest.fixture(scope="module")
def inr_and_volume(cpu_device):
    rng = np.random.default_rng(7)
    inr = INR(CONFIG, cpu_device, seed=3)
    volume = rng.normal(size=(4, 7, 6, 5)).astype(np.float32)
    return inr, volume


def test_cache_matches_torch_and_is_chunk_invariant(inr_and_volume):
    inr, volume = inr_and_volume
    whole = VolumeCache(inr, volume, keep_probs=True)
    assert whole.chunks == 1 and whole.shape == (7, 6, 5)
    logits = torch_logits(inr, volume, whole.shape)
    check_labels(whole.labels(), logits)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e / e.sum(1, keepdims=True)).T.reshape(4, *whole.shape)
    np.testing.assert_allclose(whole.probabilities(), probs, atol=1e-5)
    assert whole.labels().dtype == np.uint8
    # One axis-0 slab per chunk (chunk_points below a slab rounds up to one slab).
    sliced = VolumeCache(inr, volume, keep_probs=True, chunk_points=1)
    assert sliced.chunks == 7
    np.testing.assert_array_equal(sliced.labels(), whole.labels())
    np.testing.assert_allclose(sliced.probabilities(), whole.probabilities(), rtol=0, atol=1e-7)
    with pytest.raises(RuntimeError):
        VolumeCache(inr, volume).probabilities()


def test_super_resolution_grid_and_affine(inr_and_volume):
    inr, volume = inr_and_volume
    assert super_resolution_shape((7, 6, 5), 2) == (13, 11, 9)
    assert super_resolution_shape((7, 6, 5), 1) == (7, 6, 5)
    with pytest.raises(ValueError):
        super_resolution_shape((7, 6, 5), 0.5)
    fine = VolumeCache(inr, volume, grid_shape=(13, 11, 9))
    coarse = VolumeCache(inr, volume)
    # Every 2nd point of the 2x grid is an input voxel centre: same inputs, same labels.
    np.testing.assert_array_equal(fine.labels()[::2, ::2, ::2], coarse.labels())
    check_labels(fine.labels(), torch_logits(inr, volume, (13, 11, 9)))
    # An oblique affine: voxel 0 and the last voxel map to the same world points.
    rotation = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.0, 1.2, 2.5])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    shape, grid = (7, 6, 5), (13, 11, 9)
    fine_affine = super_resolution_affine(affine, shape, grid)
    for a, b in (((0, 0, 0), (0, 0, 0)), ((6, 5, 4), (12, 10, 8)), ((3, 0, 2), (6, 0, 4))):
        np.testing.assert_allclose(fine_affine @ [*b, 1], affine @ [*a, 1], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(fine_affine[:3, :3], axis=0), [0.5, 0.6, 1.25])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from neumours.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("segment")
    cases = write_dataset(root / "data", 2, shape=(24, 24, 20), seed=0, progress=False)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "tiny.safetensors", TorchINR(CONFIG).state_dict(), CONFIG)
    return root, cases, ckpt


def test_cli_segment_writes_labels_on_the_input_grid(phantom, capsys):
    root, cases, ckpt = phantom
    out, probs = root / "seg.nii.gz", root / "probs.nii.gz"
    assert main(["segment", str(cases[0]), "--checkpoint", str(ckpt), "--out", str(out), "--probs", str(probs),
                 "--denoise", "--timings", "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    for stage in ("load", "normalise", "inference", "argmax", "denoise", "write", "total"):
        assert stage in text
    case = load_case(cases[0])
    labels, img = read_label_volume(out)  # what load_case uses for label files
    assert labels.shape == case.shape and labels.max() <= 3
    np.testing.assert_allclose(img.affine, case.affine)
    assert img.header.get_data_dtype() == np.uint8
    assert img.header["sform_code"] == case.header["sform_code"]
    p = nib.load(probs)
    assert p.shape == (*case.shape, 4)
    np.testing.assert_allclose(np.asarray(p.dataobj).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p.affine, case.affine)


def test_cli_segment_super_resolution_and_folder(phantom):
    root, cases, ckpt = phantom
    out = root / "seg2.nii.gz"
    assert main(["segment", str(cases[1]), "--checkpoint", str(ckpt), "--out", str(out), "--scale", "1.5",
                 "--device", "cpu", "--quiet"]) == 0
    case = load_case(cases[1])
    img = nib.load(out)
    grid = super_resolution_shape(case.shape, 1.5)
    assert img.shape == grid
    last = np.array(case.shape) - 1
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], case.affine @ [0, 0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(img.affine @ [*(np.array(grid) - 1), 1], case.affine @ [*last, 1], atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), np.array(case.spacing) * last / (np.array(grid) - 1),
                               rtol=1e-6)
    folder = root / "segs"
    assert main(["segment", str(root / "data"), "--checkpoint", str(ckpt), "--out", str(folder),
                 "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"{c.name}.nii.gz" for c in cases]


def test_scaled_outputs_keep_qform_and_sform(phantom, cpu_device):
    """A --scale 2 segmentation (and its probabilities) keeps both orientation codes of the input,
    and its qform and sform both hold the finer grid's affine, so every viewer places it alike."""
    from neumours.infer.segment import segment_paths

    root, cases, ckpt = phantom
    out, probs = root / "scaled.nii.gz", root / "scaled_probs.nii.gz"
    segment_paths(cases[0], ckpt, out, probs=probs, scale=2, device=cpu_device, progress=False)
    case = load_case(cases[0])
    codes = int(case.header["qform_code"]), int(case.header["sform_code"])
    assert min(codes) > 0  # the phantom writes both, as scanners' NIfTI files do
    expected = super_resolution_affine(case.affine, case.shape, super_resolution_shape(case.shape, 2))
    for path in (out, probs):
        img = nib.load(path)
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == codes
        np.testing.assert_allclose(img.affine, expected, atol=1e-5)
        np.testing.assert_allclose(img.header.get_qform(), img.affine, atol=1e-5)
        np.testing.assert_allclose(img.header.get_sform(), img.affine, atol=1e-5)


def test_labels_on_device_are_the_segmenters(phantom, cpu_device):
    """What ``render --checkpoint`` draws: the cache's labels left on the device, or the denoised ones."""
    from neumours.infer.segment import Segmenter

    _, cases, ckpt = phantom
    segmenter = Segmenter(ckpt, cpu_device)
    case = load_case(cases[0])
    raw = download(segmenter.labels_on_device(case), case.shape, np.uint32)
    np.testing.assert_array_equal(raw, segmenter.cache(case.images).labels())
    denoised = download(segmenter.labels_on_device(case, denoise=True), case.shape, np.uint32)
    np.testing.assert_array_equal(denoised, segmenter(case, denoise=True).labels)


def test_cli_segment_errors_leave_no_output(phantom, tmp_path, capsys):
    root, cases, ckpt = phantom
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(cases[0]), "--checkpoint", str(bad), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.safetensors" in err[0]
    assert main(["segment", str(tmp_path / "nowhere"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--device", "cpu"]) == 2
    assert main(["segment", str(root / "data"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--device", "cpu"]) == 2  # two cases, one output file
    assert "--out must name a folder" in capsys.readouterr().err
    assert main(["segment", str(cases[0]), "--checkpoint", str(ckpt), "--out", str(out), "--scale", "0.5",
                 "--device", "cpu"]) == 2
    assert list(tmp_path.iterdir()) == [bad]


def test_device_normalisation_matches_numpy(cpu_device):
    from neumours.data import normalise
    from neumours.data.phantom import make_case
    from neumours.infer.normalise import normalise_on_device
    from neumours.model.inputs import CaseVolumes

    images = make_case((20, 18, 16), seed=0, index=2).images
    constant = images.copy()
    constant[2] = np.where(images[0] > 0, 5.0, 0.0)  # std 0 inside the brain: only centred
    other = np.zeros((4, 5, 4, 3), np.float32)
    other[:, 1:4, 1:3, 1] = np.arange(24, dtype=np.float32).reshape(4, 3, 2) + 1
    vols = CaseVolumes.upload(cpu_device, [images, constant, other])
    for index, source in enumerate((images, constant, other)):
        normalise_on_device(vols, index)
    offset = 0
    for source in (images, constant, other):
        got = download(vols.volumes)[offset:offset + source.size].reshape(source.shape)
        np.testing.assert_allclose(got, normalise(source), rtol=1e-5, atol=2e-6)
        offset += source.size


@pytest.mark.gpu
def test_gpu_cache_of_the_paper_network_matches_torch(cuda_device):
    """Full-size network on CUDA: labels equal torch's float64 arg-max away from near-ties; chunking invariant."""
    from neumours.data.phantom import make_case
    from neumours.infer.normalise import normalise_on_device
    from neumours.model.inputs import CaseVolumes

    config = INRConfig(precision="fp32")
    inr = INR(config, cuda_device, seed=0)
    images = make_case((40, 36, 30), seed=0, index=0).images
    vols = CaseVolumes.upload(cuda_device, [images])
    normalise_on_device(vols)
    volume = download(vols.volumes, images.shape)
    cache = VolumeCache(inr, vols, keep_probs=True)
    sliced = VolumeCache(inr, vols, chunk_points=36 * 30 * 7)
    np.testing.assert_array_equal(sliced.labels(), cache.labels())
    index = np.stack(np.unravel_index(np.arange(volume[0].size), volume.shape[1:]), -1)
    coords = 2.0 * index / (np.array(volume.shape[1:]) - 1) - 1.0
    model = TorchINR(config).double()
    model.load_state_dict({k: torch.as_tensor(v).double().cpu() for k, v in inr.state_dict().items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(coords), torch.from_numpy(patches_np(volume, index))).numpy()
    check_labels(cache.labels(), logits, margin=1e-3)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(cache.probabilities(), (e / e.sum(1, keepdims=True)).T.reshape(4, *volume.shape[1:]),
                               atol=1e-4)


def test_segmenter_reuses_buffers_across_cases_of_different_sizes(cpu_device, tmp_path):
    """One Segmenter, cases large -> small -> large: each result equals a fresh Segmenter's."""
    from neumours.data.phantom import write_dataset
    from neumours.infer.segment import Segmenter

    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", INR(CONFIG, cpu_device, seed=3).state_dict(), CONFIG)
    big = write_dataset(tmp_path / "big", 1, shape=(24, 20, 18), seed=1, progress=False)[0]
    small = write_dataset(tmp_path / "small", 1, shape=(16, 17, 16), seed=2, progress=False)[0]
    shared = Segmenter(checkpoint, cpu_device, chunk_points=2000)
    results = [shared(case).raw_labels for case in (big, small, big)]
    for case, got in zip((big, small, big), results):
        fresh = Segmenter(checkpoint, cpu_device, chunk_points=2000)(case).raw_labels
        np.testing.assert_array_equal(got, fresh)


def test_pack_labels_kernel_matches_numpy(cpu_device, rng):
    from neumours.kernels.probabilities import pack_labels

    for total in (1, 4, 1003):
        labels = rng.integers(0, 4, total).astype(np.uint32)
        packed = upload(cpu_device, np.full(-(-total // 4), 0xDEADBEEF, np.uint32), np.uint32)  # poisoned
        pack_labels(cpu_device, upload(cpu_device, labels, np.uint32), packed, total)
        got = download(packed, (-(-total // 4),), np.uint32).view(np.uint8)
        np.testing.assert_array_equal(got[:total], labels)
        assert not got[total:].any()


def test_segmenter_denoises_on_the_device_like_the_host_and_downloads_raw_labels_only_on_demand(phantom, cpu_device):
    """device_denoise=True (the default off the CPU device) gives the scipy path's labels; the raw
    labels stay on the device until asked for; timings have "denoise" before "download"."""
    from neumours.infer.denoise import DenoiseParams
    from neumours.infer.segment import STAGES, Segmenter

    root, cases, _ = phantom
    # Seed 2 of the tiny network labels these phantoms with background, NCR and ET in pieces.
    ckpt = save_checkpoint(root / "seed2.safetensors", INR(CONFIG, cpu_device, seed=2).state_dict(), CONFIG)
    host = Segmenter(ckpt, cpu_device, device_denoise=False)
    # The CPU device keeps scipy by default, GPUs (a kernel-test run with NEUMOURS_DEVICE) the device kernels.
    assert Segmenter(ckpt, cpu_device).device_denoise == (cpu_device.info.type.name != "cpu")
    on_device = Segmenter(ckpt, cpu_device, device_denoise=True)
    for params in (None, DenoiseParams(0, 200, "axial", 6)):
        expected = host(cases[0], denoise=True, denoise_params=params, timings=True)
        got = on_device(cases[0], denoise=True, denoise_params=params, timings=True)
        assert not isinstance(got.raw, np.ndarray)  # still a device buffer
        np.testing.assert_array_equal(got.labels, expected.labels)
        np.testing.assert_array_equal(got.raw_labels, expected.raw_labels)
        assert (got.labels != got.raw_labels).any()  # denoising changed something
        assert isinstance(got.raw, np.ndarray)  # downloaded once, kept
        stages = [s for s in got.timings if s in ("denoise", "download")]
        assert stages == ["denoise", "download"] and STAGES.index("denoise") < STAGES.index("download")
    plain = on_device(cases[1])
    np.testing.assert_array_equal(plain.labels, plain.raw_labels)
    np.testing.assert_array_equal(plain.labels, host(cases[1]).labels)
