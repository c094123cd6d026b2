"""Training on the CPU device: optimiser steps equal torch's, a short run learns, resume is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neumours.data.phantom import write_dataset
from neumours.errors import NeumoursError
from neumours.model.inr import INR
from neumours.model.reference import TorchINR
from neumours.train.config import preset
from neumours.train.optim import build_optimizers, learning_rate
from neumours.train.reference import seg_loss_torch
from neumours.train.trainer import Trainer
from conftest import BITWISE_RUNS, cpu_device_only


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 4, shape=(32, 32, 24), seed=3, progress=False)
    return root


def tiny(steps=40, **schedule):
    config = preset("tiny")
    return dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, steps=steps, **schedule))


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_one_optimiser_step_equals_torch(cpu_device, rng, name):
    config = tiny()
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, name=name))
    net = config.network
    inr = INR(net, cpu_device, seed=4)
    model = TorchINR(net)
    model.load_state_dict(inr.state_dict())
    n = 64
    coords = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    patches = rng.normal(size=(n, 4, 3, 3, 3)).astype(np.float32)
    labels = rng.integers(0, 4, n)

    # The gradients of both sides agree (the INR tests check this closely) ...
    z = torch.from_numpy(inr.forward(coords, patches)).double().requires_grad_()
    seg_loss_torch(z, torch.from_numpy(labels), config.loss.class_weights)[0].backward()
    ours = inr.backward(coords, patches, z.grad.float().numpy())
    logits = model(torch.from_numpy(coords), torch.from_numpy(patches))
    seg_loss_torch(logits.double(), torch.from_numpy(labels), config.loss.class_weights)[0].backward()
    for name_, param in model.named_parameters():
        ref = param.grad.numpy()
        assert np.linalg.norm(ours[name_] - ref) <= 1e-4 * np.linalg.norm(ref), name_
    # ... and then one step from identical gradients: AdamW's first step is lr * sign(g) for all
    # but the tiniest g, where fp32 rounding of two computations would flip it.
    inr.bridge.grads.copy_(torch.cat([model.state_dict(keep_vars=True)[k].grad.reshape(-1) for k in inr.layout.names]))
    optimizers = build_optimizers(inr.bridge, config.optimizer)
    for o in optimizers:
        o.step()

    if name == "adamw":
        reference = [torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr,
                                       weight_decay=config.optimizer.weight_decay)]
    else:
        mats = [p for p in model.parameters() if p.ndim == 2]
        rest = [p for p in model.parameters() if p.ndim != 2]
        reference = [torch.optim.Muon(mats, lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay,
                                      adjust_lr_fn="match_rms_adamw"),
                     torch.optim.AdamW(rest, lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay)]
    for o in reference:
        o.step()
    ours = inr.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(ours[key].numpy(), value.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_schedule():
    config = preset("paper").optimizer
    assert learning_rate(0, 10_000, config) == pytest.approx(1e-5)
    assert learning_rate(99, 10_000, config) == pytest.approx(1e-3)
    assert learning_rate(10_000, 10_000, config) == pytest.approx(5e-4)
    assert 5e-4 < learning_rate(5_000, 10_000, config) < 1e-3


def test_short_run_learns_and_writes_run(cpu_device, dataset, tmp_path):
    trainer = Trainer(dataset, tmp_path / "run", tiny(steps=100, val_every=50), cpu_device, progress=False)
    before = trainer.validator()
    first = trainer.train_step()
    summary = trainer.run()
    trainer.close()
    rows = trainer.rows
    assert summary["steps"] == 100
    assert np.mean([r["loss"] for r in rows[-2:]]) < first["loss"]
    assert rows[-1]["val_dice_mean"] > before.mean()
    for name in ("config.toml", "metrics.csv", "last.safetensors", "best.safetensors", "checkpoint.json"):
        assert (tmp_path / "run" / name).is_file(), name


@cpu_device_only(BITWISE_RUNS)
def test_resume_equals_uninterrupted(cpu_device, dataset, tmp_path):
    config = tiny(steps=24, val_every=12, log_every=4)
    straight = Trainer(dataset, tmp_path / "a", config, cpu_device, progress=False)
    straight.run()
    interrupted = Trainer(dataset, tmp_path / "b", config, cpu_device, progress=False)
    interrupted.run(stop_after=10)
    resumed = Trainer(dataset, tmp_path / "b", config, cpu_device, resume=True, progress=False)
    assert resumed.step == 10
    resumed.run()
    a, b = straight.inr.state_dict(), resumed.inr.state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    assert [r["step"] for r in straight.rows] == [r["step"] for r in resumed.rows]


def test_bad_inputs(cpu_device, dataset, tmp_path):
    with pytest.raises(NeumoursError, match="at least 2 cases"):
        single = tmp_path / "single"
        write_dataset(single, 1, shape=(24, 24, 16), seed=1, progress=False)
        Trainer(single, tmp_path / "x", tiny(), cpu_device, progress=False)
    with pytest.raises(NeumoursError, match="cannot resume"):
        Trainer(dataset, tmp_path / "missing", tiny(), cpu_device, resume=True, progress=False)


def test_pool_cycles_cases_that_do_not_fit(cpu_device, dataset, tmp_path):
    import time

    from neumours.data import list_cases
    from neumours.train.pool import CasePool

    refs = list_cases(dataset)
    slot_bytes = 4 * 4 * 32 * 32 * 24
    pool = CasePool(cpu_device, refs, pool_bytes=2 * slot_bytes, seed=0)
    try:
        assert pool.capacity == 2 and pool.cycling
        before = [c.case_id for c in pool.cases]
        deadline = time.time() + 30
        while not pool.refresh():  # the next case is loaded in the background
            assert time.time() < deadline
            time.sleep(0.05)
        after = [c.case_id for c in pool.cases]
        assert after != before and len(set(after)) == 2
        # The swapped-in case is on the device where the case table says.
        table = pool.case_table.to_numpy().view(np.uint32).reshape(-1, 4)
        assert tuple(table[0, 1:]) == pool.cases[0].shape
        from neumours.data import load_case, normalise

        ref = next(r for r in refs if r.case_id == pool.cases[0].case_id)
        volumes = pool.volumes.to_numpy().view(np.float32)
        expected = normalise(load_case(ref).images).reshape(-1)
        np.testing.assert_array_equal(volumes[: expected.size], expected)
    finally:
        pool.close()


# --- device-resident steps -------------------------------------------------------------------------------

def _poison_gradient_at(trainer, bad_step: int) -> None:
    """Make step ``bad_step``'s gradient NaN on the device (as an overflow leaves it), inside the recording."""
    from neumours.kernels.optim import fill

    record = trainer._record_step

    def poisoned(step, index):
        record(step, index)
        if step == bad_step:
            fill(trainer.device, trainer.inr.bridge.grads_buffer, 1, float("nan"))

    trainer._record_step = poisoned


