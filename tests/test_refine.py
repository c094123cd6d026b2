"""Refinement path (a): d(image loss)/d(INR weights) through the cache, against float64 torch."""

from __future__ import annotations

import numpy as np
import torch

from neumours.model.config import INRConfig
from neumours.model.inputs import DeviceVolumes
from neumours.model.inr import INR
from neumours.model.reference import TorchINR, patches_np
from neumours.render import RenderSettings, orbit
from neumours.render.reference import TorchScene, render_reference
from neumours.render.refine import cache_path_gradients, image_loss, weight_gradients
from neumours.render.transfer import LabelLUT

CONFIG = INRConfig(num_freqs=3, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)


def test_cache_path_matches_torch_render_of_inr(cpu_device, rng):
    shape, spacing = (9, 8, 7), (1.0, 1.2, 1.0)
    volume = rng.normal(size=(4, *shape)).astype(np.float32)
    inr = INR(CONFIG, cpu_device, seed=int(rng.integers(1 << 30)))
    settings = RenderSettings(lut=LabelLUT(opacities=np.array([0.0, 8.0, 4.0, 8.0], np.float32)), step=0.05)
    cameras = [orbit(a, 20.0, 3.5, width=12, height=10) for a in (30.0, 160.0)]
    targets = [rng.uniform(0, 0.5, (10, 12, 3)) for _ in cameras]
    vols = DeviceVolumes.upload(cpu_device, [volume])
    inr.zero_grad()
    loss, _ = cache_path_gradients(inr, vols, spacing, cameras, settings, targets, chunk_points=200)
    grads = weight_gradients(inr)

    # float64 torch: render(softmax(INR(grid))) with the same weights.
    model = TorchINR(CONFIG).double()
    model.load_state_dict({k: v.double() for k, v in inr.state_dict().items()})
    index = np.stack(np.unravel_index(np.arange(np.prod(shape)), shape), -1).astype(np.float64)
    coords = torch.from_numpy(2 * index / (np.array(shape) - 1) - 1)
    patches = torch.from_numpy(patches_np(volume, index))
    probs = torch.softmax(model(coords, patches), dim=1).T.reshape(4, *shape)
    total = 0.0
    for camera, target in zip(cameras, targets):
        scene = TorchScene.build(shape, spacing, settings, probabilities=probs)
        image, _ = render_reference(scene, camera)
        total = total + ((image - torch.from_numpy(target)) ** 2).mean()
    total.backward()
    assert abs(loss - float(total.detach())) <= 1e-5 * float(total.detach())
    for name, param in model.named_parameters():
        ref = param.grad.numpy()
        assert np.linalg.norm(ref) > 0, name  # the views see the tumour classes: a real gradient
        err = np.linalg.norm(grads[name] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert err <= 1e-4, (name, err)


def test_image_loss_dont_care_pixels():
    image, target = np.ones((2, 3, 3)), np.zeros((2, 3, 3))
    weight = np.array([[1, 0, 0], [0, 0, 0]], float)
    loss, grad = image_loss(image, target, weight)
    assert loss == 1.0 and grad[0, 1:].sum() == 0 and grad[1].sum() == 0
