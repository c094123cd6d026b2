"""DeviceAdamW (neumours/train/device_optim.py) against torch's clip_grad_norm_ + AdamW step.

On the CPU device the update is compared bit for bit with torch.optim.AdamW, whose CPU ``sqrt`` is
replaced by an exactly rounded one (torch's own goes through MKL for more than 8 values and can be
1 ulp off; the kernel's is IEEE's); the moments, which need no square root, are compared with
unmodified torch too. On another kind named by NEUMOURS_DEVICE the same tests hold within float32
rounding; determinism, the no-op of a non-finite step and recording hold bit for bit everywhere.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import slangpy as spy
import torch

from neumours.device import download, empty_buffer, recording, upload, upload_into
from neumours.errors import NeumoursError
from neumours.kernels import accumulate
from neumours.kernels import optim as kernels
from neumours.model.bridge import TorchBridge
from neumours.model.config import INRConfig
from neumours.model.params import ParamLayout, init_params
from neumours.train.config import OptimizerConfig
from neumours.train.device_optim import DeviceAdamW
from neumours.train.optim import apply_gradients, build_optimizers, set_learning_rate

TINY = INRConfig.tiny()
NO_CLIP = 1e9


@contextlib.contextmanager
def exact_sqrt():
    """torch's Tensor.sqrt, exactly rounded (through float64: exact for float32 inputs)."""
    own = torch.Tensor.__dict__.get("sqrt")   # None: inherited from torch's C base class
    original = torch.Tensor.sqrt
    torch.Tensor.sqrt = lambda self: original(self.double()).to(self.dtype)
    try:
        yield
    finally:
        if own is None:
            del torch.Tensor.sqrt
        else:
            torch.Tensor.sqrt = own


def config(clip_norm=NO_CLIP, **kw):
    return OptimizerConfig(name="adamw", lr=1e-3, lr_final=0.0, weight_decay=0.01, clip_norm=clip_norm, **kw)


def bridge(device, seed=5):
    return TorchBridge(device, ParamLayout(TINY), init_params(TINY, seed=seed))


def gradients(rng, n, scale=None):
    scale = 10.0 ** rng.uniform(-4, -1) if scale is None else scale
    return (rng.standard_normal(n) * scale).astype(np.float32)


class Reference:
    """Today's step: a bridge stepped by apply_gradients with build_optimizers' AdamW."""

    def __init__(self, device, cfg, seed=5):
        self.bridge = bridge(device, seed)
        (self.optimizer,) = build_optimizers(self.bridge, cfg)
        self.cfg = cfg

    def step(self, grads, lr, sqrt=exact_sqrt):
        with torch.no_grad():
            self.bridge.grads.copy_(torch.from_numpy(grads))
        set_learning_rate([self.optimizer], lr)
        with sqrt():
            return float(apply_gradients(self.bridge, [self.optimizer], self.cfg.clip_norm, pull=False))

    def moments(self):
        params = self.bridge.torch_parameters()
        state = [self.optimizer.state[p] for p in params]
        return (torch.cat([s["exp_avg"].reshape(-1) for s in state]).cpu().numpy(),
                torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).cpu().numpy())


def device_step(opt, grads, lr, index, **kw):
    upload_into(opt.device, opt.bridge.grads_buffer, grads)
    opt.step(lr, index, **kw)


def device_arrays(opt):
    n = opt.count
    return download(opt.bridge.params_buffer, (n,)), download(opt.exp_avg, (n,)), download(opt.exp_avg_sq, (n,))


def assert_same(device, actual, expected):
    """Bit for bit on the CPU device; within float32 rounding on the kinds NEUMOURS_DEVICE may name
    (their square root and division need not be IEEE's, torch's CUDA AdamW is the multi-tensor one)."""
    expected = np.asarray(expected.detach().cpu() if isinstance(expected, torch.Tensor) else expected)
    if device.info.type == spy.DeviceType.cpu:
        np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()))


def assert_bitwise(opt, ref):
    params, m, v = device_arrays(opt)
    ref_m, ref_v = ref.moments()
    for actual, expected in ((params, ref.bridge.params), (m, ref_m), (v, ref_v)):
        assert_same(opt.device, actual, expected)


def test_tiny_network_bit_for_bit_with_torch_adamw(cpu_device, rng):
    cfg = config()
    opt, ref = DeviceAdamW(bridge(cpu_device), cfg, log_slots=6), Reference(cpu_device, cfg)
    for k in range(6):
        grads, lr = gradients(rng, opt.count), 1e-3 * (k + 1) / 3
        device_step(opt, grads, lr, k, log_slot=k)
        ref.step(grads, lr)
        assert_bitwise(opt, ref)
    report = opt.read()
    assert report.steps == 6 and report.skipped == 0 and report.first_skipped is None
    opt.bridge.pull_params()
    assert_same(cpu_device, opt.bridge.params.cpu().numpy(), ref.bridge.params)


