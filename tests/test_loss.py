"""The device loss against a float64 torch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.device import download, empty_buffer, upload
from neumours.train.loss import DeviceLoss, LossConfig
from neumours.train.reference import seg_loss_torch


def test_loss_and_gradient_match_torch(cpu_device, rng):
    config = LossConfig(dice_weight=0.5, class_weights=(2.0, 1.0, 1.0, 1.0), dice_smooth=1.0)
    loss = DeviceLoss(cpu_device, config, slots=2)
    loss.reset()
    batches = []
    for slot, n in enumerate((300, 257)):
        logits = (rng.normal(size=(n, 4)) * 3).astype(np.float32)
        labels = rng.choice(4, size=n, p=[0.7, 0.05, 0.15, 0.1]).astype(np.uint32)
        if slot == 1:
            labels[labels == 1] = 2  # a class absent from the micro-batch
        grad = empty_buffer(cpu_device, n * 4)
        loss.backward(upload(cpu_device, logits), upload(cpu_device, labels, np.uint32), n, grad, slot, scale=0.5)
        batches.append((logits, labels, download(grad, (n, 4))))

    values = loss.values()
    total = 0.0
    for logits, labels, grad in batches:
        z = torch.from_numpy(logits).double().requires_grad_()
        ref, parts = seg_loss_torch(z, torch.from_numpy(labels.astype(np.int64)), config.class_weights,
                                    config.dice_weight, config.dice_smooth)
        (0.5 * ref).backward()
        total += 0.5 * float(ref.detach())
        err = np.linalg.norm(grad - z.grad.numpy()) / np.linalg.norm(z.grad.numpy())
        assert err <= 1e-5, err
    assert abs(values["loss"] - total) <= 1e-5 * abs(total)
    assert len(values["dice"]) == 4 and 0 <= values["dice_mean"] <= 1


def test_reset_clears_sums(cpu_device, rng):
    loss = DeviceLoss(cpu_device, LossConfig(), slots=1)
    logits = rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.zeros(10, np.uint32)
    grad = empty_buffer(cpu_device, 40)
    for _ in range(2):
        loss.reset()
        loss.backward(upload(cpu_device, logits), upload(cpu_device, labels, np.uint32), 10, grad, 0)
        first = loss.values()["loss"]
    assert abs(first - loss.values()["loss"]) < 1e-9


@pytest.mark.gpu
def test_loss_gpu_matches_torch(cuda_device, rng):
    # Full micro-batch on the GPU (warp-summed batch sums).
    config = LossConfig()
    loss = DeviceLoss(cuda_device, config, slots=1)
    loss.reset()
    n = 4096
    logits = (rng.normal(size=(n, 4)) * 3).astype(np.float32)
    labels = rng.choice(4, size=n, p=[0.85, 0.03, 0.07, 0.05]).astype(np.uint32)
    grad = empty_buffer(cuda_device, n * 4)
    loss.backward(upload(cuda_device, logits), upload(cuda_device, labels, np.uint32), n, grad, 0)
    z = torch.from_numpy(logits).double().requires_grad_()
    ref, _ = seg_loss_torch(z, torch.from_numpy(labels.astype(np.int64)), config.class_weights)
    ref.backward()
    got = download(grad, (n, 4))
    assert np.linalg.norm(got - z.grad.numpy()) / np.linalg.norm(z.grad.numpy()) <= 1e-5
    assert abs(loss.values()["loss"] - float(ref.detach())) <= 1e-5 * float(ref.detach())
