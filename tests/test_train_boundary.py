"""The boundary loss as a training option (``[loss] boundary_weight``): the kernel against float64
torch and finite differences, the sampler's distances, off is the run without it, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neumours.data import list_cases, load_case
from neumours.data.phantom import write_dataset
from neumours.device import download, empty_buffer, upload
from neumours.kernels.loss import num_stats
from neumours.torch.boundary import signed_distance
from neumours.train import pool as pool_module
from neumours.train.config import preset
from neumours.train.loss import DeviceLoss, LossConfig
from neumours.train.pool import CasePool
from neumours.train.reference import seg_loss_torch
from neumours.train.sampler import PointSampler
from neumours.train.trainer import Trainer
from conftest import BITWISE_RUNS, cpu_device_only


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 4, shape=(24, 24, 20), seed=5, progress=False)
    return root


def _batch(rng, n, c=4):
    logits = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    labels = rng.choice(c, size=n, p=[0.7, 0.05, 0.15, 0.1]).astype(np.uint32)
    phi = rng.uniform(-5, 20, size=(n, c)).astype(np.float32)  # mm: mostly outside, as in a volume
    phi[:, 0] = 0.0  # background: no map (the sampler's layout)
    return logits, labels, phi


def _device_loss(device, config, batches, scale):
    """Run DeviceLoss over micro-batches; (values, gradient per micro-batch)."""
    loss = DeviceLoss(device, config, slots=len(batches))
    loss.reset()
    grads = []
    for slot, (logits, labels, phi) in enumerate(batches):
        n = len(labels)
        grad = empty_buffer(device, n * 4)
        loss.backward(upload(device, logits), upload(device, labels, np.uint32), n, grad, slot, scale=scale,
                      phi=upload(device, phi) if config.boundary_weight > 0 else None)
        grads.append(download(grad, (n, 4)))
    return loss.values(), grads


def test_boundary_term_matches_torch_and_finite_differences(cpu_device, rng):
    config = LossConfig(boundary_weight=0.3)
    batches = [_batch(rng, 300), _batch(rng, 257)]
    values, grads = _device_loss(cpu_device, config, batches, scale=0.5)
    total, boundary = 0.0, 0.0
    for (logits, labels, phi), grad in zip(batches, grads):
        z = torch.from_numpy(logits).double().requires_grad_()
        ref, parts = seg_loss_torch(z, torch.from_numpy(labels.astype(np.int64)), config.class_weights,
                                    config.dice_weight, config.dice_smooth, config.boundary_weight,
                                    torch.from_numpy(phi).double())
        (0.5 * ref).backward()
        total += 0.5 * float(ref.detach())
        boundary += 0.5 * float(parts["boundary"].detach())
        err = np.linalg.norm(grad - z.grad.numpy()) / np.linalg.norm(z.grad.numpy())
        assert err <= 1e-5, err
    assert abs(values["loss"] - total) <= 1e-5 * abs(total)
    assert abs(values["boundary"] - boundary) <= 1e-5 * abs(boundary)

    # The boundary term's own gradient is a real share of the total: without it the gradients differ.
    _, plain_grads = _device_loss(cpu_device, LossConfig(), batches, scale=0.5)
    assert np.linalg.norm(grads[0] - plain_grads[0]) > 0.05 * np.linalg.norm(grads[0])

    # Finite differences of the device's own loss value along a random direction (one micro-batch).
    logits, labels, phi = _batch(rng, 40)
    direction = rng.normal(size=logits.shape).astype(np.float32)
    _, (grad,) = _device_loss(cpu_device, config, [(logits, labels, phi)], scale=1.0)
    eps = 1e-2
    up = _device_loss(cpu_device, config, [(logits + eps * direction, labels, phi)], 1.0)[0]["loss"]
    down = _device_loss(cpu_device, config, [(logits - eps * direction, labels, phi)], 1.0)[0]["loss"]
    numeric, analytic = (up - down) / (2 * eps), float((grad * direction).sum())
    assert abs(numeric - analytic) <= 2e-3 * max(abs(analytic), 1e-3), (numeric, analytic)


@pytest.mark.gpu
def test_boundary_term_on_the_gpu_matches_torch(cuda_device, rng):
    # A full micro-batch on the GPU (warp-summed batch sums, the boundary sum among them).
    config = LossConfig(boundary_weight=0.1)
    logits, labels, phi = _batch(rng, 4096)
    values, (grad,) = _device_loss(cuda_device, config, [(logits, labels, phi)], scale=1.0)
    z = torch.from_numpy(logits).double().requires_grad_()
    ref, parts = seg_loss_torch(z, torch.from_numpy(labels.astype(np.int64)), config.class_weights,
                                boundary_weight=config.boundary_weight, phi=torch.from_numpy(phi).double())
    ref.backward()
    assert np.linalg.norm(grad - z.grad.numpy()) / np.linalg.norm(z.grad.numpy()) <= 1e-5
    assert abs(values["loss"] - float(ref.detach())) <= 1e-5 * abs(float(ref.detach()))
    assert abs(values["boundary"] - float(parts["boundary"].detach())) <= 1e-5 * abs(float(parts["boundary"].detach()))


def test_off_keeps_the_plain_kernels_and_refuses_distances(cpu_device):
    loss = DeviceLoss(cpu_device, LossConfig(), slots=1)
    assert not loss.boundary and loss.stride == num_stats(4)
    buffers = [empty_buffer(cpu_device, 40), upload(cpu_device, np.zeros(10, np.uint32), np.uint32)]
    with pytest.raises(ValueError, match="boundary_weight"):
        loss.backward(buffers[0], buffers[1], 10, empty_buffer(cpu_device, 40), 0, phi=empty_buffer(cpu_device, 40))
    with pytest.raises(ValueError, match="boundary_weight"):
        DeviceLoss(cpu_device, LossConfig(boundary_weight=0.1), slots=1).backward(
            buffers[0], buffers[1], 10, empty_buffer(cpu_device, 40), 0)


def test_sampler_gathers_signed_distances_at_its_points(cpu_device, dataset):
    refs = list_cases(dataset)[:2]
    pool = CasePool(cpu_device, refs, sdm_classes=4)
    assert CasePool(cpu_device, refs).distances is None
    assert pool.distances.shape == (2, 24 * 24 * 20, 3)
    # Each case's map is a view of its slot of the pool's array, not a second copy.
    assert all(np.shares_memory(c.distances, pool.distances) for c in pool.cases)
    drawn = PointSampler(0.3, seed=7).sample(pool.cases, 500, distances=pool.distances)
    positions, slots, labels, phi = drawn
    # The same draws as without distances: the points of the run without the boundary loss.
    for a, b in zip(PointSampler(0.3, seed=7).sample(pool.cases, 500), drawn[:3]):
        np.testing.assert_array_equal(a, b)
    assert phi.shape == (500, 4) and phi.dtype == np.float32 and not phi[:, 0].any()
    cases = {c.case_id: c for c in (load_case(r) for r in refs)}
    maps = [signed_distance(cases[h.case_id].label, 4, spacing=cases[h.case_id].spacing) for h in pool.cases]
    x, y, z = positions.astype(np.int64).T
    for k in range(1, 4):
        expected = np.array([maps[s][k, i, j, m] for s, i, j, m in zip(slots, x, y, z)])
        np.testing.assert_array_equal(phi[:, k], expected)
    # Inside its class a point's distance is <= 0, outside > 0 (where the class exists in the case).
    for k in range(1, 4):
        present = np.array([(pool.cases[s].label == k).any() for s in slots])
        assert (phi[(labels == k) & present, k] <= 0).all() and (phi[(labels != k) & present, k] > 0).all()
    pool.close()

    # A cycling pool (one slot): the case swapped in brings its own map into the slot.
    cycling = CasePool(cpu_device, refs, pool_bytes=4 * 4 * 24 * 24 * 20, sdm_classes=4)
    assert cycling.cycling and cycling.distances.shape[0] == 1
    first = cycling.cases[0].case_id
    cycling.refresh()
    (host,) = cycling.cases
    assert host.case_id != first
    expected = maps[[h.case_id for h in pool.cases].index(host.case_id)][1:].reshape(3, -1).T
    np.testing.assert_array_equal(cycling.distances[0], expected)
    assert np.shares_memory(host.distances, cycling.distances)
    cycling.close()


def tiny(steps=6, boundary_weight=0.0, **schedule):
    config = preset("tiny")
    return dataclasses.replace(config, loss=dataclasses.replace(config.loss, boundary_weight=boundary_weight),
                               schedule=dataclasses.replace(config.schedule, steps=steps, val_every=steps, **schedule))


def _params(trainer):
    return {k: v.numpy().copy() for k, v in trainer.inr.state_dict().items()}


def _run(dataset, out, config, device, resume=False, stop_after=None):
    trainer = Trainer(dataset, out, config, device, resume=resume, progress=False)
    trainer.run(stop_after=stop_after)
    trainer.close()
    return trainer


@cpu_device_only(BITWISE_RUNS)
def test_off_by_default_and_zero_distances_are_bit_identical(cpu_device, dataset, tmp_path, monkeypatch):
    assert preset("paper").loss.boundary_weight == 0.0 and preset("tiny").loss.boundary_weight == 0.0
    plain = _run(dataset, tmp_path / "plain", tiny(), cpu_device)
    assert not plain.boundary and all(c.distances is None for c in plain.pool.cases)

    # The boundary path switched on, distances gathered, uploaded and read by the kernels, but all 0:
    # the term and its gradient vanish and the sampler draws the same points, so the run is the plain one.
    monkeypatch.setattr(pool_module, "signed_distance", lambda labels, n, spacing, classes: np.zeros(
        (n, *labels.shape), np.float32))
    zeroed = _run(dataset, tmp_path / "zeroed", tiny(boundary_weight=1.0), cpu_device)
    assert zeroed.boundary and all(c.distances is not None for c in zeroed.pool.cases)
    a, b = _params(plain), _params(zeroed)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r["loss"] for r in plain.rows] == [r["loss"] for r in zeroed.rows]


@cpu_device_only(BITWISE_RUNS)
def test_boundary_loss_changes_training_and_resumes_exactly(cpu_device, dataset, tmp_path):
    plain = _params(_run(dataset, tmp_path / "plain", tiny(), cpu_device))
    config = tiny(steps=8, boundary_weight=0.1, log_every=2)
    straight = _run(dataset, tmp_path / "a", config, cpu_device)
    assert all(np.isfinite(r["loss"]) for r in straight.rows)
    after = _params(straight)
    assert any(not np.array_equal(plain[k], after[k]) for k in plain)
    _run(dataset, tmp_path / "b", config, cpu_device, stop_after=3)
    resumed = _run(dataset, tmp_path / "b", config, cpu_device, resume=True)
    for key, value in _params(resumed).items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert "boundary_weight = 0.1" in (tmp_path / "a" / "config.toml").read_text()
