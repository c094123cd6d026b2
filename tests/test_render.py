"""The Slang raymarcher against the torch float64 integrator, finite differences and its maths, on the CPU device."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from neumours.render import (
    MIN_TRANSMITTANCE,
    Camera,
    LabelLUT,
    ModalityWindow,
    RenderSettings,
    TransferFunction,
    orbit,
    render,
    render_backward,
    volume_box,
)
from neumours.render.box import intersect_box
from neumours.render.reference import TorchScene, render_reference

SHAPE = (12, 10, 8)
SPACING = (1.0, 1.2, 1.5)
WIDTH, HEIGHT = 16, 12
MODES = ["mri", "labels", "soft"]


def rel_err(x, ref) -> float:
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def make_data(seed: int = 7):
    """Smooth MRI-like volumes in [0, 1] (zero outside an ellipsoid), labels and soft probabilities."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s) for s in SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = (x / 0.95) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2 < 1
    volumes = np.stack([0.5 + 0.3 * np.sin(2 * x + c) * np.cos(3 * y - c) + 0.2 * z for c in range(4)])
    volumes = (volumes + rng.normal(scale=0.05, size=volumes.shape)) * inside
    r = np.sqrt((x - 0.2) ** 2 + (y + 0.1) ** 2 + z ** 2)
    labels = np.select([r < 0.25, r < 0.45, r < 0.7], [1, 3, 2], 0) * inside
    logits = rng.normal(size=(4, *SHAPE)) + 3 * np.eye(4)[labels].transpose(3, 0, 1, 2)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return volumes.astype(np.float32), labels.astype(np.uint8), probs.astype(np.float32)


def make_settings(**overrides) -> RenderSettings:
    windows = (
        ModalityWindow(lo=0.2, hi=0.9, gamma=1.0, weight=0.4, tint=(1.0, 0.9, 0.8)),
        ModalityWindow(lo=0.1, hi=0.8, gamma=0.7, weight=0.3, tint=(0.6, 0.7, 1.0)),
        ModalityWindow(lo=0.3, hi=1.0, gamma=1.6, weight=0.2),
        ModalityWindow(lo=0.25, hi=0.75, gamma=2.0, weight=0.5, tint=(1.0, 0.5, 0.5)),
    )
    settings = RenderSettings(windows=windows, transfer=TransferFunction(density_scale=6.0, density_lo=0.05,
                                                                         density_hi=0.8, brightness=1.5),
                              lut=LabelLUT(opacities=np.array([0.5, 12.0, 3.0, 9.0], np.float32)),
                              step=0.07, background=(0.1, 0.2, 0.3))
    return replace(settings, **overrides)


def mode_inputs(mode: str, labels, probs) -> dict:
    return {"mri": {}, "labels": {"labels": labels}, "soft": {"probabilities": probs}}[mode]


def camera() -> Camera:
    return orbit(35.0, 25.0, 3.2, fov_y_deg=40.0, width=WIDTH, height=HEIGHT)


# ---------------------------------------------------------------- camera and box maths


def test_rays_pass_through_pixel_centres():
    cam = Camera(eye=(0.0, -4.0, 0.5), target=(0.0, 0.0, 0.5), up=(0, 0, 1), fov_y_deg=60.0, width=5, height=3)
    origins, dirs = cam.rays()
    assert dirs.shape == (3, 5, 3) and np.allclose(origins, cam.eye)
    assert np.allclose(np.linalg.norm(dirs, axis=-1), 1.0)
    forward, right, up = cam.basis()
    np.testing.assert_allclose(forward, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(right, [1, 0, 0], atol=1e-12)  # forward x up
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-12)
    # Odd sizes: the middle pixel looks straight ahead; image-plane offsets are pixel centres.
    np.testing.assert_allclose(dirs[1, 2], forward, atol=1e-12)
    s = np.tan(np.radians(60.0) / 2)
    plane = dirs / (dirs @ forward)[..., None]
    expect_x = (2 * (np.arange(5) + 0.5) / 5 - 1) * s * 5 / 3
    expect_y = (1 - 2 * (np.arange(3) + 0.5) / 3) * s
    np.testing.assert_allclose(plane @ right, np.broadcast_to(expect_x, (3, 5)), atol=1e-12)
    np.testing.assert_allclose(plane @ up, np.broadcast_to(expect_y[:, None], (3, 5)), atol=1e-12)


