"""neumours.torch: the INR, the volume cache and the raymarcher as torch autograd functions over the
Slang kernels, checked against the float64 torch references and finite differences on the CPU device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neumours.errors import NeumoursError
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes
from neumours.model.reference import TorchINR, patches_np
from neumours.refine.reference import grid_probabilities, inr_field
from neumours.render import RenderSettings, orbit
from neumours.render.reference import TorchScene, render_reference
from neumours.render.transfer import LabelLUT, ModalityWindow
from neumours.torch import INRModule, cache, render, render_inr

CONFIG = INRConfig(num_freqs=3, spatial_width=8, modality_width=8, hidden_width=16, hidden_layers=2)
SHAPE, SPACING = (9, 8, 7), (1.0, 1.2, 1.0)


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def reference_of(net: INRModule) -> TorchINR:
    model = TorchINR(net.config).double()
    model.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    return model


def kink_margin(model: TorchINR, coords: torch.Tensor, patches: torch.Tensor) -> float:
    """Smallest |pre-activation| of any hidden unit, in float64. Below ~1e-5, float32 may put a unit on the
    other side of its ReLU than float64 does, which moves a weight gradient by ~1e-4 of its norm."""
    from neumours.model.reference import fourier_features_torch

    with torch.no_grad():
        coords, patches = coords.double(), patches.double()
        z = [model.spatial(fourier_features_torch(coords, model.config.num_freqs)), model.modality(patches).flatten(1)]
        h = torch.relu(torch.cat(z, 1))
        for layer in model.mlp:
            z.append(layer(h))
            h = torch.relu(z[-1])
    return float(min(t.abs().min() for t in z))


def points(rng, n=40, net=None):
    """Random INR inputs; with ``net``, drawn again until no hidden unit sits within 1e-5 of its ReLU kink."""
    for _ in range(50):
        coords = torch.tensor(rng.uniform(-1, 1, (n, 3)), dtype=torch.float32)
        patches = torch.tensor(rng.normal(size=(n, 4, 3, 3, 3)), dtype=torch.float32)
        if net is None or kink_margin(reference_of(net), coords, patches) > 1e-5:
            return coords, patches
    raise AssertionError("no draw kept clear of the ReLU kinks")


def grid_problem(rng, device) -> tuple[INRModule, np.ndarray]:
    """A random network and (4, *SHAPE) volume whose grid voxels keep every hidden unit 1e-5 clear of its
    ReLU kink (the spatial layer sees the same grid whatever the volume, so the network is drawn again too)."""
    positions = np.indices(SHAPE).reshape(3, -1).T
    coords = torch.from_numpy(2 * positions / (np.array(SHAPE) - 1) - 1)
    for _ in range(50):
        net = INRModule(CONFIG, device, seed=int(rng.integers(1 << 30)))
        volume = rng.normal(size=(4, *SHAPE)).astype(np.float32)
        if kink_margin(reference_of(net), coords, torch.from_numpy(patches_np(volume, positions))) > 1e-5:
            return net, volume
    raise AssertionError("no draw kept clear of the ReLU kinks")


@pytest.fixture
def net(cpu_device, rng):
    return INRModule(CONFIG, cpu_device, seed=int(rng.integers(1 << 30)))


def test_parameters_are_the_checkpoint_tensors(net, tmp_path, cpu_device):
    from neumours.model.checkpoint import save_checkpoint

    assert list(net.state_dict()) == list(TorchINR(CONFIG).state_dict()) == net.names
    assert all(isinstance(p, torch.nn.Parameter) and p.is_leaf for p in net.parameters())
    with torch.no_grad():  # the parameters are the kernels' weights: writes reach the flat vector
        net.head.bias.fill_(0.5)
    assert torch.all(net.inr.layout.views(net.inr.bridge.params)["head.bias"] == 0.5)
    path = save_checkpoint(tmp_path / "m.safetensors", net.state_dict(), CONFIG)
    again = INRModule.load(path, cpu_device)
    for (name, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_inr_gradients_match_float64_torch(net, rng):
    coords, patches = points(rng, net=net)
    coords.requires_grad_(), patches.requires_grad_()
    weight = torch.tensor(rng.normal(size=(len(coords), 4)), dtype=torch.float32)
    logits = net(coords, patches)
    (logits * weight).sum().backward()

    model = reference_of(net)
    c64, p64 = coords.detach().double().requires_grad_(), patches.detach().double().requires_grad_()
    ref = model(c64, p64)
    (ref * weight.double()).sum().backward()
    assert rel_err(logits.detach(), ref.detach()) <= 1e-5
    for (name, p), q in zip(net.named_parameters(), model.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name
    assert rel_err(coords.grad, c64.grad) <= 1e-5 and rel_err(patches.grad, p64.grad) <= 1e-5


def test_inr_gradient_matches_finite_differences(net, rng):
    coords, patches = points(rng)
    weight = torch.tensor(rng.normal(size=(len(coords), 4)), dtype=torch.float32)
    (net(coords, patches) * weight).sum().backward()
    params = list(net.parameters())
    # Half along the gradient, half random, unit norm: a directional derivative of the gradient's size.
    scale = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params)))
    direction = [p.grad / scale + torch.tensor(rng.normal(size=tuple(p.shape)), dtype=p.dtype) / np.sqrt(sum(q.numel() for q in params))
                 for p in params]  # from the test's seeded rng, not torch's global generator
    norm = float(torch.sqrt(sum((d ** 2).sum() for d in direction)))
    direction = [d / norm for d in direction]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))
    eps, values = 2e-3, []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            values.append(float((net(coords, patches).double() * weight.double()).sum()))
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    fd = (values[0] - values[1]) / (2 * eps)
    assert abs(fd - analytic) <= 2e-3 * abs(analytic), (fd, analytic)


def test_logits_at_voxels(net, rng, cpu_device):
    volume = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    vols = CaseVolumes.upload(cpu_device, [volume])
    positions = np.stack([rng.integers(0, s, 12) for s in SHAPE], 1)
    got = net.at_voxels(vols, positions)
    dims = np.array(SHAPE) - 1
    ref = reference_of(net)(torch.from_numpy(2 * positions / dims - 1), torch.from_numpy(patches_np(volume, positions)))
    assert rel_err(got.detach(), ref.detach()) <= 1e-5 and got.requires_grad


def test_cache_gradients_match_float64_torch(rng, cpu_device):
    net, volume = grid_problem(rng, cpu_device)
    weight = torch.tensor(rng.normal(size=(4, *SHAPE)), dtype=torch.float32)
    probs = cache(net, CaseVolumes.upload(cpu_device, [volume]), chunk_points=100)
    (probs * weight).sum().backward()
    model = reference_of(net)
    ref = grid_probabilities(model, torch.from_numpy(volume).double())
    (ref * weight.double()).sum().backward()
    assert probs.shape == (4, *SHAPE) and rel_err(probs.detach(), ref.detach()) <= 1e-6
    for (name, p), q in zip(net.named_parameters(), model.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name


def render_settings():
    windows = tuple(ModalityWindow(lo=0.1 * m, hi=0.8 + 0.05 * m, gamma=1.0 + 0.3 * m, weight=0.3, tint=(1.0, 0.8, 0.6))
                    for m in range(4))
    return RenderSettings(windows=windows, lut=LabelLUT(opacities=np.array([0.5, 8.0, 3.0, 6.0], np.float32)),
                          step=0.07, background=(0.1, 0.2, 0.3))


def test_render_gradients_match_float64_torch(rng):
    settings = render_settings()
    logits = rng.normal(size=(4, *SHAPE))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    mri = rng.uniform(0, 1, (4, *SHAPE))
    leaves = {"volume": probs, "mri": mri, "lut_colours": settings.lut.colours, "lut_opacities": settings.lut.opacities,
              "modality_weights": [w.weight for w in settings.windows]}
    ours = {k: torch.tensor(np.asarray(v), dtype=torch.float32, requires_grad=True) for k, v in leaves.items()}
    ref = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for k, v in leaves.items()}
    cam = orbit(30.0, 20.0, 3.5, width=12, height=10)
    grad_image = torch.tensor(rng.normal(size=(10, 12, 3)), dtype=torch.float32)
    image = render(ours["volume"], cam, settings, spacing=SPACING, mri=ours["mri"], lut_colours=ours["lut_colours"],
                   lut_opacities=ours["lut_opacities"], modality_weights=ours["modality_weights"])
    (image * grad_image).sum().backward()
    scene = TorchScene.build(SHAPE, SPACING, settings, volumes=ref["mri"], probabilities=ref["volume"],
                             weights=ref["modality_weights"], lut_colours=ref["lut_colours"],
                             lut_opacities=ref["lut_opacities"])
    expected, _ = render_reference(scene, cam)
    (expected * grad_image.double()).sum().backward()
    assert image.shape == (10, 12, 3) and rel_err(image.detach(), expected.detach()) <= 1e-5
    for name in leaves:
        assert ref[name].grad.abs().max() > 0, name
        assert rel_err(ours[name].grad, ref[name].grad) <= 1e-4, name


def test_render_gradient_matches_finite_differences(rng):
    settings = RenderSettings(lut=LabelLUT(opacities=np.array([0.0, 1.0, 0.5, 1.0], np.float32)), step=0.1)
    probs = torch.tensor(rng.dirichlet(np.ones(4), SHAPE).transpose(3, 0, 1, 2), dtype=torch.float32,
                         requires_grad=True)
    cam = orbit(160.0, 20.0, 3.5, width=12, height=10)
    weight = torch.tensor(rng.normal(size=(10, 12, 3)), dtype=torch.float32)
    (render(probs, cam, settings, spacing=SPACING) * weight).sum().backward()
    direction = probs.grad / probs.grad.norm() + torch.randn_like(probs) / probs.numel() ** 0.5
    direction /= direction.norm()
    eps = 1e-2
    with torch.no_grad():
        up = (render(probs + eps * direction, cam, settings, spacing=SPACING).double() * weight).sum()
        down = (render(probs - eps * direction, cam, settings, spacing=SPACING).double() * weight).sum()
    fd, analytic = float(up - down) / (2 * eps), float((probs.grad * direction).sum())
    assert abs(fd - analytic) <= 2e-3 * abs(analytic), (fd, analytic)


def test_render_inr_matches_float64_torch(net, rng, cpu_device):
    volume = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    settings = RenderSettings(lut=LabelLUT(opacities=np.array([0.0, 8.0, 4.0, 8.0], np.float32)), step=0.05)
    cam = orbit(30.0, 20.0, 3.5, width=12, height=10)
    grad_image = torch.tensor(rng.normal(size=(10, 12, 3)), dtype=torch.float32)
    image = render_inr(net, CaseVolumes.upload(cpu_device, [volume]), cam, settings, spacing=SPACING, chunk_points=150)
    (image * grad_image).sum().backward()
    model = reference_of(net)
    v64 = torch.from_numpy(volume).double()
    scene = TorchScene.build(SHAPE, SPACING, settings, field=inr_field(model, v64, SPACING))
    expected, _ = render_reference(scene, cam)
    (expected * grad_image.double()).sum().backward()
    assert rel_err(image.detach(), expected.detach()) <= 1e-5
    for (name, p), q in zip(net.named_parameters(), model.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-4, name


def test_inr_cache_render_loss_optimiser_step(rng, cpu_device):
    """INR -> cache -> render -> a torch loss -> backward -> one SGD step: the weights move as float64 torch says."""
    net, volume = grid_problem(rng, cpu_device)
    settings = RenderSettings(lut=LabelLUT(opacities=np.array([0.0, 8.0, 4.0, 8.0], np.float32)), step=0.05)
    cam = orbit(60.0, 10.0, 3.5, width=12, height=10)
    target = torch.tensor(rng.uniform(0, 0.5, (10, 12, 3)), dtype=torch.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = reference_of(net)

    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    image = render(cache(net, CaseVolumes.upload(cpu_device, [volume])), cam, settings, spacing=SPACING)
    loss = (image - target).abs().mean() + image.std()
    loss.backward()
    optimizer.step()

    ref_image = render_reference(TorchScene.build(SHAPE, SPACING, settings, probabilities=grid_probabilities(
        model, torch.from_numpy(volume).double())), cam)[0]
    ref_loss = (ref_image - target.double()).abs().mean() + ref_image.std()
    ref_loss.backward()
    assert abs(float(loss.detach()) - float(ref_loss.detach())) <= 1e-5 * float(ref_loss.detach())
    for name, q in model.named_parameters():
        moved = net.state_dict()[name].double() - before[name].double()
        assert moved.abs().max() > 0, name
        assert rel_err(moved, -0.5 * q.grad) <= 1e-4, name
    # The kernels see the new weights: the next forward equals the reference's after the same step.
    with torch.no_grad():
        for q in model.parameters():
            q -= 0.5 * q.grad
        coords, patches = points(rng, 10)
        assert rel_err(net(coords, patches), model(coords.double(), patches.double())) <= 1e-5


def test_torch_machinery(net, rng):
    coords, patches = points(rng)
    weight = torch.tensor(rng.normal(size=(len(coords), 4)), dtype=torch.float32)
    params = list(net.parameters())

    # autograd.grad leaves .grad alone; two backward calls accumulate.
    grads = torch.autograd.grad((net(coords, patches) * weight).sum(), params)
    assert all(p.grad is None for p in params)
    (net(coords, patches) * weight).sum().backward()
    (net(coords[:20], patches[:20]) * weight[:20]).sum().backward()
    half = torch.autograd.grad((net(coords[:20], patches[:20]) * weight[:20]).sum(), params)
    for p, g, h in zip(params, grads, half):
        assert torch.allclose(p.grad, g + h, rtol=1e-5, atol=1e-7)

    # Two forwards, one backward: each forward kept its own activations.
    loss = (net(coords[:20], patches[:20]) * weight[:20]).sum() + (net(coords[20:], patches[20:]) * weight[20:]).sum()
    for g, s in zip(grads, torch.autograd.grad(loss, params)):
        assert torch.allclose(g, s, rtol=1e-5, atol=1e-7)

    # no_grad and detach keep no backward state.
    leased = net.pool.leased
    with torch.no_grad():
        out = net(coords, patches)
    assert out.grad_fn is None and net.pool.leased == leased
    assert net(coords, patches).detach().grad_fn is None

    # Double backward is refused, not answered wrongly.
    c = coords.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((net(c, patches) * weight).sum(), c, create_graph=True)

    # Any optimiser and scheduler: Adam with a step schedule.
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    first = None
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(coords, patches), torch.zeros(len(coords), dtype=torch.long))
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
        scheduler.step()
    assert loss.item() < first and scheduler.get_last_lr()[0] == pytest.approx(1e-2 / 8)


def test_bad_inputs_are_refused(net):
    with pytest.raises(NeumoursError, match="coords"):
        net(torch.zeros(5, 2), torch.zeros(5, 108))
    with pytest.raises(NeumoursError, match="patches"):
        net(torch.zeros(5, 3), torch.zeros(4, 108))
    with pytest.raises(NeumoursError, match="volume"):
        render(torch.zeros(3, *SHAPE), orbit(0.0, 0.0, 3.0, width=4, height=4), spacing=SPACING)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_gpu_inr_gradients_and_stream_order(cuda_device, precision):
    """On CUDA: outputs are device tensors, torch kernels queued right before and after the Slang
    kernels are seen in order (no stale reads), and bf16 tensor cores stay within bf16's tolerance."""
    import dataclasses

    net = INRModule(dataclasses.replace(INRConfig.paper(), precision=precision), cuda_device, seed=3)
    rng = np.random.default_rng(4)
    n = 1 << 16
    coords = torch.tensor(rng.uniform(-1, 1, (n, 3)), dtype=torch.float32, device="cuda")
    patches = torch.tensor(rng.normal(size=(n, 108)), dtype=torch.float32, device="cuda")
    weight = torch.randn(n, 4, device="cuda")
    big = torch.randn(4096, 4096, device="cuda")
    for _ in range(3):
        big = big @ big / 64  # keeps torch's stream busy while the inputs are being written
    coords2 = coords * 0.5  # queued behind the matmuls
    logits = net(coords2, patches.view(n, 4, 3, 3, 3))
    (logits * weight).sum().backward()
    model = reference_of(net).cuda()
    c64 = coords2.double()
    ref = model(c64, patches.double().view(n, 4, 3, 3, 3))
    (ref * weight.double()).sum().backward()
    assert logits.is_cuda and rel_err(logits.detach().cpu(), ref.detach().cpu()) <= (1e-2 if precision == "bf16" else 1e-5)
    # What bf16 itself costs (as tests/test_tensor_core.py): torch's autocast on the same points.
    peer = TorchINR(net.config).cuda()
    peer.load_state_dict(net.state_dict())
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        peer_out = peer(coords2, patches.view(n, 4, 3, 3, 3))
    peer_out.float().backward(weight)
    for (name, p), q, r in zip(net.named_parameters(), model.parameters(), peer.parameters()):
        ours, torch_err = rel_err(p.grad.cpu(), q.grad.cpu()), rel_err(r.grad.cpu(), q.grad.cpu())
        # fp32: the bound of tests/test_inr.py's full-size check (a weight gradient sums 65,536 points;
        # torch's own fp32 on this GPU is farther from float64 than ours).
        assert ours <= (max(2e-2, 1.5 * torch_err) if precision == "bf16" else max(1e-4, 2 * torch_err)), (name, ours, torch_err)


