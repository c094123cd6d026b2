"""INR config, flat parameter layout, init, checkpoints, the torch reference and the torch bridge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neumours.model.bridge import TorchBridge
from neumours.device import download, upload
from neumours.kernels.accumulate import scatter_add
from neumours.errors import NeumoursError
from neumours.model.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from neumours.model.config import INRConfig
from neumours.model.params import ParamLayout, init_params
from neumours.model.reference import TorchINR, fourier_features_np, fourier_features_torch

TINY = INRConfig.tiny()


def tiny_inputs(rng, n=7, config=TINY):
    p = config.patch_size
    coords = rng.uniform(-1, 1, (n, 3))
    patches = rng.normal(size=(n, config.num_modalities, p, p, p))
    return torch.from_numpy(coords), torch.from_numpy(patches)


# -- config ---------------------------------------------------------------------------------


def test_paper_config_counts_match_spec():
    c = INRConfig.paper()
    assert (c.fourier_dim, c.patch_dim, c.concat_width) == (387, 108, 256)
    layout = ParamLayout(c)
    assert layout.total == c.num_params == 262_020
    per_part = {}
    for name in layout.names:
        part = name.split(".")[0]
        per_part[part] = per_part.get(part, 0) + math.prod(layout.shape(name))
    assert per_part == {"spatial": 49_664, "modality": 13_952, "mlp": 197_376, "head": 1_028}


def test_param_shapes_order_and_names():
    shapes = INRConfig.paper().param_shapes()
    assert list(shapes) == [
        "spatial.weight", "spatial.bias", "modality.weight", "modality.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.1.weight", "mlp.1.bias", "mlp.2.weight", "mlp.2.bias",
        "head.weight", "head.bias",
    ]  # fmt: skip
    assert shapes["spatial.weight"] == (128, 387) and shapes["modality.weight"] == (128, 4, 3, 3, 3)
    assert shapes["head.weight"] == (4, 256)


def test_config_validation_and_dict_round_trip():
    with pytest.raises(ValueError, match="must equal hidden_width"):
        INRConfig(hidden_width=200)
    with pytest.raises(ValueError, match="at least 1"):
        INRConfig(num_freqs=0)
    assert INRConfig.from_dict(TINY.to_dict()) == TINY
    assert INRConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(NeumoursError, match="unknown field.*hiden_width"):
        INRConfig.from_dict({**TINY.to_dict(), "hiden_width": 16})
    with pytest.raises(NeumoursError, match="must equal hidden_width"):
        INRConfig.from_dict({**TINY.to_dict(), "hidden_width": 17})


# -- layout and init ------------------------------------------------------------------------


def test_layout_is_contiguous_and_views_alias():
    layout = ParamLayout(INRConfig.paper())
    offset = 0
    for name in layout.names:
        assert layout.offset(name) == offset
        offset += math.prod(layout.shape(name))
    assert offset == layout.total

    flat = np.zeros(layout.total, np.float32)
    views = layout.views(flat)
    assert all(np.shares_memory(v, flat) for v in views.values())
    views["mlp.1.bias"][5] = 3.0
    assert flat[layout.offset("mlp.1.bias") + 5] == 3.0

    flat_t = torch.zeros(layout.total)
    tviews = layout.views(flat_t)
    tviews["head.weight"][2, 7] = 1.5
    assert flat_t[layout.offset("head.weight") + 2 * 256 + 7] == 1.5
    with pytest.raises(ValueError, match="shape"):
        layout.views(np.zeros(layout.total + 1, np.float32))


def test_conv_kernel_reads_as_out_by_patch_matrix():
    # Input index c*27 + a*9 + b*3 + d for offsets (a, b, d) along array axes 0, 1, 2.
    layout = ParamLayout(TINY)
    flat = np.arange(layout.total, dtype=np.float32)
    w = layout.views(flat)["modality.weight"]
    o = layout.offset("modality.weight")
    assert w[2, 3, 1, 0, 2] == flat[o + 2 * TINY.patch_dim + 3 * 27 + 1 * 9 + 0 * 3 + 2]


def test_pack_checks_names_and_shapes():
    layout = ParamLayout(TINY)
    state = TorchINR(TINY).state_dict()
    flat = layout.pack(state)
    assert flat.dtype == np.float32 and flat.shape == (layout.total,)
    np.testing.assert_array_equal(layout.views(flat)["mlp.0.weight"], state["mlp.0.weight"].numpy())
    with pytest.raises(NeumoursError, match="missing head.bias"):
        layout.pack({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(NeumoursError, match="unexpected extra.weight"):
        layout.pack({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(NeumoursError, match=r"mlp.1.weight has shape \(16, 15\)"):
        layout.pack({**state, "mlp.1.weight": torch.zeros(16, 15)})


def test_init_is_deterministic_and_bounded():
    config = INRConfig.paper()
    a, b, c = init_params(config, 0), init_params(config, 0), init_params(config, 1)
    assert a.dtype == np.float32 and a.shape == (262_020,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    views = ParamLayout(config).views(a)
    fan_ins = {"spatial": 387, "modality": 108, "mlp.0": 256, "mlp.2": 256, "head": 256}
    for layer, fan_in in fan_ins.items():
        bound = 1 / math.sqrt(fan_in)
        for kind in ("weight", "bias"):
            v = views[f"{layer}.{kind}"]
            assert np.abs(v).max() <= bound
            # Uniform draws fill the interval: the largest value is near the bound.
            assert np.abs(v).max() > 0.8 * bound
    # Same spread as torch's own default init (kaiming_uniform with a = sqrt(5)).
    torch_std = TorchINR(config).spatial.weight.detach().numpy().std()
    assert views["spatial.weight"].std() == pytest.approx(torch_std, rel=0.02)


# -- torch reference --------------------------------------------------------------------------


def test_fourier_features_torch_matches_numpy(rng):
    p = rng.uniform(-1, 1, (50, 3))
    out = fourier_features_torch(torch.from_numpy(p), 5)
    np.testing.assert_allclose(out.numpy(), fourier_features_np(p, 5), rtol=0, atol=1e-12)
    pt = torch.from_numpy(p).requires_grad_()
    fourier_features_torch(pt, 3).sum().backward()
    assert pt.grad is not None and torch.isfinite(pt.grad).all()


def test_torch_inr_state_dict_matches_layout():
    layout = ParamLayout(INRConfig.paper())
    state = TorchINR().state_dict()
    assert list(state) == list(layout.names)
    assert {k: tuple(v.shape) for k, v in state.items()} == {n: layout.shape(n) for n in layout.names}


def test_torch_inr_forward_matches_manual_float64(rng):
    model = TorchINR(TINY).double()
    coords, patches = tiny_inputs(rng)
    logits = model(coords, patches)
    assert logits.shape == (7, 4) and logits.dtype == torch.float64
    # Same network by hand: the conv with valid padding is a matrix over the flattened patch.
    w = {k: v.numpy() for k, v in model.state_dict().items()}
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    s = relu(fourier_features_np(coords.numpy(), TINY.num_freqs) @ w["spatial.weight"].T + w["spatial.bias"])
    m = relu(patches.numpy().reshape(7, -1) @ w["modality.weight"].reshape(TINY.modality_width, -1).T
             + w["modality.bias"])  # fmt: skip
    h = np.concatenate([s, m], axis=1)
    for i in range(TINY.hidden_layers):
        h = relu(h @ w[f"mlp.{i}.weight"].T + w[f"mlp.{i}.bias"])
    np.testing.assert_allclose(logits.detach().numpy(), h @ w["head.weight"].T + w["head.bias"], rtol=1e-10, atol=1e-12)
    assert model.float()(coords.float(), patches.float()).dtype == torch.float32


def test_pack_views_load_gives_identical_outputs(rng):
    layout = ParamLayout(TINY)
    a, b = TorchINR(TINY), TorchINR(TINY)
    b.load_state_dict({n: torch.from_numpy(v) for n, v in layout.views(layout.pack(a.state_dict())).items()})
    coords, patches = tiny_inputs(rng)
    coords, patches = coords.float(), patches.float()
    with torch.no_grad():
        assert torch.equal(a(coords, patches), b(coords, patches))


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    layout = ParamLayout(TINY)
    flat = init_params(TINY, seed=3)
    path = save_checkpoint(tmp_path / "a" / "inr.safetensors", layout.views(flat), TINY, {"step": "12", "case": "x"})
    state, config, meta = load_checkpoint(path)
    assert config == TINY and meta == {"step": "12", "case": "x"}
    assert list(state) == list(layout.names)
    np.testing.assert_array_equal(layout.pack(state), flat)
    # Plain safetensors readers see the documented tensor names, the format and the config.
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == CHECKPOINT_FORMAT
        assert json.loads(f.metadata()["config"]) == TINY.to_dict()
    # torch tensors and the flat vector are accepted too; no temporary files are left.
    save_checkpoint(tmp_path / "b.safetensors", TorchINR(TINY).state_dict(), TINY)
    save_checkpoint(tmp_path / "c.safetensors", flat, TINY)
    np.testing.assert_array_equal(layout.pack(load_checkpoint(tmp_path / "c.safetensors", TINY)[0]), flat)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.safetensors", "c.safetensors"]


def test_checkpoint_wrong_config_names_fields(tmp_path):
    path = save_checkpoint(tmp_path / "inr.safetensors", init_params(TINY), TINY)
    with pytest.raises(NeumoursError) as err:
        load_checkpoint(path, expected_config=INRConfig.paper())
    msg = str(err.value)
    assert str(path) in msg and "checkpoint has hidden_width=16, expected 256" in msg
    assert "num_freqs=4, expected 64" in msg and "num_classes" not in msg and "\n" not in msg


def test_checkpoint_truncated_and_garbage_and_missing(tmp_path):
    path = save_checkpoint(tmp_path / "inr.safetensors", init_params(TINY), TINY)
    data = path.read_bytes()
    for name, content in [("cut.safetensors", data[: len(data) // 2]), ("head.safetensors", data[:5]),
                          ("text.safetensors", b"this is not a checkpoint\n" * 20), ("empty.safetensors", b"")]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(NeumoursError, match=f"{name}: not a readable safetensors file"):
            load_checkpoint(bad)
    with pytest.raises(NeumoursError, match="nope.safetensors: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_foreign_inconsistent_or_nonfinite(tmp_path):
    import safetensors.numpy

    layout = ParamLayout(TINY)
    views = layout.views(init_params(TINY))
    foreign = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file(dict(views), str(foreign))
    with pytest.raises(NeumoursError, match="not a Neumours INR checkpoint"):
        load_checkpoint(foreign)

    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps(TINY.to_dict())}
    short = tmp_path / "short.safetensors"
    safetensors.numpy.save_file({k: v for k, v in views.items() if k != "head.bias"}, str(short), meta)
    with pytest.raises(NeumoursError, match="missing head.bias"):
        load_checkpoint(short)
    shaped = tmp_path / "shaped.safetensors"
    safetensors.numpy.save_file({**views, "head.bias": np.zeros(5, np.float32)}, str(shaped), meta)
    with pytest.raises(NeumoursError, match=r"head.bias has shape \(5,\)"):
        load_checkpoint(shaped)

    nan = tmp_path / "nan.safetensors"
    poisoned = {k: v.copy() for k, v in views.items()}
    poisoned["mlp.1.weight"][3, 4] = np.nan
    safetensors.numpy.save_file(poisoned, str(nan), meta)
    with pytest.raises(NeumoursError, match="nan.safetensors: tensor mlp.1.weight holds 1 NaN/Inf"):
        load_checkpoint(nan)
    with pytest.raises(NeumoursError, match="mlp.1.weight holds NaN or Inf"):
        save_checkpoint(tmp_path / "never.safetensors", poisoned, TINY)
    assert not (tmp_path / "never.safetensors").exists()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "never.safetensors", views, TINY, {"config": "{}"})


# -- bridge (CPU device: explicit copies) ------------------------------------------------------


@pytest.fixture
def bridge(cpu_device):
    return TorchBridge(cpu_device, ParamLayout(TINY), init_params(TINY, seed=5))


def device_params(bridge):
    return download(bridge.params_buffer, (bridge.layout.total,))


def set_random_grads(bridge, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bridge.grads.copy_(torch.randn(bridge.layout.total, generator=gen))


def test_bridge_initial_state(bridge):
    assert not bridge.zero_copy
    assert bridge.params.dtype == torch.float32 and bridge.params.shape == (bridge.layout.total,)
    np.testing.assert_array_equal(device_params(bridge), init_params(TINY, seed=5))
    np.testing.assert_array_equal(bridge.params.numpy(), init_params(TINY, seed=5))
    assert not download(bridge.grads_buffer).any()
    views = bridge.named_parameters()
    assert views["head.weight"].shape == (4, 16)
    assert views["head.weight"].untyped_storage().data_ptr() == bridge.params.untyped_storage().data_ptr()


def test_bridge_state_dict_round_trip(bridge, rng):
    model = TorchINR(TINY)
    bridge.load_state_dict(model.state_dict())
    state = bridge.state_dict()
    assert list(state) == list(bridge.layout.names)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    np.testing.assert_array_equal(device_params(bridge), bridge.layout.pack(model.state_dict()))
    state["head.bias"] += 1  # clones: the bridge is not changed
    assert torch.equal(bridge.named_parameters()["head.bias"], model.head.bias.detach())
    # numpy arrays work too, and the torch Parameters still alias the flat vector after a load.
    params = bridge.torch_parameters()
    numpy_state = {k: v.numpy() for k, v in TorchINR(TINY).state_dict().items()}
    bridge.load_state_dict(numpy_state)
    np.testing.assert_array_equal(params[-1].detach().numpy(), numpy_state["head.bias"])
    with pytest.raises(NeumoursError, match="missing"):
        bridge.load_state_dict({})


@pytest.mark.parametrize("mode", ["default", "foreach", "fused"])
def test_bridge_adamw_updates_flat_in_place(bridge, mode):
    kwargs = {"foreach": True} if mode == "foreach" else {"fused": True} if mode == "fused" else {}
    params = bridge.torch_parameters()
    assert [tuple(p.shape) for p in params] == [bridge.layout.shape(n) for n in bridge.layout.names]
    assert all(p.is_leaf and p.grad is not None for p in params)
    set_random_grads(bridge)
    before = bridge.params.clone()
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, **kwargs)
    opt.step()
    # First AdamW step moves each weight by lr * sign(grad) (up to eps).
    torch.testing.assert_close(bridge.params - before, -1e-2 * torch.sign(bridge.grads), rtol=0, atol=1e-6)
    assert not np.array_equal(device_params(bridge), bridge.params.numpy())  # not pushed yet
    bridge.push_params()
    np.testing.assert_array_equal(device_params(bridge), bridge.params.numpy())


def test_bridge_muon_on_2d_weights(bridge):
    named = bridge.named_torch_parameters()
    matrices = [p for p in named.values() if p.ndim == 2]
    assert [n for n, p in named.items() if p.ndim == 2] == ["spatial.weight", "mlp.0.weight", "mlp.1.weight",
                                                            "head.weight"]  # fmt: skip
    set_random_grads(bridge, seed=1)
    before = bridge.params.clone()
    muon = torch.optim.Muon(matrices, lr=1e-2, weight_decay=0.0)
    adamw = torch.optim.AdamW([p for p in named.values() if p.ndim != 2], lr=1e-3)
    muon.step()
    changed = bridge.layout.views(bridge.params - before)
    for name, delta in changed.items():
        assert bool(delta.any()) == (delta.ndim == 2), name
    # Muon's orthogonalised update: singular values near 1 (bf16 Newton-Schulz), times lr.
    sv = torch.linalg.svdvals(changed["mlp.0.weight"] / -1e-2)
    assert 0.5 < sv.min() and sv.max() < 1.5
    adamw.step()
    assert all(bool(d.any()) for d in bridge.layout.views(bridge.params - before).values())
    bridge.push_params()
    np.testing.assert_array_equal(device_params(bridge), bridge.params.numpy())


def test_bridge_pull_and_zero_grads(bridge, rng):
    n = bridge.layout.total
    grads = rng.normal(size=n).astype(np.float32)
    bridge.grads_buffer.copy_from_numpy(grads)
    params = bridge.torch_parameters()
    grad_views = [p.grad for p in params]
    bridge.pull_grads()
    np.testing.assert_array_equal(bridge.grads.numpy(), grads)
    np.testing.assert_array_equal(bridge.named_grads()["head.bias"].numpy(), grads[-4:])
    assert all(p.grad is v for p, v in zip(params, grad_views))  # the same views, filled in place
    # clip_grad_norm_ scales the .grad views in place, i.e. the flat gradient vector.
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert float(bridge.grads.norm()) == pytest.approx(1.0, rel=1e-4)
    # optimizer.zero_grad() drops the .grad views; zero_grads() re-attaches them.
    torch.optim.AdamW(params).zero_grad()
    assert params[0].grad is None
    bridge.zero_grads()
    assert not bridge.grads.any() and not download(bridge.grads_buffer).any()
    assert all(p.grad is not None and p.grad.untyped_storage().data_ptr() == bridge.grads.untyped_storage().data_ptr()
               for p in params)  # fmt: skip
    # A Slang kernel accumulating into the device buffer (as the backward pass does) reaches torch.
    scatter_add(bridge.device, upload(bridge.device, grads), upload(bridge.device, np.arange(n), np.uint32),
                bridge.grads_buffer, n)
    bridge.pull_grads()
    np.testing.assert_array_equal(params[0].grad.numpy().reshape(-1), grads[: params[0].numel()])
    np.testing.assert_array_equal(bridge.grads.numpy(), grads)


@pytest.mark.gpu
def test_bridge_cuda_is_zero_copy(cuda_device, rng):
    layout = ParamLayout(TINY)
    bridge = TorchBridge(cuda_device, layout, init_params(TINY, seed=2))
    assert bridge.zero_copy and bridge.params.is_cuda and bridge.grads.is_cuda
    np.testing.assert_array_equal(bridge.params.cpu().numpy(), init_params(TINY, seed=2))
    # A Slang kernel's writes to the grads buffer are what torch's .grad views read.
    n = layout.total
    grads = rng.normal(size=n).astype(np.float32)
    params = bridge.torch_parameters()
    bridge.zero_grads()
    scatter_add(cuda_device, upload(cuda_device, grads), upload(cuda_device, np.arange(n), np.uint32),
                bridge.grads_buffer, n)
    bridge.pull_grads()
    np.testing.assert_allclose(bridge.grads.cpu().numpy(), grads, rtol=1e-6, atol=1e-6)
    # Optimiser steps on the Parameters write the device buffer itself.
    torch.optim.Muon([p for p in params if p.ndim == 2], lr=1e-2).step()
    torch.optim.AdamW([p for p in params if p.ndim != 2], lr=1e-2).step()
    bridge.push_params()
    np.testing.assert_array_equal(device_params(bridge), bridge.params.cpu().numpy())
    assert not np.array_equal(device_params(bridge), init_params(TINY, seed=2))
    bridge.zero_grads()
    assert not download(bridge.grads_buffer).any()


def test_apply_gradients_pulls_clips_steps_and_pushes(bridge):
    """The one optimiser step of training and refinement: the kernels' gradient buffer clipped to the norm,
    stepped, and the weights back in the kernels' buffer; the norm before clipping returned."""
    from neumours.train.optim import apply_gradients

    grads = np.random.default_rng(3).normal(size=bridge.layout.total).astype(np.float32)
    bridge.grads_buffer.copy_from_numpy(grads)  # as the Slang backward leaves them
    params = bridge.torch_parameters()
    before = bridge.params.clone()
    norm = apply_gradients(bridge, [torch.optim.SGD(params, lr=0.5)], clip_norm=1.0)
    assert float(norm) == pytest.approx(float(np.linalg.norm(grads.astype(np.float64))), rel=1e-5)
    np.testing.assert_allclose((before - bridge.params).numpy(), 0.5 * grads / np.linalg.norm(grads),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(device_params(bridge), bridge.params.numpy())


def test_snapshot_and_restore_bit_for_bit(bridge):
    """The viewer's undo: a snapshot written back in place (Parameters keep aliasing it) and pushed."""
    before = bridge.snapshot()
    params = bridge.torch_parameters()
    set_random_grads(bridge)
    torch.optim.AdamW(params, lr=1e-2).step()
    bridge.push_params()
    assert not torch.equal(bridge.params, before)
    bridge.restore(before)
    assert torch.equal(bridge.params, before) and before.data_ptr() != bridge.params.data_ptr()
    np.testing.assert_array_equal(device_params(bridge), before.numpy())
    assert params[0].untyped_storage().data_ptr() == bridge.params.untyped_storage().data_ptr()