def test_project_inverts_rays():
    cam = orbit(35.0, 20.0, 3.0, target=(0.1, -0.2, 0.05), fov_y_deg=40.0, width=7, height=4)
    origins, dirs = cam.rays()
    depths = np.linspace(0.5, 4.0, 28).reshape(4, 7)
    forward = cam.basis()[0]
    points = origins + dirs * (depths / (dirs @ forward))[..., None]
    column, row, depth = cam.project(points)
    np.testing.assert_allclose(column, np.broadcast_to(np.arange(7), (4, 7)), atol=1e-9)
    np.testing.assert_allclose(row, np.broadcast_to(np.arange(4)[:, None], (4, 7)), atol=1e-9)
    np.testing.assert_allclose(depth, depths, atol=1e-12)
    assert cam.project(np.asarray(cam.eye) - forward)[2] < 0  # behind the camera


def test_orbit_positions_and_frame():
    np.testing.assert_allclose(orbit(0, 0, 2).eye, [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(orbit(90, 0, 2).eye, [0, 2, 0], atol=1e-12)
    np.testing.assert_allclose(orbit(0, 90, 2, target=(0.1, 0, 0)).eye, [0.1, 0, 2], atol=1e-12)
    np.testing.assert_allclose(orbit(180, -30, 3).eye, [-3 * np.cos(np.radians(30)), 0, -1.5], atol=1e-12)
    for az, el in [(0, 0), (45, 30), (200, -60), (10, 90), (10, -90)]:
        cam = orbit(az, el, 2.5, target=(0.1, -0.2, 0.3))
        assert np.linalg.norm(np.subtract(cam.eye, cam.target)) == pytest.approx(2.5)
        forward, right, up = cam.basis()
        np.testing.assert_allclose(forward, -np.subtract(cam.eye, cam.target) / 2.5, atol=1e-12)
        assert abs(right[2]) < 1e-12  # the horizon stays level
        if abs(el) < 90:
            assert up[2] > 0


def test_camera_rejects_bad_input():
    with pytest.raises(ValueError):
        Camera(eye=(0, 0, 2), target=(0, 0, 0), up=(0, 0, 1))  # up parallel to the view
    with pytest.raises(ValueError):
        Camera(eye=(0, 0, 0), target=(0, 0, 0))
    with pytest.raises(ValueError):
        Camera(eye=(2, 0, 0), width=0)
    with pytest.raises(ValueError):
        orbit(0, 0, 0)


def test_box_and_intersection():
    half = volume_box(SHAPE, SPACING)
    np.testing.assert_allclose(half, np.array([11.0, 10.8, 10.5]) / 11.0)
    o = np.array([[-5.0, 0, 0], [0, 0, 0], [-5.0, 3, 0], [0.3, -4, 0.2]])
    d = np.array([[1.0, 0, 0], [0, 0, 1], [1.0, 0, 0], [0, 1.0, 0]])
    t_in, t_out = intersect_box(o, d, half)
    np.testing.assert_allclose(t_in[:2], [4.0, 0.0])
    np.testing.assert_allclose(t_out[:2], [6.0, half[2]])
    assert t_out[2] <= t_in[2]  # misses
    np.testing.assert_allclose([t_in[3], t_out[3]], [4 - half[1], 4 + half[1]])
    with pytest.raises(ValueError):
        volume_box((1, 4, 4))


def test_settings_validation():
    with pytest.raises(ValueError):
        ModalityWindow(lo=1.0, hi=1.0)
    with pytest.raises(ValueError):
        ModalityWindow(gamma=0.0)
    with pytest.raises(ValueError):
        RenderSettings(step=0.0)
    with pytest.raises(ValueError):
        LabelLUT(opacities=np.array([0, -1, 1, 1], np.float32))
    w = ModalityWindow.from_level_width(100.0, 40.0)
    assert (w.lo, w.hi, w.level, w.width) == (80.0, 120.0, 100.0, 40.0)
    s = RenderSettings().with_modalities({"t2f": 1.0, "t1c": 0.5})
    assert [w.enabled for w in s.windows] == [False, True, False, True]
    np.testing.assert_allclose(s.weights, [0, 0.5, 0, 1])
    with pytest.raises(ValueError, match="unknown modality"):
        RenderSettings().with_modalities({"flair": 1.0})


# ---------------------------------------------------------------- forward


def reference(settings, volumes, labels=None, probabilities=None, cam=None, **tensors):
    cam = cam or camera()
    scene = TorchScene.build(SHAPE, SPACING, settings, volumes=volumes, labels=labels, probabilities=probabilities,
                             **tensors)
    return scene, *render_reference(scene, cam)


@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_float64_reference(cpu_device, mode):
    volumes, labels, probs = make_data()
    settings = make_settings()
    extra = mode_inputs(mode, labels, probs)
    image = render(cpu_device, volumes, SPACING, camera(), settings, **extra)
    _, ref, ref_t = reference(settings, volumes, **extra)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.float32
    assert rel_err(image, ref.numpy()) <= 1e-5
    bg = ref_t.numpy() == 1.0
    assert bg.any() and (~bg).any()  # some rays miss the box, some hit it
    np.testing.assert_allclose(image[bg], np.broadcast_to(settings.background, image[bg].shape), atol=1e-7)


def test_labels_only_and_disabled_modalities(cpu_device):
    volumes, labels, _ = make_data()
    settings = make_settings().with_modalities({"t1n": 0.7, "t2f": 0.4})
    image = render(cpu_device, volumes, SPACING, camera(), settings, labels=labels)
    _, ref, _ = reference(settings, volumes, labels=labels)
    assert rel_err(image, ref.numpy()) <= 1e-5
    only = render(cpu_device, None, SPACING, camera(), settings, labels=labels)
    _, ref_only, _ = reference(settings, None, labels=labels)
    assert rel_err(only, ref_only.numpy()) <= 1e-5
    assert rel_err(only, image) > 1e-3  # the MRI contributes


def test_termination_below_one_percent(cpu_device, monkeypatch):
    # A dense medium: most rays that hit the volume stop early, at the first T < 0.01.
    volumes, labels, _ = make_data()
    settings = make_settings(step=0.05, lut=LabelLUT(opacities=np.array([30.0, 60.0, 40.0, 50.0], np.float32)))
    cam = camera()
    image = render(cpu_device, volumes, SPACING, cam, settings, labels=labels)
    scene, ref, ref_t = reference(settings, volumes, labels=labels)
    assert rel_err(image, ref.numpy()) <= 1e-5
    stopped = ref_t.numpy() < MIN_TRANSMITTANCE
    assert stopped.mean() > 0.3
    # The stopping sample is the first below 0.01: one step earlier T was >= 0.01.
    max_sigma = float(scene.lut_opacities.max()) + settings.transfer.density_scale
    assert (ref_t.numpy()[stopped] >= MIN_TRANSMITTANCE * np.exp(-max_sigma * settings.step)).all()
    # Without termination the picture is measurably different (the rule is in effect).
    monkeypatch.setattr("neumours.render.reference.MIN_TRANSMITTANCE", 0.0)
    _, unstopped, _ = reference(settings, volumes, labels=labels)
    assert rel_err(image, unstopped.numpy()) > 1e-4


# ---------------------------------------------------------------- backward


def autograd_reference(mode, settings, volumes, labels, probs, grad_image):
    leaves = {
        "volumes": torch.tensor(volumes, dtype=torch.float64, requires_grad=True),
        "weights": torch.tensor([w.weight for w in settings.windows], dtype=torch.float64, requires_grad=True),
        "lut_colours": torch.tensor(settings.lut.colours, dtype=torch.float64, requires_grad=True),
        "lut_opacities": torch.tensor(settings.lut.opacities, dtype=torch.float64, requires_grad=True),
    }
    kwargs = {"labels": labels} if mode == "labels" else {}
    if mode == "soft":
        leaves["probabilities"] = torch.tensor(probs, dtype=torch.float64, requires_grad=True)
        kwargs["probabilities"] = leaves["probabilities"]
    _, image, _ = reference(settings, leaves["volumes"], weights=leaves["weights"], lut_colours=leaves["lut_colours"],
                            lut_opacities=leaves["lut_opacities"], **kwargs)
    (image * torch.from_numpy(grad_image).double()).sum().backward()
    return {k: np.zeros(tuple(v.shape)) if v.grad is None else v.grad.numpy() for k, v in leaves.items()}


@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_torch_autograd(cpu_device, mode):
    volumes, labels, probs = make_data()
    settings = make_settings()
    grad_image = np.random.default_rng(3).normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    grads = render_backward(cpu_device, volumes, SPACING, camera(), settings, grad_image,
                            **mode_inputs(mode, labels, probs))
    ref = autograd_reference(mode, settings, volumes, labels, probs, grad_image)
    expected = {"volumes", "weights", "lut_colours", "lut_opacities"} | ({"probabilities"} if mode == "soft" else set())
    assert set(grads) == expected
    for name in expected:
        assert grads[name].shape == ref[name].shape, name
        if mode == "mri" and name.startswith("lut"):
            assert not grads[name].any(), name
            continue
        assert np.abs(ref[name]).max() > 0, name
        assert rel_err(grads[name], ref[name]) <= 1e-4, name


def test_disabled_modality_gets_no_gradient(cpu_device):
    volumes, _, probs = make_data()
    settings = make_settings().with_modalities({"t1c": 0.6, "t2w": 0.3})
    grad_image = np.ones((HEIGHT, WIDTH, 3), np.float32)
    grads = render_backward(cpu_device, volumes, SPACING, camera(), settings, grad_image, probabilities=probs)
    assert grads["weights"][0] == 0 and grads["weights"][3] == 0 and grads["weights"][1] != 0
    assert not grads["volumes"][[0, 3]].any() and grads["volumes"][[1, 2]].any()


def test_backward_matches_finite_differences(cpu_device):
    # L = <g, image>; central differences through the fp32 Slang forward on the entries
    # with the largest gradients of every kind (their signal dominates fp32 rounding).
    # Light media keep every ray above T = 0.01: where a ray stops one sample earlier or
    # later the image jumps, and a difference quotient would measure the jump.
    volumes, _, probs = make_data()
    settings = make_settings(transfer=TransferFunction(density_scale=2.0, density_lo=0.05, density_hi=0.8),
                             lut=LabelLUT(opacities=np.array([0.0, 1.5, 0.5, 1.0], np.float32)))
    cam = camera()
    assert float(reference(settings, volumes, probabilities=probs)[2].min()) > MIN_TRANSMITTANCE
    g = np.random.default_rng(5).normal(size=(HEIGHT, WIDTH, 3))
    grads = render_backward(cpu_device, volumes, SPACING, cam, settings, g.astype(np.float32), probabilities=probs)

    def loss(vol=volumes, pr=probs, s=settings) -> float:
        return float((render(cpu_device, vol, SPACING, cam, s, probabilities=pr).astype(np.float64) * g).sum())

    def check(name, analytic, plus, minus, h):
        fd = (plus - minus) / (2 * h)
        assert fd == pytest.approx(analytic, rel=1e-2, abs=1e-2 * scale[name]), name

    scale = {k: float(np.abs(v).max()) for k, v in grads.items()}
    h = 2e-3
    for name, array in (("volumes", volumes), ("probabilities", probs)):
        for flat in np.argsort(np.abs(grads[name]).ravel())[-2:]:
            idx = np.unravel_index(flat, array.shape)
            up, down = array.copy(), array.copy()
            up[idx] += h
            down[idx] -= h
            kw = "vol" if name == "volumes" else "pr"
            check(name, grads[name][idx], loss(**{kw: up}), loss(**{kw: down}), h)
    for m in (0, 3):
        def with_weight(dw):
            windows = list(settings.windows)
            windows[m] = replace(windows[m], weight=windows[m].weight + dw)
            return replace(settings, windows=tuple(windows))
        check("weights", grads["weights"][m], loss(s=with_weight(h)), loss(s=with_weight(-h)), h)
    for k, c in ((1, 0), (3, 1)):
        def with_colour(dc):
            colours = settings.lut.colours.copy()
            colours[k, c] += dc
            return replace(settings, lut=LabelLUT(colours, settings.lut.opacities))
        check("lut_colours", grads["lut_colours"][k, c], loss(s=with_colour(h)), loss(s=with_colour(-h)), h)
    for k in (1, 2):
        def with_opacity(do):
            opacities = settings.lut.opacities.copy()
            opacities[k] += do
            return replace(settings, lut=LabelLUT(settings.lut.colours, opacities))
        check("lut_opacities", grads["lut_opacities"][k], loss(s=with_opacity(0.05)), loss(s=with_opacity(-0.05)), 0.05)


def test_device_api_accepts_channel_first_volumes(cpu_device):
    # A cached probability volume arrives channel-first (C, X, Y, Z); results must not depend on layout.
    from neumours.device import upload
    from neumours.render import ChannelVolume, Frame, Gradients, Scene, render_backward_device, render_device

    volumes, _, probs = make_data()
    settings, cam = make_settings(), camera()
    g = np.random.default_rng(4).normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    results = []
    for channels_last in (True, False):
        scene = Scene(cpu_device, SHAPE, SPACING, mri=ChannelVolume.upload(cpu_device, volumes, channels_last),
                      probabilities=ChannelVolume.upload(cpu_device, probs, channels_last))
        frame = Frame.allocate(cpu_device, WIDTH, HEIGHT)
        render_device(scene, cam, settings, frame)
        grads = Gradients.zeros(scene)
        render_backward_device(scene, cam, settings, frame, upload(cpu_device, g), grads)
        results.append((frame.to_numpy()[0], grads.to_numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for name, value in results[0][1].items():
        np.testing.assert_allclose(results[1][1][name], value, rtol=1e-6, atol=1e-9, err_msg=name)


def test_host_api_rejects_bad_input(cpu_device):
    volumes, labels, probs = make_data()
    cam = camera()
    with pytest.raises(ValueError, match="disagree"):
        render(cpu_device, volumes, SPACING, cam, labels=labels[:-1])
    with pytest.raises(ValueError, match="label values"):
        render(cpu_device, volumes, SPACING, cam, labels=labels + 3)
    with pytest.raises(ValueError, match="not both"):
        render(cpu_device, volumes, SPACING, cam, labels=labels, probabilities=probs)
    with pytest.raises(ValueError, match="nothing to render"):
        render(cpu_device, None, SPACING, cam)
    with pytest.raises(ValueError, match="NaN"):
        render(cpu_device, np.full_like(volumes, np.nan), SPACING, cam)
    with pytest.raises(ValueError, match="grad_image"):
        render_backward(cpu_device, volumes, SPACING, cam, None, np.zeros((2, 2, 3)))


# ---------------------------------------------------------------- GPU


def gpu_data(shape=(96, 80, 64)):
    rng = np.random.default_rng(11)
    axes = [np.linspace(-1, 1, s) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = x ** 2 + y ** 2 + (z / 0.9) ** 2 < 0.9
    volumes = np.stack([0.5 + 0.3 * np.sin(4 * x + c) * np.cos(3 * y - c) + 0.2 * z for c in range(4)]) * inside
    r = np.sqrt((x - 0.2) ** 2 + (y + 0.1) ** 2 + z ** 2)
    labels = (np.select([r < 0.2, r < 0.35, r < 0.55], [1, 3, 2], 0) * inside).astype(np.uint8)
    logits = rng.normal(size=(4, *shape)) + 3 * np.eye(4)[labels].transpose(3, 0, 1, 2)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return volumes.astype(np.float32), labels, probs.astype(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_forward_and_backward_match_float64(cuda_device, mode):
    # 320 x 240 rays of ~150 samples. Nearest-neighbour labels are rounding-sensitive where
    # a fp32 sample sits within ~1e-5 voxel of a half-voxel boundary (hundreds of the ~10^7
    # samples here pick the neighbouring label in fp32 vs float64), so hard labels are
    # compared pixel by pixel with a small allowance instead of by one norm.
    shape = (96, 80, 64)
    volumes, labels, probs = gpu_data(shape)
    settings = make_settings(step=0.02)
    cam = orbit(30.0, 20.0, 3.0, width=320, height=240)
    extra = mode_inputs(mode, labels, probs)
    image = render(cuda_device, volumes, SPACING, cam, settings, **extra)
    g = np.random.default_rng(2).normal(size=image.shape).astype(np.float32)
    grads = render_backward(cuda_device, volumes, SPACING, cam, settings, g, **extra)

    leaves = {"volumes": torch.tensor(volumes, dtype=torch.float64, device="cuda", requires_grad=True),
              "weights": torch.tensor(settings.weights, dtype=torch.float64, device="cuda", requires_grad=True)}
    kw = {"labels": labels} if mode == "labels" else {}
    if mode == "soft":
        leaves["probabilities"] = kw["probabilities"] = torch.tensor(probs, dtype=torch.float64, device="cuda",
                                                                     requires_grad=True)
    scene = TorchScene.build(shape, SPACING, settings, volumes=leaves["volumes"], weights=leaves["weights"],
                             device="cuda", **kw)
    ref, _ = render_reference(scene, cam)
    (ref * torch.from_numpy(g).double().cuda()).sum().backward()
    ref = ref.detach().cpu().numpy()
    if mode == "labels":
        off = np.abs(image - ref).max(-1) > 1e-4
        assert off.mean() < 0.01 and rel_err(image[~off], ref[~off]) <= 1e-5
    else:
        assert rel_err(image, ref) <= 1e-5
    for name, leaf in leaves.items():
        assert rel_err(grads[name], leaf.grad.cpu().numpy()) <= (1e-3 if mode == "labels" else 1e-4), name