@pytest.mark.gpu
def test_gpu_cache_render_zero_copy(cuda_device):
    net = INRModule(INRConfig.tiny(), cuda_device, seed=1)
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(4, 24, 24, 20)).astype(np.float32)
    probs = cache(net, CaseVolumes.upload(cuda_device, [volume]))
    assert probs.is_cuda
    cam = orbit(30.0, 20.0, 3.5, width=64, height=48)
    settings = RenderSettings(step=0.02)
    image = render(probs, cam, settings, spacing=(1, 1, 1))
    image2 = render(probs * 1.0, cam, settings, spacing=(1, 1, 1))  # a torch kernel's output, copied
    assert image.is_cuda and torch.equal(image, image2)
    ref = render_reference(TorchScene.build((24, 24, 20), (1, 1, 1), settings, probabilities=probs.double(),
                                            device="cuda"), cam)[0]
    assert rel_err(image.cpu(), ref.cpu()) <= 1e-5
    # A view of a returned tensor keeps its device buffer alive after the tensor itself is gone.
    import gc

    view, expected = probs[1:], probs[1:].clone()
    del probs
    gc.collect()
    for _ in range(3):
        cache(net, CaseVolumes.upload(cuda_device, [volume * 2]))
    assert torch.equal(view, expected)


def test_signed_distance_and_boundary_loss(rng, cpu_device):
    from neumours.torch import boundary_loss, signed_distance

    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 2:5, 1:5] = 2
    labels[3, 3, 2] = 1
    phi = signed_distance(labels, spacing=(1.0, 2.0, 1.0))
    assert phi.shape == (4, *SHAPE) and not phi[3].any()  # class 3 absent
    assert phi[2][labels == 2].max() <= 0 < phi[2][labels != 2].min()
    assert phi[2][1, 3, 2] == 1.0 and phi[2][2, 3, 2] == 0.0  # one voxel outside / on the inner boundary (axis 0)
    assert phi[2][3, 3, 0] == 1.0 and phi[2][3, 1, 2] == 2.0  # spacing 2 along axis 1

    net, volume = grid_problem(rng, cpu_device)
    probs = cache(net, CaseVolumes.upload(cpu_device, [volume]))
    loss = boundary_loss(probs, torch.from_numpy(phi))
    assert float(loss.detach()) == pytest.approx(float((probs.detach().numpy()[1:] * phi[1:]).mean()), rel=1e-6)
    loss.backward()
    model = reference_of(net)
    boundary_loss(grid_probabilities(model, torch.from_numpy(volume).double()), torch.from_numpy(phi)).backward()
    for (name, p), q in zip(net.named_parameters(), model.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name