def test_moments_bit_for_bit_with_unmodified_torch(cpu_device, rng):
    """m and v need no square root: equal to torch's as it is; the weights within a few float32 ulp."""
    if cpu_device.info.type != spy.DeviceType.cpu:
        pytest.skip("compares with torch's CPU kernels")
    cfg = config()
    opt, ref = DeviceAdamW(bridge(cpu_device), cfg), Reference(cpu_device, cfg)
    for k in range(5):
        grads = gradients(rng, opt.count)
        device_step(opt, grads, 1e-3, k)
        ref.step(grads, 1e-3, sqrt=contextlib.nullcontext)
    params, m, v = device_arrays(opt)
    ref_m, ref_v = ref.moments()
    np.testing.assert_array_equal(m, ref_m)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_allclose(params, ref.bridge.params.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n, beta1", [(1, 0.9), (17, 0.9), (1001, 0.9), (1001, 0.3)])
def test_odd_length_buffer_bit_for_bit(cpu_device, rng, n, beta1):
    """Lengths that are not multiples of torch's vector widths, and lerp's other form (weight >= 0.5)."""
    dev, betas, wd = cpu_device, (beta1, 0.999), 0.05
    start = rng.standard_normal(n).astype(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_opt = torch.optim.AdamW([p], lr=1e-3, betas=betas, weight_decay=wd)
    params, m, v = upload(dev, start), upload(dev, np.zeros(n)), upload(dev, np.zeros(n))
    state = upload(dev, np.r_[np.zeros(kernels.STATE_WORDS, np.uint32), [0]], np.uint32)
    partials = empty_buffer(dev, kernels.PARTIALS)
    for k in range(5):
        grads, lr = gradients(rng, n), 2e-3 / (k + 1)
        g = upload(dev, grads)
        kernels.grad_partials(dev, g, n, partials)
        kernels.finish_step(dev, partials, state, 0, k, NO_CLIP, lr, betas)
        kernels.adamw_step(dev, params, g, m, v, state, n, 1 - lr * wd, 1 - betas[0], betas[1], 1 - betas[1], 1e-8)
        p.grad = torch.from_numpy(grads)
        torch_opt.param_groups[0]["lr"] = lr
        with exact_sqrt():
            torch_opt.step()
    s = torch_opt.state[p]
    for buffer, expected in ((params, p), (m, s["exp_avg"]), (v, s["exp_avg_sq"])):
        assert_same(dev, download(buffer, (n,)), expected)


def test_clipping_matches_clip_grad_norm(cpu_device, rng):
    cfg = config(clip_norm=0.1)
    opt, ref = DeviceAdamW(bridge(cpu_device), cfg, log_slots=5), Reference(cpu_device, cfg)
    norms = []
    for k in range(5):
        grads = gradients(rng, opt.count, scale=1.0)
        device_step(opt, grads, 1e-3, k, log_slot=k)
        norms.append(ref.step(grads, 1e-3))
    report = opt.read()
    assert min(norms) > 1.0   # clipping was active in every step
    np.testing.assert_allclose(report.norms, norms, rtol=1e-5)
    params, m, v = device_arrays(opt)
    ref_m, ref_v = ref.moments()
    np.testing.assert_allclose(params, ref.bridge.params.cpu().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m, ref_m, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(v, ref_v, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["gradient", "loss"])
def test_a_non_finite_step_is_a_reported_no_op(cpu_device, rng, bad, where):
    cfg = config()
    opt, ref = DeviceAdamW(bridge(cpu_device), cfg), Reference(cpu_device, cfg)
    stats = upload(cpu_device, np.ones(12, np.float32))
    for k in range(2):
        grads = gradients(rng, opt.count)
        device_step(opt, grads, 1e-3, k, loss_stats=(stats, 4, 4))
        ref.step(grads, 1e-3)
    before = device_arrays(opt)
    grads = gradients(rng, opt.count)
    if where == "gradient":
        grads[opt.count // 3] = bad
    else:
        upload_into(cpu_device, stats, np.array([bad], np.float32), offset=6)
    device_step(opt, grads, 1e-3, 2, loss_stats=(stats, 4, 4))
    for array, kept in zip(device_arrays(opt), before):
        np.testing.assert_array_equal(array.view(np.uint32), kept.view(np.uint32))
    report = opt.read()
    assert (report.skipped, report.first_skipped, report.last_skipped, report.steps) == (1, 2, 2, 2)
    assert opt.read().skipped == 0   # reported once
    upload_into(cpu_device, stats, np.ones(12, np.float32))
    grads = gradients(rng, opt.count)
    device_step(opt, grads, 1e-3, 3, loss_stats=(stats, 4, 4))
    ref.step(grads, 1e-3)   # torch's run without the skipped step
    assert_bitwise(opt, ref)
    report = opt.read()
    assert (report.steps, report.skipped, report.total_skipped) == (3, 0, 1)


def test_loss_values_outside_the_given_range_are_not_checked(cpu_device, rng):
    opt = DeviceAdamW(bridge(cpu_device), config())
    stats = upload(cpu_device, np.array([np.nan, 1, 1, np.nan], np.float32))
    device_step(opt, gradients(rng, opt.count), 1e-3, 0, loss_stats=(stats, 1, 2))
    assert opt.read().skipped == 0 and opt.read().steps == 1


def test_state_dict_round_trips_with_torch_adamw(cpu_device, rng):
    cfg = config()
    # torch -> device: today's trainer's state resumes on the device.
    ref = Reference(cpu_device, cfg)
    for k in range(3):
        ref.step(gradients(rng, ref.bridge.layout.total), 1e-3)
    resumed = DeviceAdamW(bridge(cpu_device), cfg)
    resumed.bridge.load_state_dict(ref.bridge.state_dict())
    resumed.load_state_dict(ref.optimizer.state_dict())
    assert resumed.read().steps == 3
    assert_bitwise(resumed, ref)
    for k in range(3, 5):
        grads = gradients(rng, resumed.count)
        device_step(resumed, grads, 1e-3, k)
        ref.step(grads, 1e-3)
    assert_bitwise(resumed, ref)
    # device -> torch.
    back = Reference(cpu_device, cfg)
    back.bridge.restore(torch.from_numpy(download(resumed.bridge.params_buffer, (resumed.count,))))
    saved = resumed.state_dict()
    assert saved["state"][0]["step"].item() == 5.0 and saved["param_groups"][0]["params"] == list(range(len(saved["state"])))
    back.optimizer.load_state_dict(saved)
    for k in range(5, 7):
        grads = gradients(rng, resumed.count)
        device_step(resumed, grads, 1e-3, k)
        back.step(grads, 1e-3)
    assert_bitwise(resumed, back)


def test_state_dict_survives_the_checkpoint_format(cpu_device, rng):
    """The run's state files (JSON + safetensors, neumours.train.state_files) hold DeviceAdamW's state as torch's."""
    import json

    from safetensors.torch import load as load_tensors, save as save_tensors

    from neumours.train.state_files import decode, encode

    cfg = config()
    opt = DeviceAdamW(bridge(cpu_device), cfg)
    for k in range(2):
        device_step(opt, gradients(rng, opt.count), 1e-3, k)
    data, tensors = encode(opt.state_dict())
    restored = decode(json.loads(json.dumps(data)), load_tensors(save_tensors(tensors)))
    again = DeviceAdamW(bridge(cpu_device), cfg)
    again.load_state_dict(restored)
    for a, b in zip(device_arrays(opt)[1:], device_arrays(again)[1:]):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert again.read().steps == 2


def test_state_dict_before_any_step_is_empty_and_loads(cpu_device):
    opt = DeviceAdamW(bridge(cpu_device), config())
    saved = opt.state_dict()
    assert saved["state"] == {}
    opt.load_state_dict(saved)
    assert opt.read().steps == 0


def test_a_foreign_state_dict_is_refused(cpu_device):
    opt = DeviceAdamW(bridge(cpu_device), config())
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(NeumoursError, match="optimizer state"):
        opt.load_state_dict(torch.optim.AdamW([p]).state_dict())


def test_a_state_dict_of_other_settings_is_refused(cpu_device):
    ref = Reference(cpu_device, config(betas=(0.8, 0.999)))
    opt = DeviceAdamW(bridge(cpu_device), config())
    with pytest.raises(NeumoursError, match=r"betas \(0.8, 0.999\) \(here \(0.9, 0.999\)\)"):
        opt.load_state_dict(ref.optimizer.state_dict())


def test_muon_is_refused(cpu_device):
    with pytest.raises(NeumoursError, match="adamw only"):
        DeviceAdamW(bridge(cpu_device), OptimizerConfig(name="muon"))


def test_bias_corrections_match_pythons_powers_over_many_steps(cpu_device):
    """The kernel forms beta^t by products (SPIR-V has no double pow): its float32 step size and bias
    correction equal those of Python's ``**`` (torch's) at every one of 600 steps, both beta pairs."""
    for betas in ((0.9, 0.999), (0.3, 0.98765)):
        lr = 1e-3 * 7 / 3
        state = upload(cpu_device, np.zeros(kernels.STATE_WORDS + 1, np.uint32), np.uint32)
        partials = upload(cpu_device, np.zeros(kernels.PARTIALS, np.float32))
        got, expected = [], []
        for t in range(1, 601):
            kernels.finish_step(cpu_device, partials, state, 0, t, NO_CLIP, lr, betas)
            words = download(state, (kernels.STATE_WORDS + 1,), np.uint32)
            got.append((words[kernels.S_NEG_STEP_SIZE], words[kernels.S_BC2_SQRT]))
            step_size = lr / (1 - betas[0] ** t)
            expected.append((np.float32(-step_size).view(np.uint32),
                             np.float32((1 - betas[1] ** t) ** 0.5).view(np.uint32)))
        assert got == expected, betas


def test_norm_is_the_same_in_every_run(cpu_device, rng):
    grads = [gradients(rng, ParamLayout(TINY).total, scale=1.0) for _ in range(3)]
    runs = []
    for _ in range(2):
        opt = DeviceAdamW(bridge(cpu_device), config(clip_norm=0.5), log_slots=3)
        for k, g in enumerate(grads):
            device_step(opt, g, 1e-3, k, log_slot=k)
        runs.append((opt.read().norms, device_arrays(opt)[0]))
    np.testing.assert_array_equal(runs[0][0].view(np.uint32), runs[1][0].view(np.uint32))
    np.testing.assert_array_equal(runs[0][1].view(np.uint32), runs[1][1].view(np.uint32))
    exact = [np.sqrt(np.sum(g.astype(np.float64) ** 2)) for g in grads]
    np.testing.assert_allclose(runs[0][0], exact, rtol=1e-5)


def test_a_recorded_block_equals_steps_one_by_one(cpu_device, rng):
    """Several steps (zero the gradients, accumulate them by a kernel, step) in one command buffer."""
    dev, n = cpu_device, ParamLayout(TINY).total
    grads = [upload(dev, gradients(rng, n, scale=0.5)) for _ in range(4)]
    identity = upload(dev, np.arange(n, dtype=np.uint32), np.uint32)
    results = []
    for recorded in (False, True):
        opt = DeviceAdamW(bridge(dev), config(clip_norm=1.0), log_slots=4)
        upload_into(dev, opt.bridge.grads_buffer, np.full(n, 7.0, np.float32))   # zero_grads must clear this
        with recording(dev) if recorded else contextlib.nullcontext():
            for k, g in enumerate(grads):
                opt.zero_grads()
                accumulate.scatter_add(dev, g, identity, opt.bridge.grads_buffer, n)
                opt.step(1e-3 * (k + 1), k, log_slot=k)
        results.append((opt.read(), device_arrays(opt)))
    (plain, plain_arrays), (block, block_arrays) = results
    np.testing.assert_array_equal(plain.norms.view(np.uint32), block.norms.view(np.uint32))
    assert plain.steps == block.steps == 4
    for a, b in zip(plain_arrays, block_arrays):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    exact = [np.sqrt(np.sum(download(g, (n,)).astype(np.float64) ** 2)) for g in grads]
    np.testing.assert_allclose(plain.norms, exact, rtol=1e-5)


@pytest.mark.gpu
def test_paper_network_on_cuda_matches_torch_adamw(cuda_device, rng):
    """The paper's network on CUDA against torch's AdamW (foreach) on the same GPU, float32 tolerance."""
    paper = INRConfig.paper()
    cfg = config(clip_norm=1.0)
    opt = DeviceAdamW(TorchBridge(cuda_device, ParamLayout(paper), init_params(paper, seed=3)), cfg, log_slots=8)
    ref = TorchBridge(cuda_device, ParamLayout(paper), init_params(paper, seed=3))
    (torch_opt,) = build_optimizers(ref, cfg)
    norms = []
    for k in range(8):
        grads = gradients(rng, opt.count, scale=0.3 if k % 2 else 1e-4)
        device_step(opt, grads, 1e-3 * (k + 1) / 4, k, log_slot=k)
        with torch.no_grad():
            ref.grads.copy_(torch.from_numpy(grads))
        set_learning_rate([torch_opt], 1e-3 * (k + 1) / 4)
        norms.append(float(apply_gradients(ref, [torch_opt], cfg.clip_norm, pull=False)))
    report = opt.read()
    np.testing.assert_allclose(report.norms, norms, rtol=1e-5)
    opt.bridge.pull_params()
    np.testing.assert_allclose(opt.bridge.params.cpu().numpy(), ref.params.cpu().numpy(), rtol=1e-5, atol=1e-6)


def test_a_step_runs_the_bridges_push_hooks(cpu_device, rng):
    """Copies of the weights kept by a backend (the tensor cores' bf16 weights) are refreshed after a device step."""
    opt = DeviceAdamW(bridge(cpu_device), config())
    calls = []
    opt.bridge.add_push_hook(lambda: calls.append(download(opt.bridge.params_buffer, (opt.count,))))
    before = download(opt.bridge.params_buffer, (opt.count,))
    device_step(opt, gradients(rng, opt.count), 1e-3, 0)
    assert len(calls) == 1 and not np.array_equal(calls[0], before)
