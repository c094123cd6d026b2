"""Test-time augmentation over flips (neumours.infer.tta, ``Segmenter(tta_flips=...)``, ``segment --tta``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.cli.main import main
from neumours.data import load_case, normalise
from neumours.data.nifti import read_label_volume
from neumours.data.phantom import make_case, write_case
from neumours.infer.cache import VolumeCache
from neumours.infer.denoise import denoise
from neumours.infer.segment import Segmenter
from neumours.infer.tta import flip_views
from neumours.model.checkpoint import save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.inr import INR
from neumours.model.reference import TorchINR, patches_np

CONFIG = INRConfig.tiny()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cpu_device):
    root = tmp_path_factory.mktemp("tta")
    case = make_case((20, 18, 16), seed=0, index=2)
    folder = write_case(case, root)
    ckpt = save_checkpoint(root / "tiny.safetensors", INR(CONFIG, cpu_device, seed=5).state_dict(), CONFIG)
    return root, folder, ckpt


def torch_probs(ckpt_state, volume: np.ndarray) -> np.ndarray:
    """(4, X, Y, Z) float64 softmax of the float64 TorchINR over every voxel of a normalised volume."""
    shape = np.array(volume.shape[1:])
    positions = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), tuple(shape)), -1).astype(np.float64)
    coords = 2.0 * positions / (shape - 1) - 1.0
    model = TorchINR(CONFIG).double()
    model.load_state_dict({k: torch.as_tensor(v).double() for k, v in ckpt_state.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(coords), torch.from_numpy(patches_np(volume, positions))).numpy()
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).T.reshape(4, *shape)


def test_flip_views():
    assert flip_views(()) == [()]
    assert flip_views((0,)) == [(), (0,)]
    assert flip_views((2, 0)) == [(), (0,), (2,), (0, 2)]
    assert len(flip_views((0, 1, 2))) == 8
    for bad in ((3,), (0, 0), (-1,)):
        with pytest.raises(ValueError, match="flip axes"):
            flip_views(bad)


def test_tta_is_the_mean_of_separately_computed_flipped_predictions(setup, cpu_device):
    root, folder, ckpt = setup
    case = load_case(folder)
    seg = Segmenter(ckpt, cpu_device, device_normalise=False, tta_flips=(0, 2))
    result = seg(case, probs=True)
    volume = normalise(case.images)
    views = []
    state = seg.inr.state_dict()
    for flips in [(), (0,), (2,), (0, 2)]:
        dims = tuple(a + 1 for a in flips)
        mirrored = np.ascontiguousarray(np.flip(volume, axis=dims))
        # Each view on its own: the ordinary cache on the mirrored case, mirrored back ...
        probs = VolumeCache(seg.inr, mirrored, keep_probs=True).probabilities()
        views.append(np.flip(probs, axis=dims))
        # ... which is the independent float64 network on the mirrored case, mirrored back.
        np.testing.assert_allclose(views[-1], np.flip(torch_probs(state, mirrored), axis=dims), atol=2e-5)
    mean = np.mean(views, axis=0)
    np.testing.assert_allclose(result.probs, mean, atol=1e-6)
    assert result.probs.shape == (4, *case.shape) and result.probs.dtype == np.float32
    np.testing.assert_array_equal(result.raw_labels, result.probs.argmax(0))
    assert result.labels is result.raw_labels or np.array_equal(result.labels, result.raw_labels)
    # The views differ (an untrained INR is not flip-symmetric), so the average is not one of them.
    assert not np.allclose(views[0], views[1], atol=1e-3)
    # Without flips the Segmenter is the one-pass cache.
    plain = Segmenter(ckpt, cpu_device, device_normalise=False)(case, probs=True)
    np.testing.assert_allclose(plain.probs, views[0], atol=1e-6)


def test_tta_with_device_normalisation_and_denoising(setup, cpu_device):
    root, folder, ckpt = setup
    case = load_case(folder)
    host = Segmenter(ckpt, cpu_device, device_normalise=False, tta_flips=(0,))(case, probs=True)
    dev = Segmenter(ckpt, cpu_device, tta_flips=(0,))(case, probs=True, denoise=True)
    np.testing.assert_allclose(dev.probs, host.probs, atol=1e-4)  # z-scores agree to float32 rounding
    np.testing.assert_array_equal(dev.labels, denoise(dev.raw_labels, spacing=dev.spacing))
    np.testing.assert_allclose(dev.probs.sum(0), 1.0, atol=1e-5)


def test_segment_cli_tta(setup, tmp_path, capsys, cpu_device):
    root, folder, ckpt = setup
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--tta", "--device", "cpu",
                 "--quiet"]) == 0
    labels, _ = read_label_volume(out)
    expected = Segmenter(ckpt, cpu_device, tta_flips=(0,))(load_case(folder)).labels
    np.testing.assert_array_equal(np.asarray(labels), expected)
    capsys.readouterr()
    for bad in ("3", "0,0", "x"):
        target = tmp_path / f"bad{bad.replace(',', '')}.nii.gz"
        assert main(["segment", str(folder), "--checkpoint", str(ckpt), "--out", str(target), "--tta", bad,
                     "--device", "cpu", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("neumours: error: --tta") and "0, 1, 2" in err[0]
        assert not target.exists()


def test_probability_smoothing(setup, cpu_device):
    from neumours.infer.smooth import smooth_probabilities

    root, folder, ckpt = setup
    case = load_case(folder)
    plain = Segmenter(ckpt, cpu_device)(case, probs=True)
    smooth = Segmenter(ckpt, cpu_device, smooth_mm=1.5)(case, probs=True, denoise=True)
    expected = smooth_probabilities(plain.probs, 1.5, case.spacing)
    np.testing.assert_allclose(smooth.probs, expected, atol=1e-6)
    np.testing.assert_allclose(smooth.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(smooth.raw_labels, expected.argmax(0))
    np.testing.assert_array_equal(smooth.labels, denoise(smooth.raw_labels, spacing=smooth.spacing))
    assert not np.allclose(smooth.probs, plain.probs, atol=1e-3)
    # Per axis in mm: a coarser axis is blurred by fewer voxels.
    p = np.zeros((2, 9, 9, 9), np.float32)
    p[0, 4, 4, 4], p[1] = 1.0, 1.0
    p[1, 4, 4, 4] = 0.0
    out = smooth_probabilities(p, 1.0, (1.0, 1.0, 2.0))
    assert out[0, 4, 4, 5] < out[0, 4, 5, 4]
    np.testing.assert_array_equal(smooth_probabilities(p, 0.0), p)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            smooth_probabilities(p, bad)


def test_segment_cli_smooth_refuses_bad_values(setup, tmp_path, capsys):
    root, folder, ckpt = setup
    target = tmp_path / "s.nii.gz"
    assert main(["segment", str(folder), "--checkpoint", str(ckpt), "--out", str(target), "--smooth", "-1",
                 "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neumours: error: --smooth") and not target.exists()
