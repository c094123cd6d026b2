"""Render-loss refinement: d(image loss)/d(INR weights) by both paths against float64 torch and
finite differences, the refinement loop, and ``neumours refine``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.model.reference import TorchINR, patches_np
from neumours.render import RenderSettings, orbit
from neumours.refine.image_loss import image_loss
from neumours.refine.loop import PATHS, weight_gradients
from neumours.refine.reference import patches_torch, refinement_loss
from neumours.render.transfer import LabelLUT

CONFIG = INRConfig(num_freqs=3, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)


def _small_problem(rng, device, opacities=(0.0, 8.0, 4.0, 8.0), step=0.05):
    shape, spacing = (9, 8, 7), (1.0, 1.2, 1.0)
    volume = rng.normal(size=(4, *shape)).astype(np.float32)
    inr = INR(CONFIG, device, seed=int(rng.integers(1 << 30)))
    settings = RenderSettings(lut=LabelLUT(opacities=np.array(opacities, np.float32)), step=step)
    cameras = [orbit(a, 20.0, 3.5, width=12, height=10) for a in (30.0, 160.0)]
    targets = [rng.uniform(0, 0.5, (10, 12, 3)) for _ in cameras]
    return volume, spacing, inr, settings, cameras, targets


@pytest.mark.parametrize("path", ["cache", "direct"])
def test_path_gradients_match_float64_torch(cpu_device, path):
    # A fixed problem: at a random one, float32 and float64 now and then put a
    # sample's hidden unit on different sides of its ReLU kink (|z| ~ 1e-7), which
    # moves a weight gradient by ~1e-4 of its norm. Here no |z| is below 1e-6.
    rng = np.random.default_rng(3)
    volume, spacing, inr, settings, cameras, targets = _small_problem(rng, cpu_device)
    weights = [None, (rng.random((10, 12)) > 0.3).astype(np.float32)]  # the second view has "don't care" pixels
    vols = CaseVolumes.upload(cpu_device, [volume])
    inr.zero_grad()
    stats = {}
    loss, images = PATHS[path](inr, vols, spacing, cameras, settings, targets, weights, chunk_points=200, stats=stats)
    grads = weight_gradients(inr)
    assert stats["backward_points"] > 0

    # float64 torch: the same loss with autograd through renderer, softmax and INR.
    model = TorchINR(CONFIG).double()
    model.load_state_dict({k: v.double() for k, v in inr.state_dict().items()})
    total, ref_images = refinement_loss(model, torch.from_numpy(volume).double(), spacing, cameras, settings, targets,
                                        path, weights)
    total.backward()
    assert abs(loss - float(total.detach())) <= 1e-5 * float(total.detach())
    seen = weights[1] != 0
    assert np.abs(images[1][seen] - ref_images[1].detach().numpy()[seen]).max() < 1e-5
    for name, param in model.named_parameters():
        ref = param.grad.numpy()
        assert np.linalg.norm(ref) > 0, name  # the views see the tumour classes: a real gradient
        err = np.linalg.norm(grads[name] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert err <= 2e-5, (name, err)


@pytest.mark.parametrize("path", ["cache", "direct"])
def test_path_gradients_match_finite_differences(cpu_device, rng, path):
    # Opacities low enough that no ray reaches T < 0.01, whose cut-off would make the loss jump.
    volume, spacing, inr, settings, cameras, targets = _small_problem(rng, cpu_device, (0.0, 1.0, 0.5, 1.0), step=0.1)
    vols = CaseVolumes.upload(cpu_device, [volume])
    state = {k: v.numpy() for k, v in inr.state_dict().items()}

    def loss_at(shift: dict[str, np.ndarray] | None) -> float:
        inr.load_state_dict({k: v + (0 if shift is None else shift[k]) for k, v in state.items()})
        inr.zero_grad()
        return PATHS[path](inr, vols, spacing, cameras, settings, targets)[0]

    loss_at(None)
    grads = weight_gradients(inr)
    scale = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    for _ in range(3):
        # Half along the gradient, half random: a directional derivative of the gradient's size.
        direction = {k: grads[k] / scale + rng.normal(size=v.shape) / np.sqrt(v.size * len(state))
                     for k, v in state.items()}
        norm = np.sqrt(sum(float((d * d).sum()) for d in direction.values()))
        direction = {k: (d / norm).astype(np.float32) for k, d in direction.items()}
        eps = 3e-2
        fd = (loss_at({k: eps * d for k, d in direction.items()})
              - loss_at({k: -eps * d for k, d in direction.items()})) / (2 * eps)
        analytic = sum(float((grads[k] * direction[k]).sum()) for k in state)
        assert abs(fd - analytic) <= 2e-3 * abs(analytic), (fd, analytic)


def test_paths_agree_where_the_field_is_smooth(cpu_device, rng):
    """Paths (a) and (b) render the same image up to the trilinear discretisation of (a)."""
    from neumours.refine.direct_path import DirectRenderer
    from neumours.infer.cache import VolumeCache
    from neumours.render.raymarch import render

    volume, spacing, inr, settings, cameras, _ = _small_problem(rng, cpu_device, (0.0, 1.0, 0.5, 1.0))
    vols = CaseVolumes.upload(cpu_device, [volume])
    direct, _ = DirectRenderer(inr, vols, spacing, settings).render(cameras[0])
    probs = VolumeCache(inr, vols, keep_probs=True).probabilities()
    cached = render(cpu_device, None, spacing, cameras[0], settings, probabilities=probs)
    difference = np.abs(direct - cached)
    assert difference.max() > 0  # different fields ...
    assert difference.mean() < 0.1 * np.abs(cached - np.asarray(settings.background)).mean()  # ... same picture


def test_patches_torch_matches_numpy(rng):
    volume = rng.normal(size=(4, 6, 5, 7))
    positions = np.concatenate([rng.uniform(-1, 7, (20, 3)), rng.integers(0, 5, (10, 3))]).astype(np.float64)
    got = patches_torch(torch.from_numpy(volume), torch.from_numpy(positions)).numpy()
    np.testing.assert_allclose(got, patches_np(volume, positions), atol=1e-12)


def test_image_loss_dont_care_pixels():
    image, target = np.ones((2, 3, 3)), np.zeros((2, 3, 3))
    weight = np.array([[1, 0, 0], [0, 0, 0]], float)
    loss, grad = image_loss(image, target, weight)
    assert loss == 1.0 and grad[0, 1:].sum() == 0 and grad[1].sum() == 0


def test_refine_moves_the_segmentation_towards_corrected_views(cpu_device, rng):
    from neumours.data.phantom import make_case
    from neumours.data import normalise
    from neumours.infer.cache import VolumeCache
    from neumours.refine.loop import Anchor, refine
    from neumours.render.views import orbit_cameras, render_label_views

    case = make_case((20, 20, 16), seed=2)
    images = normalise(case.images)
    vols = CaseVolumes.upload(cpu_device, [images])
    inr = INR(CONFIG, cpu_device, seed=1)
    settings = RenderSettings(step=0.05)
    cameras = orbit_cameras(case.label.shape, (1, 1, 1), 2, size=(16, 16))
    targets = render_label_views(cpu_device, case.label, (1, 1, 1), cameras, settings)
    other = CaseVolumes.upload(cpu_device, [normalise(make_case((16, 16, 16), seed=3).images)])
    anchor = Anchor.sample(inr, other, points=256, weight=1.0)
    rows = refine(inr, vols, (1, 1, 1), cameras, settings, targets, steps=5, lr=3e-2, anchor=anchor)
    assert rows[-1]["image_loss"] < 0.9 * rows[0]["image_loss"]
    assert rows[0]["anchor"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["anchor"] >= 0.0
    assert VolumeCache(inr, vols).labels().shape == case.label.shape


def test_refine_cli_writes_checkpoint_and_report(tmp_path, capsys):
    import json

    import nibabel as nib

    from neumours.cli.main import main
    from neumours.data.phantom import write_dataset
    from neumours.model.checkpoint import load_checkpoint, save_checkpoint
    from neumours.device import get_device

    write_dataset(tmp_path / "data", 2, shape=(16, 16, 16), seed=4, progress=False)
    case = tmp_path / "data" / "Phantom-00000-000"
    seg = case / "Phantom-00000-000-seg.nii.gz"
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", INR(CONFIG, get_device("cpu")).state_dict(), CONFIG)
    out = tmp_path / "refined.safetensors"
    common = ["refine", str(case), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]

    assert main(common + ["--from-labels", str(seg), "--views", "2", "--size", "12x12", "--steps", "2",
                          "--path", "direct"]) == 0
    _, config, metadata = load_checkpoint(out, expected_config=CONFIG)
    assert metadata["refined_on"] == "Phantom-00000-000"
    def strict(constant):  # bare Infinity / NaN are not JSON (issue 31)
        raise AssertionError(f"the report holds {constant}")

    report = json.loads(out.with_suffix(".json").read_text(), parse_constant=strict)
    assert len(report["steps"]) == 2 and "dice_WT" in report["dice_after"] and report["path"] == "direct"

    # Bad targets: one line, exit 2, nothing written.
    capsys.readouterr()
    bad_seg = tmp_path / "small-seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 15), np.uint8), np.eye(4)), bad_seg)
    targets = tmp_path / "targets"
    targets.mkdir()
    np.savez(targets / "targets.npz", images=np.zeros((2, 8, 8, 3)), azimuth=np.zeros(1), elevation=np.zeros(2))
    missing = tmp_path / "no-cameras"
    missing.mkdir()
    np.savez(missing / "targets.npz", images=np.zeros((2, 8, 8, 3)))
    out2 = tmp_path / "x.safetensors"
    bad = ["refine", str(case), "--checkpoint", str(checkpoint), "--out", str(out2), "--device", "cpu"]
    for extra, message in ((["--from-labels", str(bad_seg)], "does not match case"),
                           (["--targets", str(targets)], "2 images but 1 azimuths"),
                           (["--targets", str(missing)], "missing array"),
                           (["--targets", str(tmp_path / "nowhere")], "targets file not found"),
                           ([], "exactly one of")):
        assert main(bad + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("neumours: error:") and message in err and err.count("\n") == 1, err
    assert not out2.exists()


def test_refine_checkpoint_is_the_command_as_a_call(tmp_path, cpu_device):
    """The library call behind ``neumours refine``: a report in memory, nothing on disk until write(),
    then the checkpoint and its report together, the report naming the checkpoint's hash."""
    import hashlib
    import json

    from neumours.data.phantom import write_dataset
    from neumours.model.checkpoint import load_checkpoint, save_checkpoint
    from neumours.refine.checkpoint import refine_checkpoint, report_path

    write_dataset(tmp_path / "data", 1, shape=(16, 16, 16), seed=4, progress=False)
    case = tmp_path / "data" / "Phantom-00000-000"
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", INR(CONFIG, cpu_device).state_dict(), CONFIG)
    report = refine_checkpoint(checkpoint, case, from_labels=case / "Phantom-00000-000-seg.nii.gz", masks=True,
                               views=1, size=(12, 12), steps=2, lr=3e-2, path="direct", device=cpu_device,
                               announce=False)
    assert [row["step"] for row in report.steps] == [0, 1] and report.targets == "masks" and report.views == 1
    assert "dice_WT" in report.dice_before and "dice_WT" in report.dice_after
    assert report.metadata["refined_on"] == "Phantom-00000-000" and report.metadata["refine_steps"] == "2"
    assert list(tmp_path.glob("*.json")) == []
    out = report.write(tmp_path / "refined.safetensors")
    state, _, _ = load_checkpoint(out, expected_config=CONFIG)
    for name, value in report.state.items():
        np.testing.assert_array_equal(state[name], value.numpy())
    written = json.loads(report_path(out).read_text())
    assert written["checkpoint_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert written["steps"] == report.steps and written["targets"] == "masks"


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["cache", "direct"])
def test_gpu_path_gradients_paper_network(cuda_device, path):
    """Both paths on CUDA with the paper's network, a 48^3 phantom and 2 views of 64 x 64, against
    float64 torch on the same GPU (hundreds of thousands of points: ReLU-kink flips between fp32
    and fp64 are many but each moves the gradient by ~1/N, hence the looser bound)."""
    from neumours.data import normalise
    from neumours.data.phantom import make_case
    from neumours.render.views import orbit_cameras, render_label_views

    case = make_case((48, 48, 48), seed=1)
    volume = normalise(case.images)
    config = INRConfig(precision="fp32")
    inr = INR(config, cuda_device, seed=0)
    settings = RenderSettings()
    cameras = orbit_cameras(case.label.shape, (1, 1, 1), 2, size=(64, 64))
    targets = render_label_views(cuda_device, case.label, (1, 1, 1), cameras, settings)
    vols = CaseVolumes.upload(cuda_device, [volume])
    inr.zero_grad()
    loss, _ = PATHS[path](inr, vols, (1, 1, 1), cameras, settings, targets)
    grads = weight_gradients(inr)

    model = TorchINR(config).double().cuda()
    model.load_state_dict({k: v.double().cuda() for k, v in inr.state_dict().items()})
    total, _ = refinement_loss(model, torch.from_numpy(volume).double().cuda(), (1, 1, 1), cameras, settings,
                               targets, path)
    total.backward()
    assert abs(loss - float(total.detach())) <= 1e-4 * float(total.detach())
    for name, param in model.named_parameters():
        ref = param.grad.cpu().numpy()
        err = np.linalg.norm(grads[name] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert err <= 2e-3, (name, err)


def test_silhouette_image_is_tumour_opacity(cpu_device, rng):
    """Under silhouette settings every channel of the soft render is 1 - T_N."""
    from neumours.refine.masks import silhouette_settings
    from neumours.render.raymarch import ChannelVolume, Frame, Scene, render_device

    probs = rng.dirichlet(np.ones(4), size=(10, 9, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    scene = Scene(cpu_device, (10, 9, 8), (1, 1, 1), probabilities=ChannelVolume.upload(cpu_device, probs))
    camera = orbit(40.0, 25.0, 3.5, width=14, height=12)
    frame = Frame.allocate(cpu_device, 14, 12)
    render_device(scene, camera, silhouette_settings(RenderSettings(step=0.05, background=(0.3, 0.2, 0.1))), frame)
    image, transmittance = frame.to_numpy()
    assert (transmittance < 0.999).mean() > 0.3  # the tumour classes are seen
    np.testing.assert_allclose(image, np.repeat(1 - transmittance[..., None], 3, -1), atol=2e-6)


def test_mask_targets():
    from neumours.refine.masks import DONT_CARE, mask_targets

    images, weights = mask_targets(np.array([[[0, 1], [DONT_CARE, 1]]], np.uint8))
    assert images[0][..., 0].tolist() == [[0, 1], [0, 1]] and weights[0].tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="has value 7"):
        mask_targets([np.array([[0, 7]])])
    with pytest.raises(ValueError, match="2-D integer"):
        mask_targets([np.zeros((2, 2), np.float32)])


def test_refine_cli_mask_targets(tmp_path, capsys):
    """Masks (from a corrected label volume, or drawn and saved in targets.npz) refine through the CLI."""
    import json

    from neumours.cli.main import main
    from neumours.data.phantom import write_dataset
    from neumours.device import get_device
    from neumours.model.checkpoint import save_checkpoint

    write_dataset(tmp_path / "data", 1, shape=(16, 16, 16), seed=4, progress=False)
    case = tmp_path / "data" / "Phantom-00000-000"
    seg = case / "Phantom-00000-000-seg.nii.gz"
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", INR(CONFIG, get_device("cpu")).state_dict(), CONFIG)
    common = ["refine", str(case), "--checkpoint", str(checkpoint), "--device", "cpu", "--steps", "3", "--lr", "3e-2"]
    out = tmp_path / "a.safetensors"
    assert main(common + ["--from-labels", str(seg), "--masks", "--views", "2", "--size", "12x12", "--out",
                          str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["targets"] == "masks" and report["steps"][-1]["image_loss"] < report["steps"][0]["image_loss"]

    targets = tmp_path / "drawn"
    targets.mkdir()
    masks = np.full((2, 10, 12), 255, np.uint8)
    masks[:, 3:7, 4:8] = 1  # "tumour here"
    masks[:, :2] = 0        # "not tumour along the top rows"; the rest: don't care
    np.savez(targets / "targets.npz", masks=masks, azimuth=np.array([0.0, 90.0]), elevation=np.zeros(2))
    assert main(common + ["--targets", str(targets), "--out", str(tmp_path / "b.safetensors")]) == 0

    masks[0, 0, 0] = 9
    np.savez(targets / "targets.npz", masks=masks, azimuth=np.array([0.0, 90.0]), elevation=np.zeros(2))
    capsys.readouterr()
    assert main(common + ["--targets", str(targets), "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "mask 0 has value 9" in err and err.count("\n") == 1 and not (tmp_path / "c.safetensors").exists()

    assert main(common + ["--targets", str(targets), "--masks", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "--masks goes with --from-labels" in capsys.readouterr().err


def test_refine_cli_too_many_ray_samples(tmp_path, capsys, monkeypatch):
    """Path (b) refusing a view whose samples outgrow its buffers: one line, exit 2, nothing written."""
    import neumours.refine.direct_path as direct
    from neumours.cli.main import main
    from neumours.data.phantom import write_dataset
    from neumours.device import get_device
    from neumours.model.checkpoint import save_checkpoint

    monkeypatch.setattr(direct, "MAX_BUFFER_BYTES", 1000)  # stands in for 2 GiB at a test-sized view
    write_dataset(tmp_path / "data", 1, shape=(16, 16, 16), seed=4, progress=False)
    case = tmp_path / "data" / "Phantom-00000-000"
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", INR(CONFIG, get_device("cpu")).state_dict(), CONFIG)
    out = tmp_path / "r.safetensors"
    capsys.readouterr()
    assert main(["refine", str(case), "--checkpoint", str(checkpoint), "--device", "cpu", "--path", "direct",
                 "--from-labels", str(case / "Phantom-00000-000-seg.nii.gz"), "--views", "1", "--size", "12x12",
                 "--out", str(out)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar's line
    assert last.startswith("neumours: error:") and "ray samples need buffers over 2 GiB" in last
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("kind", ["sample", "keep_rest"])
def test_anchor_gradient_matches_finite_differences(cpu_device, kind):
    """The anchor's weight gradient (KL from the soft targets) against central differences of its penalty."""
    from neumours.data import normalise
    from neumours.data.phantom import make_case
    from neumours.refine.loop import Anchor

    rng = np.random.default_rng(5)
    case = make_case((16, 16, 16), seed=6)
    vols = CaseVolumes.upload(cpu_device, [normalise(case.images)])
    inr = INR(CONFIG, cpu_device, seed=2)
    if kind == "sample":
        anchor = Anchor.sample(inr, vols, points=200, weight=2.0, seed=1)
    else:
        corrected = np.zeros(case.label.shape, bool)
        corrected[4:8, 4:8, 5] = True
        anchor = Anchor.keep_rest(inr, vols, case.label, corrected, points=200, weight=2.0)
        positions = np.argwhere(~corrected)
        assert anchor.count <= 200 and not corrected[tuple(positions.T)].all()
    with torch.no_grad():  # move off the anchor's own weights so the penalty and its gradient are not zero
        inr.bridge.params.add_(torch.from_numpy(rng.normal(0, 0.05, inr.layout.total).astype(np.float32)))
    inr.bridge.push_params()

    def penalty() -> float:
        p = anchor._probabilities()
        q = anchor.targets
        return float(anchor.weight * (q * (np.log(q + 1e-12) - np.log(p + 1e-12))).sum(axis=1).mean())

    inr.zero_grad()
    value = anchor.add_gradients()
    assert value == pytest.approx(penalty(), rel=1e-6) and value > 0
    grad = np.concatenate([g.ravel() for g in weight_gradients(inr).values()])
    base = inr.bridge.params.detach().clone()
    for _ in range(3):
        direction = rng.normal(size=inr.layout.total).astype(np.float32)
        direction /= np.linalg.norm(direction)
        eps, sides = 1e-2, []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                inr.bridge.params.copy_(base + sign * eps * torch.from_numpy(direction))
            inr.bridge.push_params()
            sides.append(penalty())
        numeric = (sides[0] - sides[1]) / (2 * eps)
        assert float(grad @ direction) == pytest.approx(numeric, rel=0.03, abs=1e-5)
