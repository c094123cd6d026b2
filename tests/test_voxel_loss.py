"""Voxel-loss refinement: CE gradients over painted voxels against float64 torch autograd, and the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.model.reference import TorchINR
from neumours.refine.loop import weight_gradients
from neumours.refine.reference import patches_torch
from neumours.refine.voxel_loss import PaintedVoxels, refine_voxels, voxel_loss_gradients

CONFIG = INRConfig(num_freqs=3, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)
SHAPE = (10, 9, 8)


def _problem(seed: int):
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    flat = rng.choice(int(np.prod(SHAPE)), 60, replace=False)
    positions = np.stack(np.unravel_index(flat, SHAPE), -1)
    classes = rng.integers(0, 4, 60)
    return rng, volume, positions, classes


@pytest.mark.parametrize("class_weights", [None, (2.0, 1.0, 0.5, 1.0)])
def test_gradients_match_float64_torch(cpu_device, class_weights):
    rng, volume, positions, classes = _problem(11)
    inr = INR(CONFIG, cpu_device, seed=5)
    vols = CaseVolumes.upload(cpu_device, [volume])
    points = PaintedVoxels.upload(inr, vols, positions, classes)
    inr.zero_grad()
    loss = voxel_loss_gradients(inr, points, class_weights)
    grads = weight_gradients(inr)

    model = TorchINR(CONFIG).double()
    model.load_state_dict({k: v.double() for k, v in inr.state_dict().items()})
    pos = torch.from_numpy(positions).double()
    dims = torch.tensor(SHAPE, dtype=torch.float64)
    logits = model(2 * pos / (dims - 1) - 1, patches_torch(torch.from_numpy(volume).double(), pos))
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(logits, torch.from_numpy(classes), weight=weight)
    ref.backward()
    ref = ref.detach()
    assert abs(loss - ref.item()) <= 1e-5 * ref.item()
    for name, param in model.named_parameters():
        expected = param.grad.numpy()
        err = np.linalg.norm(grads[name] - expected) / max(np.linalg.norm(expected), 1e-12)
        assert np.linalg.norm(expected) > 0 and err <= 1e-5, (name, err)


def test_refinement_learns_the_painted_classes(cpu_device):
    rng, volume, positions, _ = _problem(4)
    inr = INR(CONFIG, cpu_device, seed=1)
    vols = CaseVolumes.upload(cpu_device, [volume])
    before = inr.bridge.params.clone()
    classes = np.full(len(positions), 3)  # paint every voxel ET
    points = PaintedVoxels.upload(inr, vols, positions, classes)
    seen = []
    rows = refine_voxels(inr, points, steps=25, lr=1e-2, on_step=seen.append)
    assert [r["step"] for r in rows] == list(range(25)) and seen == rows
    assert rows[-1]["voxel_loss"] < 0.5 * rows[0]["voxel_loss"]
    assert not torch.equal(before, inr.bridge.params)
    from neumours.model.reference import patches_np

    logits = inr.forward(2 * positions / (np.array(SHAPE) - 1) - 1, patches_np(volume, positions))
    assert (logits.argmax(1) == 3).mean() > 0.9


def test_bad_painted_voxels_are_refused(cpu_device):
    _, volume, positions, classes = _problem(0)
    inr = INR(CONFIG, cpu_device)
    vols = CaseVolumes.upload(cpu_device, [volume])
    with pytest.raises(ValueError, match="inside the case"):
        PaintedVoxels.upload(inr, vols, positions + np.array(SHAPE), classes)
    with pytest.raises(ValueError, match="classes must be"):
        PaintedVoxels.upload(inr, vols, positions, classes + 4)
    with pytest.raises(ValueError, match="no painted"):
        PaintedVoxels.upload(inr, vols, positions[:0], classes[:0])
