"""Empty-space skipping: images and gradients with and without it are identical, and still match torch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from neumours.render import ModalityWindow, RenderSettings, Scene, orbit, render
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.raymarch import Frame, Gradients, render_backward_device, render_device
from neumours.render.reference import TorchScene, render_reference
from neumours.render.skipping import EMPTY_BOX, clip_bounds, empty_is_transparent, occupied_box
from neumours.device import device_facts, upload

SHAPE = (20, 16, 14)
SPACING = (1.0, 1.1, 1.3)


def _data(seed: int = 2):
    """MRI-like volumes, exactly 0 outside an off-centre ellipsoid; labels and soft labels inside it."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    inside = ((x - 0.25) / 0.5) ** 2 + ((y + 0.1) / 0.6) ** 2 + (z / 0.55) ** 2 < 1
    volumes = (0.5 + 0.3 * rng.random((4, *SHAPE))) * inside
    r = np.sqrt((x - 0.3) ** 2 + (y + 0.1) ** 2 + z ** 2)
    labels = np.select([r < 0.15, r < 0.25, r < 0.4], [1, 3, 2], 0) * inside
    onehot = np.eye(4)[labels].transpose(3, 0, 1, 2)
    probs = 0.8 * onehot + 0.2 * onehot.mean(0, keepdims=True) * (labels > 0)  # tumour classes 0 outside
    probs[0] += 1 - probs.sum(0)
    return volumes.astype(np.float32), labels.astype(np.uint8), probs.astype(np.float32)


def _settings(**overrides) -> RenderSettings:
    windows = tuple(ModalityWindow(lo=0.3, hi=0.9, gamma=1.2, weight=0.3) for _ in range(4))
    return replace(RenderSettings(windows=windows, step=0.05, background=(0.1, 0.2, 0.3)), **overrides)


def _cameras():
    return [orbit(a, e, 3.0, fov_y_deg=40.0, width=24, height=18) for a, e in ((30, 20), (200, -40), (95, 80))]


def test_occupied_box_bounds_the_non_empty_voxels():
    volumes, labels, probs = _data()
    box = occupied_box(volumes)
    nz = np.argwhere(volumes.any(0))
    assert box == (tuple(nz.min(0)), tuple(nz.max(0)))
    assert box[0] > (0, 0, 0) and box[1] < tuple(s - 1 for s in SHAPE)  # a real cut
    assert occupied_box(np.zeros_like(volumes)) == EMPTY_BOX
    only_labels = occupied_box(labels=labels)
    assert only_labels == (tuple(np.argwhere(labels).min(0)), tuple(np.argwhere(labels).max(0)))
    assert occupied_box(probabilities=probs) == only_labels  # the background channel does not count


def test_samples_outside_the_clip_box_touch_no_occupied_voxel(rng):
    volumes, _, _ = _data()
    box = occupied_box(volumes)
    lo, hi = (np.array(c) for c in clip_bounds(SHAPE, SPACING, box))
    half = volume_box(SHAPE, SPACING)
    q = rng.uniform(-half, half, (20000, 3))
    outside = ((q < lo) | (q > hi)).any(axis=1)
    v = np.clip((q[outside] + half) * to_voxel_scale(SHAPE, half), 0, np.array(SHAPE) - 1)
    base = np.minimum(np.floor(v), np.array(SHAPE) - 2)
    corners_lo, corners_hi = base, base + 1  # the trilinear cell (the nearest voxel lies in it)
    touches = ((corners_hi >= box[0]) & (corners_lo <= box[1])).all(axis=1)
    assert outside.sum() > 1000 and not touches.any()


@pytest.mark.parametrize("mode", ["mri", "labels", "soft", "mri+labels"])
def test_images_are_identical_with_and_without_skipping(cpu_device, mode):
    volumes, labels, probs = _data()
    inputs = {"mri": dict(volumes=volumes), "labels": dict(volumes=None, labels=labels),
              "soft": dict(volumes=None, probabilities=probs), "mri+labels": dict(volumes=volumes, labels=labels)}[mode]
    settings = _settings()
    for camera in _cameras():
        full = render(cpu_device, spacing=SPACING, camera=camera, settings=settings, skip_empty=False, **inputs)
        skipped = render(cpu_device, spacing=SPACING, camera=camera, settings=settings, skip_empty=True, **inputs)
        # Bit for bit: skipped samples add exactly 0 and multiply T by exactly 1, and the
        # marched samples sit at the same t as in the full march.
        assert np.array_equal(full, skipped)
        assert np.abs(full - np.asarray(settings.background)).max() > 0.05  # the volume is in view


