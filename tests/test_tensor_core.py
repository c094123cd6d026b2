"""The bf16 tensor-core path: weight packing (CPU device), configuration, and the GPU checks at full size.

The tensor-core product itself (slang/tensor_core_kernels.slang) is CUDA only;
its tests are marked ``gpu``. The packing kernel and the precision plumbing run
on the CPU device like every other kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neumours.device import download, empty_buffer, upload
from neumours.errors import NeumoursError
from neumours.kernels.bf16 import pack_bf16, pack_table, padded
from neumours.model.config import INRConfig
from neumours.model.inr import INR, resolve_precision


def bf16_bits_reference(x: np.ndarray) -> np.ndarray:
    """torch's float32 -> bfloat16 rounding (nearest, ties to even), as uint16 bits."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16).numpy() \
        .view(np.uint16)


def test_pack_bf16_matches_torch_rounding_and_pads_rows(cpu_device, rng):
    a = rng.normal(size=(5, 13)).astype(np.float32) * 10.0 ** rng.integers(-3, 4, size=(5, 13))
    a[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    a[1, 0] = np.float32(1.0) + np.float32(2.0**-8)          # exactly halfway: ties to even (down)
    a[1, 1] = np.float32(1.0) + np.float32(3 * 2.0**-8)      # halfway: ties to even (up)
    b = rng.normal(size=(3, 8)).astype(np.float32)
    source = np.concatenate([np.zeros(7, np.float32), a.reshape(-1), b.reshape(-1)])
    entries = [(7, 5, 13, 0), (7 + a.size, 3, 8, 5 * padded(13))]
    table, pairs = pack_table(cpu_device, entries)
    packed = upload(cpu_device, np.full(pairs, 0xDEADBEEF, np.uint32), np.uint32)   # poisoned
    pack_bf16(cpu_device, upload(cpu_device, source), table, 2, packed, pairs)
    bits = download(packed, (pairs,), np.uint32).view(np.uint16)
    got_a = bits[: 5 * 16].reshape(5, 16)
    np.testing.assert_array_equal(got_a[:, :13], bf16_bits_reference(a))
    assert not got_a[:, 13:].any()  # zero padding
    np.testing.assert_array_equal(bits[80:80 + 24].reshape(3, 8), bf16_bits_reference(b))


def test_pack_table_checks(cpu_device):
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_table(cpu_device, [(0, 2, 3, 4)])
    with pytest.raises(ValueError, match="packed"):
        table, pairs = pack_table(cpu_device, [(0, 2, 3, 0)])
        pack_bf16(cpu_device, upload(cpu_device, np.zeros(6, np.float32)), table, 1,
                  empty_buffer(cpu_device, 1, np.uint32), pairs)


def test_precision_resolution_and_config(cpu_device):
    assert resolve_precision("auto", cpu_device) == "fp32"
    assert resolve_precision("fp32", cpu_device) == "fp32"
    with pytest.raises(NeumoursError, match="bf16 needs a CUDA device"):
        INR(dataclasses.replace(INRConfig.tiny(), precision="bf16"), cpu_device)
    with pytest.raises(ValueError, match="precision"):
        INRConfig(precision="fp16")
    # Precision is not architecture: configs that differ only there hold the same weights.
    assert INRConfig(precision="bf16").architecture() == INRConfig(precision="fp32").architecture()
    assert INRConfig.from_dict(INRConfig(precision="bf16").to_dict()).precision == "bf16"


def test_checkpoint_runs_at_any_precision(tmp_path, cpu_device):
    from neumours.model.checkpoint import load_checkpoint, save_checkpoint

    config = dataclasses.replace(INRConfig.tiny(), precision="fp32")
    path = save_checkpoint(tmp_path / "inr.safetensors", INR(config, cpu_device).state_dict(), config)
    _, stored, _ = load_checkpoint(path, expected_config=dataclasses.replace(config, precision="bf16"))
    assert stored.precision == "auto" and stored.architecture() == config.architecture()


# -- GPU: the tensor-core product and the bf16 INR at full size ---------------------------------------------

def _bf16(x: np.ndarray) -> np.ndarray:
    """float64 values of x rounded to bf16."""
    return torch.from_numpy(np.asarray(x, np.float32)).to(torch.bfloat16).double().numpy()


def _bf16_buffer(device, x: np.ndarray):
    """x (any shape, even size) uploaded as bf16 pairs; returns (buffer, its float64 values)."""
    bits = bf16_bits_reference(np.asarray(x, np.float32).reshape(-1))
    if bits.size % 2:
        bits = np.concatenate([bits, np.zeros(1, np.uint16)])
    return upload(device, bits.view(np.uint32), np.uint32), _bf16(x)


def _operand(device, rng, source, layout, rows, k, ld=None, offset=0):
    """A random operand and its dense float64 value (rows, k) as the kernel sees it (bf16-rounded)."""
    from neumours.kernels import tensor_gemm as tg
    from neumours.model.reference import fourier_features_np

    if source == tg.FOURIER:
        points = rows if layout == tg.K_CONTIGUOUS else k
        coords = rng.uniform(-1, 1, (points, 3)).astype(np.float32)
        feats = _bf16(fourier_features_np(coords, (k if layout == tg.K_CONTIGUOUS else rows) // 6))
        dense = feats if layout == tg.K_CONTIGUOUS else feats.T
        return tg.Operand(upload(device, coords), source, layout), dense
    major, minor = (rows, k) if layout == tg.K_CONTIGUOUS else (k, rows)
    ld = ld or minor
    mem = np.zeros(offset + major * ld, np.float32)
    values = rng.normal(size=(major, minor)).astype(np.float32)
    for r in range(major):
        mem[offset + r * ld: offset + r * ld + minor] = values[r]
    if source == tg.BF16:
        buffer, rounded = _bf16_buffer(device, mem)
        used = rounded[offset:offset + major * ld].reshape(major, ld)[:, :minor]
    else:
        buffer, used = upload(device, mem), _bf16(values)
    dense = used if layout == tg.K_CONTIGUOUS else used.T
    return tg.Operand(buffer, source, layout, ld=ld, offset=offset), dense


def _gemm_cases():
    from neumours.kernels import tensor_gemm as tg

    B, F, Fo, K, R = tg.BF16, tg.F32, tg.FOURIER, tg.K_CONTIGUOUS, tg.ROWS_CONTIGUOUS
    # (name, m, n, k, A (source, layout, ld, offset), B (...), epilogue, options)
    return [
        ("hidden forward", 1000, 256, 256, (B, K, 256, 0), (B, K, 256, 0), tg.STORE, {"bf16": True, "bias": True}),
        ("fourier head", 777, 128, 387, (Fo, K, 0, 0), (B, K, 392, 0), tg.STORE, {"bf16": True, "bias": True}),
        ("patch head", 513, 128, 108, (F, K, 108, 0), (B, K, 112, 0), tg.STORE, {"bf16": True, "bias": True}),
        ("logits", 1000, 4, 256, (B, K, 256, 0), (B, K, 256, 0), tg.STORE, {"bias": True}),
        ("relu grad from logits", 700, 256, 4, (F, K, 4, 0), (B, R, 256, 0), tg.RELU_GRAD, {"bf16": True}),
        ("relu grad hidden", 700, 256, 256, (B, K, 256, 0), (B, R, 256, 0), tg.RELU_GRAD, {"bf16": True}),
        ("weight grad hidden", 256, 256, 3000, (B, R, 256, 0), (B, R, 256, 0), tg.ACCUMULATE, {"splits": 4}),
        ("weight grad head + bias", 4, 256, 3000, (F, R, 4, 0), (B, R, 256, 0), tg.ACCUMULATE,
         {"ones": True, "splits": 3}),
        ("weight grad fourier", 128, 387, 2000, (B, R, 256, 0), (Fo, R, 0, 0), tg.ACCUMULATE, {"splits": 2}),
        ("weight grad patches", 128, 108, 2000, (B, R, 256, 128), (F, R, 108, 0), tg.ACCUMULATE, {}),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("case", _gemm_cases(), ids=lambda c: c[0])
def test_gpu_tensor_gemm_matches_float64(cuda_device, rng, case):
    """Every operand source, layout and epilogue the bf16 INR uses, on ragged sizes, against float64
    products of the same bf16-rounded operands; outputs poisoned (or, accumulated, pre-filled) first."""
    from neumours.kernels import tensor_gemm as tg
    from neumours.kernels.epilogue import Bias, ColumnSums, Epilogue, Mask

    name, m, n, k, a_spec, b_spec, epilogue, options = case
    a, dense_a = _operand(cuda_device, rng, a_spec[0], a_spec[1], m, k, a_spec[2], a_spec[3])
    b, dense_b = _operand(cuda_device, rng, b_spec[0], b_spec[1], n, k, b_spec[2], b_spec[3])
    acc = dense_a @ dense_b.T
    kwargs, splits = {"op": epilogue}, options.get("splits", 1)
    bias = rng.normal(size=n).astype(np.float32)
    if options.get("bias"):
        kwargs["bias"] = Bias(upload(cuda_device, np.concatenate([np.zeros(5, np.float32), bias])), 5)
        acc = acc + bias
        kwargs["relu"] = n > 4
        if n > 4:
            acc = np.maximum(acc, 0.0)
    if epilogue == tg.RELU_GRAD:
        h = rng.normal(size=(m, n)).astype(np.float32)
        mask_buffer, h_used = _bf16_buffer(cuda_device, h)
        kwargs["mask"] = Mask(mask_buffer, n, 0)
        acc = np.where(h_used > 0, acc, 0.0)
        sums = upload(cuda_device, np.zeros(n + 10, np.float32))
        kwargs["column_sums"] = ColumnSums(sums, 100, 0, 110)   # columns >= 100 land 10 further on
    if epilogue == tg.ACCUMULATE:
        before = rng.normal(size=m * n + 8 + m).astype(np.float32)
        out = upload(cuda_device, before)
        if options.get("ones"):
            kwargs["bias_grad"] = m * n + 8
        tg.tensor_gemm(cuda_device, a, b, out, m, n, k, Epilogue(**kwargs), out_ld=n, splits=splits)
        got = download(out, before.shape).astype(np.float64) - before
        ref = np.zeros_like(got)
        ref[: m * n] = acc.reshape(-1)
        if options.get("ones"):
            ref[m * n + 8:] = dense_a.sum(axis=1)
        tol = 2e-5
    else:
        bf16_out = options.get("bf16", False)
        offset = 8 if bf16_out else 0
        if bf16_out:
            out = upload(cuda_device, np.full((offset + m * n) // 2, 0x7FC07FC0, np.uint32), np.uint32)  # NaNs
        else:
            out = upload(cuda_device, np.full(m * n, np.nan, np.float32))
        tg.tensor_gemm(cuda_device, a, b, out, m, n, k, Epilogue(**kwargs), out_offset=offset, out_ld=n,
                       out_bf16=bf16_out, splits=splits)
        if bf16_out:
            bits = download(out, ((offset + m * n) // 2,), np.uint32).view(np.uint16)[offset:]
            got = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).double().numpy().reshape(m, n)
            tol = 6e-3   # bf16 output rounding
        else:
            got = download(out, (m, n)).astype(np.float64)
            tol = 2e-5
        ref = acc
        if epilogue == tg.RELU_GRAD:
            col = download(sums, (n + 10,)).astype(np.float64)
            expected = np.zeros(n + 10)
            s = acc.sum(axis=0)
            expected[:100], expected[110:n + 10] = s[:100], s[100:]
            assert np.linalg.norm(col - expected) <= 2e-5 * np.linalg.norm(expected), name
    assert np.isfinite(got).all(), f"{name}: unwritten outputs"
    err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err <= tol, (name, err)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.gpu
def test_gpu_bf16_inr_matches_float64_torch(cuda_device, rng):
    """The paper network at bf16 on 65,536 fresh random points: logits within 1e-2 of float64 torch
    (relative norm), every logit written (outputs poisoned first), and weight gradients within 2e-2
    or as close as torch's own bf16 autocast gets (1.5x its error)."""
    from neumours.model.reference import TorchINR

    config, n = INRConfig(precision="bf16"), 65_536
    inr = INR(config, cuda_device, seed=int(rng.integers(1 << 30)))
    assert inr.precision == "bf16"
    coords = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    patches = rng.normal(size=(n, config.patch_dim)).astype(np.float32)
    grad_logits = (rng.normal(size=(n, config.num_classes)) / n).astype(np.float32)
    c, p = upload(cuda_device, coords), upload(cuda_device, patches)
    logits = upload(cuda_device, np.full(n * config.num_classes, np.nan, np.float32))
    ws = inr.workspace(n)
    inr.bridge.zero_grads()
    inr.forward_device(c, p, n, logits, ws)
    inr.backward_device(c, p, n, upload(cuda_device, grad_logits), ws)
    inr.bridge.pull_grads()
    got_logits = download(logits, (n, config.num_classes))
    assert np.isfinite(got_logits).all()
    model = TorchINR(config).double().cuda()
    model.load_state_dict({k: v.double().cuda() for k, v in inr.state_dict().items()})
    out = model(torch.from_numpy(coords).double().cuda(),
                torch.from_numpy(patches).double().cuda().view(n, config.num_modalities, 3, 3, 3))
    out.backward(torch.from_numpy(grad_logits).double().cuda())
    assert _rel(got_logits, out.detach().cpu().numpy()) <= 1e-2
    reference = {name: q.grad.cpu().numpy() for name, q in model.named_parameters()}
    # What bf16 itself costs here: torch's autocast on the same points. Summed over 65,536
    # points, gradients are dominated by ReLU masks that flip where bf16 moves a near-zero
    # pre-activation across 0 (a fraction f of terms wrong gives an error near sqrt(f)).
    peer = TorchINR(config).cuda()
    peer.load_state_dict({k: v.cuda() for k, v in inr.state_dict().items()})
    with torch.autocast("cuda", dtype=torch.bfloat16):
        peer_out = peer(torch.from_numpy(coords).cuda(), torch.from_numpy(patches).cuda().view(n, 4, 3, 3, 3))
    peer_out.float().backward(torch.from_numpy(grad_logits).cuda())
    grads = inr.layout.views(inr.bridge.grads.detach().cpu().numpy())
    errors = {name: (_rel(grads[name], ref), _rel(dict(peer.named_parameters())[name].grad.double().cpu().numpy(), ref))
              for name, ref in reference.items()}
    print("bf16 gradient errors vs float64 (slang, torch autocast):",
          {k: f"{a:.1e}/{b:.1e}" for k, (a, b) in errors.items()})
    for name, (ours, torch_bf16) in errors.items():
        assert ours <= max(2e-2, 1.5 * torch_bf16), (name, ours, torch_bf16)


@pytest.mark.gpu
def test_gpu_bf16_cache_labels_agree_with_fp32(cuda_device):
    """Volume caching of the paper network at bf16 and fp32 (same weights): labels agree wherever the
    float64 arg-max has a margin over bf16's error, and almost everywhere."""
    from neumours.data import normalise
    from neumours.data.phantom import make_case
    from neumours.infer.cache import VolumeCache
    from neumours.model.inputs import CaseVolumes

    images = normalise(make_case((64, 64, 48), seed=2).images)
    fp32 = INR(INRConfig(precision="fp32"), cuda_device, seed=5)
    bf16 = INR(INRConfig(precision="bf16"), cuda_device, seed=5)
    vols = CaseVolumes.upload(cuda_device, [images])
    a = VolumeCache(fp32, vols, keep_probs=True)
    b = VolumeCache(bf16, vols)
    probs = a.probabilities()
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 0.05
    same = a.labels() == b.labels()
    assert same[clear].all()
    print(f"bf16 vs fp32 labels: {same.mean():.5f} agree ({clear.mean():.3f} of voxels have a clear margin)")
    assert same.mean() >= 0.99
