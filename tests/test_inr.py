"""The Slang INR against TorchINR (float64) and finite differences, on the CPU device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.model.config import INRConfig
from neumours.model.inr import INR
from neumours.model.reference import TorchINR

SMALL = INRConfig(num_freqs=6, spatial_width=16, modality_width=16, hidden_width=32, hidden_layers=2)


def rel_err(x, ref) -> float:
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def random_inputs(rng, n, config):
    coords = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    p = config.patch_size
    patches = rng.normal(size=(n, config.num_modalities, p, p, p)).astype(np.float32)
    return coords, patches


def torch_reference(inr: INR):
    model = TorchINR(inr.config).double()
    model.load_state_dict({k: v.double() for k, v in inr.state_dict().items()})
    return model


@pytest.mark.parametrize("config", [SMALL, INRConfig.paper()], ids=["small", "paper"])
def test_forward_matches_torch_float64(cpu_device, rng, config):
    inr = INR(config, device=cpu_device, seed=int(rng.integers(1 << 30)))
    n = 40 if config == SMALL else 12
    coords, patches = random_inputs(rng, n, config)
    logits = inr.forward(coords, patches)
    ref = torch_reference(inr)(torch.from_numpy(coords).double(), torch.from_numpy(patches).double())
    assert logits.shape == (n, config.num_classes)
    assert rel_err(logits, ref.detach().numpy()) <= 1e-5


@pytest.mark.parametrize("config", [SMALL, INRConfig.paper()], ids=["small", "paper"])
def test_backward_matches_torch_autograd(cpu_device, rng, config):
    inr = INR(config, device=cpu_device, seed=int(rng.integers(1 << 30)))
    n = 40 if config == SMALL else 10
    coords, patches = random_inputs(rng, n, config)
    grad_logits = rng.normal(size=(n, config.num_classes)).astype(np.float32)
    grads = inr.backward(coords, patches, grad_logits, input_grads=True)

    model = torch_reference(inr)
    c = torch.from_numpy(coords).double().requires_grad_()
    p = torch.from_numpy(patches).double().requires_grad_()
    model(c, p).backward(torch.from_numpy(grad_logits).double())
    for name, param in model.named_parameters():
        assert grads[name].shape == tuple(param.shape), name
        assert rel_err(grads[name], param.grad.numpy()) <= 1e-4, name
    assert rel_err(grads["coords"], c.grad.numpy()) <= 1e-4
    assert rel_err(grads["patches"], p.grad.numpy()) <= 1e-4


def test_weight_gradient_matches_finite_differences(cpu_device, rng):
    # L = sum(g * logits); central differences through the Slang forward (fp32) on a few
    # entries of each tensor. Entries whose +-h step moves a ReLU across its kink (seen
    # as float64 differences disagreeing with float64 autograd) are not differentiable
    # at this h and are skipped.
    inr = INR(SMALL, device=cpu_device, seed=int(rng.integers(1 << 30)))
    coords, patches = random_inputs(rng, 30, SMALL)
    g = rng.normal(size=(30, SMALL.num_classes))
    grads = inr.backward(coords, patches, g.astype(np.float32))
    state = {k: v.numpy().astype(np.float64) for k, v in inr.state_dict().items()}
    model = torch_reference(inr)
    inputs = (torch.from_numpy(coords).double(), torch.from_numpy(patches).double())

    def loss64(trial):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in trial.items()})
        with torch.no_grad():
            return float((model(*inputs).numpy() * g).sum())

    def loss32(trial):
        inr.load_state_dict({k: v.astype(np.float32) for k, v in trial.items()})
        return float((inr.forward(coords, patches).astype(np.float64) * g).sum())

    h, checked = 1e-3, 0
    for name in ("spatial.weight", "modality.weight", "mlp.1.weight", "head.bias"):
        flat = state[name].reshape(-1)
        for index in rng.choice(flat.size, size=3, replace=False):
            fd = {}
            for loss in (loss64, loss32):
                values = []
                for sign in (1, -1):
                    trial = {k: v.copy() for k, v in state.items()}
                    trial[name].reshape(-1)[index] += sign * h
                    values.append(loss(trial))
                fd[loss] = (values[0] - values[1]) / (2 * h)
            analytic = float(grads[name].reshape(-1)[index])
            if abs(fd[loss64] - analytic) > 1e-3 * max(1.0, abs(analytic)):
                continue  # a ReLU kink inside +-h
            checked += 1
            assert abs(fd[loss32] - analytic) <= 1e-2 * max(1.0, abs(analytic)), (name, index, fd, analytic)
    assert checked >= 6
    inr.load_state_dict({k: v.astype(np.float32) for k, v in state.items()})


def test_backward_accumulates_on_device(cpu_device, rng):
    from neumours.device import download, empty_buffer, upload

    inr = INR(SMALL, device=cpu_device, seed=1)
    coords, patches = random_inputs(rng, 20, SMALL)
    g = rng.normal(size=(20, SMALL.num_classes)).astype(np.float32)
    once = inr.backward(coords, patches, g)
    c, p = upload(cpu_device, coords), upload(cpu_device, patches.reshape(20, -1))
    inr.zero_grad()
    for _ in range(2):
        ws = inr.workspace(20)
        inr.forward_device(c, p, 20, empty_buffer(cpu_device, 20 * 4), ws)
        inr.backward_device(c, p, 20, upload(cpu_device, g), ws)
    twice = inr.layout.views(download(inr.bridge.grads_buffer, (inr.layout.total,)))
    for name in once:
        np.testing.assert_allclose(twice[name], 2 * once[name], rtol=1e-5, atol=1e-6)


def test_num_parameters(cpu_device):
    assert INR(INRConfig.paper(), device=cpu_device).num_parameters() == 262_020


@pytest.mark.gpu
def test_gpu_full_config_matches_torch(cuda_device, rng):
    # Default network, N = 65,536 points, fp32 kernels against float64 torch on the GPU.
    config, n = INRConfig(precision="fp32"), 65_536
    inr = INR(config, device=cuda_device, seed=int(rng.integers(1 << 30)))
    coords, patches = random_inputs(rng, n, config)
    grad_logits = rng.normal(size=(n, config.num_classes)).astype(np.float32)
    logits = inr.forward(coords, patches)
    grads = inr.backward(coords, patches, grad_logits, input_grads=True)

    def torch_run(dtype):
        model = torch_reference(inr).to("cuda", dtype)
        c = torch.from_numpy(coords).to("cuda", dtype).requires_grad_()
        p = torch.from_numpy(patches).to("cuda", dtype).requires_grad_()
        out = model(c, p)
        out.backward(torch.from_numpy(grad_logits).to("cuda", dtype))
        result = {"logits": out.detach().double().cpu().numpy(), "coords": c.grad.double().cpu().numpy(),
                  "patches": p.grad.double().cpu().numpy()}
        result.update({name: q.grad.double().cpu().numpy() for name, q in model.named_parameters()})
        return result

    ref = torch_run(torch.float64)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's default would run the Conv3d in TF32
    try:
        peer = torch_run(torch.float32)  # what fp32 arithmetic itself costs at this size
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ours = dict(grads, logits=logits)
    errors = {k: (rel_err(ours[k], ref[k]), rel_err(peer[k], ref[k])) for k in ref}
    print("relative errors vs float64 (slang, torch fp32):", {k: f"{a:.1e}/{b:.1e}" for k, (a, b) in errors.items()})
    assert errors["logits"][0] <= 1e-5
    # Gradients summed over 65,536 points: as close to float64 as torch's own fp32 is
    # (ReLU masks of near-zero pre-activations flip between fp32 and fp64), or 1e-4.
    for name, (slang_err, torch_err) in errors.items():
        assert slang_err <= max(1e-4, 2 * torch_err), (name, slang_err, torch_err)