@cpu_device_only(BITWISE_RUNS)
def test_a_block_of_steps_equals_steps_one_by_one(cpu_device, dataset, tmp_path):
    """Recording 6 steps into one submission changes nothing in what they compute."""
    a = Trainer(dataset, tmp_path / "a", tiny(steps=40), cpu_device, progress=False)
    b = Trainer(dataset, tmp_path / "b", tiny(steps=40), cpu_device, progress=False)
    row = a.train_steps(6)
    for _ in range(6):
        last = b.train_step()
    assert a.step == b.step == 6 and row == last
    assert torch.equal(a.inr.bridge.snapshot(), b.inr.bridge.snapshot())
    a.close()
    b.close()


@cpu_device_only(BITWISE_RUNS)
def test_a_non_finite_step_is_a_no_op_and_reported(cpu_device, dataset, tmp_path, capsys):
    """NaN in step 4's gradient: that step leaves weights and moments alone (Adam does not count it), the
    next step runs as it would have, a warning names step 4; still NaN at a block's end: the run stops."""
    a = Trainer(dataset, tmp_path / "a", tiny(steps=40), cpu_device, progress=False)
    b = Trainer(dataset, tmp_path / "b", tiny(steps=40), cpu_device, progress=False)
    a.train_steps(3)
    b.train_steps(3)
    _poison_gradient_at(a, 3)
    a.train_steps(2)                      # steps 4 (poisoned: skipped) and 5
    assert "step 4: the loss or its gradient was not finite" in capsys.readouterr().err
    b.step = 4                            # the reference: step 5's points on the weights after step 3
    b.train_steps(1)
    assert torch.equal(a.inr.bridge.snapshot(), b.inr.bridge.snapshot())
    assert a.device_optimizer.read().steps == b.device_optimizer.read().steps == 4
    _poison_gradient_at(a, 6)
    with pytest.raises(NeumoursError, match="step 7: the loss's gradient is not finite; the run diverged"):
        a.train_steps(2)                  # steps 6 and 7: the block ends on the poisoned step