def test_skipping_agrees_with_the_float64_reference(cpu_device):
    volumes, labels, _ = _data()
    settings = _settings()
    camera = _cameras()[0]
    image = render(cpu_device, volumes, SPACING, camera, settings, labels=labels, skip_empty=True)
    scene = TorchScene.build(SHAPE, SPACING, settings, volumes=torch.from_numpy(volumes).double(), labels=labels)
    ref = render_reference(scene, camera)[0].detach().numpy()
    assert np.abs(image - ref).max() < 1e-4


def test_empty_volume_renders_the_background(cpu_device):
    volumes, _, _ = _data()
    settings = _settings()
    image = render(cpu_device, np.zeros_like(volumes), SPACING, _cameras()[0], settings, skip_empty=True)
    assert np.array_equal(image, np.broadcast_to(np.float32(settings.background), image.shape))


def test_settings_where_empty_voxels_glow_switch_skipping_off(cpu_device):
    volumes, labels, _ = _data()
    # A window below 0 makes zero intensities visible; a background opacity makes class 0 visible.
    glowing = _settings(windows=tuple(ModalityWindow(lo=-0.5, hi=0.9, weight=0.3) for _ in range(4)))
    assert not empty_is_transparent(glowing, uses_mri=True, uses_labels=False)
    assert empty_is_transparent(_settings(), uses_mri=True, uses_labels=True)
    from neumours.render.transfer import LabelLUT

    opaque_bg = _settings(lut=LabelLUT(opacities=np.array([2.0, 20.0, 5.0, 20.0], np.float32)))
    assert not empty_is_transparent(opaque_bg, uses_mri=False, uses_labels=True)
    camera = _cameras()[1]
    for settings, inputs in ((glowing, dict(volumes=volumes)), (opaque_bg, dict(volumes=None, labels=labels))):
        full = render(cpu_device, spacing=SPACING, camera=camera, settings=settings, skip_empty=False, **inputs)
        asked = render(cpu_device, spacing=SPACING, camera=camera, settings=settings, skip_empty=True, **inputs)
        assert np.array_equal(full, asked)


def test_backward_marches_the_same_samples(cpu_device, rng):
    """MRI and hard labels: the gradients of the volumes, weights, colours and tumour opacities are the
    same with skipping. The background opacity's is not: d(medium)/d(opacity_0) = p_0 = 1 at every
    empty sample, and skipped samples add nothing to it (the refinement paths render unclipped)."""
    volumes, labels, _ = _data()
    settings = _settings()
    camera = _cameras()[0]
    grad_image = upload(cpu_device, rng.normal(size=(camera.height, camera.width, 3)).astype(np.float32))
    results = []
    for skip in (False, True):
        scene = Scene.upload(cpu_device, SPACING, volumes=volumes, labels=labels, skip_empty=skip)
        assert (scene.occupied is not None) == skip
        frame = Frame.allocate(cpu_device, camera.width, camera.height)
        render_device(scene, camera, settings, frame)
        grads = Gradients.zeros(scene)
        render_backward_device(scene, camera, settings, frame, grad_image, grads)
        results.append((frame.to_numpy()[0], grads.to_numpy()))
    (image_a, grads_a), (image_b, grads_b) = results
    assert np.array_equal(image_a, image_b)
    assert np.abs(grads_a["volumes"]).max() > 0
    # The gradients are scattered with float atomics: in a fixed order where groups run in turn (the CPU
    # device), in any order on a GPU kind, where sums of the same terms differ in their last bits.
    concurrent = device_facts(cpu_device).concurrent
    for name in grads_a:
        a, b = (grads_a[name][1:], grads_b[name][1:]) if name == "lut_opacities" else (grads_a[name], grads_b[name])
        atol = 1e-5 * np.abs(a).max() if concurrent else 1e-9
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=atol, err_msg=name)
    assert grads_b["lut_opacities"][0] != grads_a["lut_opacities"][0]
