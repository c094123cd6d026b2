"""INR throughput on the GPU: Slang kernels (fp32 FMA and bf16 tensor cores) against TorchINR
(fp32, bf16 autocast), same GPU, same run.

1. Inference over a full 240 x 240 x 155 grid (8.93 M points), patch gather included,
   in chunks along axis 0: the bf16 layer-by-layer products and the fused kernel (one launch
   for the whole network per chunk), against torch fp32, bf16 autocast and bf16 under
   ``torch.compile`` (the strongest torch peer; said if it cannot compile).
2. A training step's forward + backward on 16,384 points.
3. One hidden layer's product (points x 256 x 256) alone: the tensor-core kernel against
   cuBLAS bf16 (torch.matmul) on the same shape, in TFLOP/s.

Prints M points/s and the ratios to the torch peers; writes JSON.

    python benchmarks/inr_throughput.py [--json results.json] [--shape 240 240 155] [--tiles ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

from neumours.device import describe, empty_buffer, get_device, upload  # noqa: E402
from neumours.kernels import gemm as gemm_module  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inputs import CaseVolumes, grid_inputs  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.model.reference import TorchINR  # noqa: E402

TILE_VARIANTS = {
    "64x64/4x4/k16": gemm_module.Tiles(64, 64, 16, 4, 4),
    "128x64/8x4/k16": gemm_module.Tiles(128, 64, 16, 8, 4),
    "128x128/8x8/k8": gemm_module.Tiles(128, 128, 8, 8, 8),
    "128x128/8x8/k16": gemm_module.Tiles(128, 128, 16, 8, 8),
    "64x128/4x8/k16": gemm_module.Tiles(64, 128, 16, 4, 8),
}


def make_volume(shape, seed=0) -> np.ndarray:
    """A normalised-looking (4, X, Y, Z) volume: smooth structure plus noise, zero outside a brain ellipsoid."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = (x / 0.9) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 < 1
    vol = np.stack([np.sin(3 * x + c) * np.cos(2 * y - c) + 0.3 * z for c in range(4)])
    vol += rng.normal(scale=0.3, size=vol.shape).astype(np.float32)
    return (vol * inside).astype(np.float32)


def slang_inference(inr: INR, vols: CaseVolumes, shape, chunk: int, fused: bool = False):
    """The grid's logits chunk by chunk: the forward products (``fused`` False) or the fused kernel."""
    total = int(np.prod(shape))
    cfg = inr.config
    coords = empty_buffer(inr.device, chunk * 3)
    patches = empty_buffer(inr.device, chunk * cfg.patch_dim)
    logits = empty_buffer(inr.device, chunk * cfg.num_classes)
    if fused and inr.fused is None:
        raise ValueError("this INR has no fused kernel (precision bf16 on CUDA, a network it holds)")
    ws = None if fused else inr.workspace(chunk)

    def run():
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            grid_inputs(cfg, vols, 0, shape, start, count, coords, patches)
            if fused:
                inr.fused.forward(coords, patches, count, logits)
            else:
                inr.forward_device(coords, patches, count, logits, ws)

    return run


def torch_inference(model, volume: torch.Tensor, shape, slabs: int, bf16: bool):
    X, Y, Z = shape
    padded = torch.nn.functional.pad(volume, (1, 1, 1, 1, 1, 1))
    axes = [torch.linspace(-1, 1, s, device=volume.device) for s in shape]

    @torch.no_grad()
    def run():
        for x0 in range(0, X, slabs):
            x1 = min(X, x0 + slabs)
            sub = padded[:, x0:x1 + 2]
            patches = sub.unfold(1, 3, 1).unfold(2, 3, 1).unfold(3, 3, 1)  # (4, nx, Y, Z, 3, 3, 3)
            patches = patches.permute(1, 2, 3, 0, 4, 5, 6).reshape(-1, 4, 3, 3, 3)
            gx, gy, gz = torch.meshgrid(axes[0][x0:x1], axes[1], axes[2], indexing="ij")
            coords = torch.stack([gx, gy, gz], -1).reshape(-1, 3)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                model(coords, patches)

    return run


def layer_product(device, sync, m: int, results: dict) -> list:
    """C = relu(X W^T + b), X (m, 256), W (256, 256), bf16 in, bf16 out: TFLOP/s of ours and cuBLAS's."""
    from neumours.kernels.epilogue import Bias, Epilogue
    from neumours.kernels.tensor_gemm import BF16, K_CONTIGUOUS, Operand, tensor_gemm

    width = 256
    x = torch.randn(m, width, device="cuda").to(torch.bfloat16)
    w = torch.randn(width, width, device="cuda").to(torch.bfloat16)
    b = torch.randn(width, device="cuda")
    xb = upload(device, x.view(torch.int16).cpu().numpy().view(np.uint32), np.uint32)
    wb = upload(device, w.view(torch.int16).cpu().numpy().view(np.uint32), np.uint32)
    bb, out = upload(device, b.cpu().numpy()), empty_buffer(device, m * width // 2, np.uint32)
    flops = 2.0 * m * width * width

    def ours():
        tensor_gemm(device, Operand(xb, BF16, K_CONTIGUOUS, ld=width), Operand(wb, BF16, K_CONTIGUOUS, ld=width),
                    out, m, width, width, Epilogue(bias=Bias(bb), relu=True), out_ld=width, out_bf16=True)

    def cublas():
        torch.relu(torch.addmm(b.to(torch.bfloat16), x, w.t()))

    t_ours, t_cublas = time_it(ours, sync, 20), time_it(cublas, sync, 20)
    results["layer_product"] = {"m": m, "ours": t_ours, "cublas": t_cublas}
    rows = []
    for name, t in (("slang bf16 tensor_gemm", t_ours), ("cuBLAS bf16 (torch)", t_cublas)):
        rows.append({"task": f"layer {m}x256x256", "impl": name, "ms": f"{t['median_s'] * 1e3:.3f}",
                     "Mpts/s": f"{flops / t['median_s'] / 1e12:.0f} TFLOP/s",
                     "vs torch bf16": f"{t_cublas['median_s'] / t['median_s']:.2f}x"})
    return rows


def kernel_breakdown(fn, sync) -> list:
    """GPU time of every kernel one call of ``fn`` launches (CUPTI sees slangpy's launches too)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    kernels = [(e.name, e.device_time) for e in prof.events() if e.device_time > 0]
    total = sum(t for _, t in kernels)
    print(f"slang: {len(kernels)} kernels, {total:.0f} us of GPU time")
    for name, t in kernels:
        print(f"  {t:8.1f} us  {name[:60]}")
    return kernels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--chunk", type=int, default=1 << 20, help="points per inference chunk")
    parser.add_argument("--batch", type=int, default=16_384, help="training-step points")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="inr_throughput.json")
    parser.add_argument("--tiles", nargs="*", default=["128x128/8x8/k8"],
                        help=f"fp32 tile variants to time (any of {', '.join(TILE_VARIANTS)})")
    add_device_argument(parser, note="its torch peers need torch with CUDA")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    torch.manual_seed(0)
    cfg = INRConfig.paper()
    shape = tuple(args.shape)
    total = int(np.prod(shape))
    volume = make_volume(shape)
    inr = INR(dataclasses.replace(cfg, precision="fp32"), device=device, seed=0)
    inr_bf16 = INR(dataclasses.replace(cfg, precision="bf16"), device=device, seed=0)
    vols = CaseVolumes.upload(device, [volume])
    model = TorchINR(cfg).cuda()
    model.load_state_dict({k: v.cuda() for k, v in inr.state_dict().items()})

    def sync():
        device.wait_for_idle()
        torch.cuda.synchronize()

    rows, results = [], {"device": describe(device), "torch": torch.__version__, "python": platform.python_version(),
                         "shape": shape, "points": total, "batch": args.batch}

    # 1. Inference over the full grid.
    slabs = max(1, args.chunk // (shape[1] * shape[2]))
    t_fp32 = time_it(torch_inference(model, torch.from_numpy(volume).cuda(), shape, slabs, False), sync, args.repeats)
    t_bf16 = time_it(torch_inference(model, torch.from_numpy(volume).cuda(), shape, slabs, True), sync, args.repeats)
    inference = {"torch_fp32": t_fp32, "torch_bf16": t_bf16}
    try:
        compiled = torch.compile(model)
        inference["torch_bf16_compile"] = time_it(
            torch_inference(compiled, torch.from_numpy(volume).cuda(), shape, slabs, True), sync, args.repeats)
    except Exception as error:  # noqa: BLE001 (the peer is reported missing, with why)
        results["torch_compile_failed"] = f"{type(error).__name__}: {str(error)[:300]}"
        print(f"torch.compile peer skipped: {results['torch_compile_failed']}")
    for name in args.tiles:
        gemm_module.WIDE = TILE_VARIANTS[name]
        inference[f"slang {name}"] = time_it(slang_inference(inr, vols, shape, args.chunk), sync, args.repeats)
    inference["slang bf16"] = time_it(slang_inference(inr_bf16, vols, shape, args.chunk), sync, args.repeats)
    inference["slang bf16 fused"] = time_it(slang_inference(inr_bf16, vols, shape, args.chunk, fused=True), sync,
                                            args.repeats)
    for name, t in inference.items():
        mps = total / t["median_s"] / 1e6
        rows.append({"task": "inference 8.93M", "impl": name, "ms": f"{t['median_s'] * 1e3:.1f}", "Mpts/s": f"{mps:.1f}",
                     "vs torch fp32": f"{t_fp32['median_s'] / t['median_s']:.2f}x",
                     "vs torch bf16": f"{t_bf16['median_s'] / t['median_s']:.2f}x"})
    results["inference"] = inference
    best_tiles = min(args.tiles, key=lambda name: inference[f"slang {name}"]["median_s"])
    gemm_module.WIDE = TILE_VARIANTS[best_tiles]
    results["best_tiles"] = best_tiles

    # 2. Training step forward + backward on one batch.
    n = args.batch
    rng = np.random.default_rng(1)
    coords_np = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    patches_np = rng.normal(size=(n, 4, 3, 3, 3)).astype(np.float32)
    grad_np = rng.normal(size=(n, 4)).astype(np.float32) / n
    coords, patches, grad = upload(device, coords_np), upload(device, patches_np), upload(device, grad_np)
    logits = empty_buffer(device, n * 4)
    def slang_step_for(net):
        ws = net.workspace(n)

        def run():
            net.forward_device(coords, patches, n, logits, ws)
            net.backward_device(coords, patches, n, grad, ws)
        return run

    slang_step = slang_step_for(inr)

    c_t, p_t, g_t = (torch.from_numpy(a).cuda() for a in (coords_np, patches_np, grad_np))

    def torch_step(bf16):
        def run():
            model.zero_grad(set_to_none=False)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = model(c_t, p_t)
            out.float().backward(g_t)
        return run

    step = {"torch_fp32": time_it(torch_step(False), sync, 20), "torch_bf16": time_it(torch_step(True), sync, 20),
            f"slang {best_tiles}": time_it(slang_step, sync, 20),
            "slang bf16": time_it(slang_step_for(inr_bf16), sync, 20)}
    for name, t in step.items():
        rows.append({"task": "train fwd+bwd 16k", "impl": name, "ms": f"{t['median_s'] * 1e3:.2f}",
                     "Mpts/s": f"{n / t['median_s'] / 1e6:.1f}",
                     "vs torch fp32": f"{step['torch_fp32']['median_s'] / t['median_s']:.2f}x",
                     "vs torch bf16": f"{step['torch_bf16']['median_s'] / t['median_s']:.2f}x"})
    results["train_step"] = step
    results["train_step_kernels_us"] = kernel_breakdown(slang_step_for(inr_bf16), sync)
    one_chunk = (min(args.chunk, total) // (shape[1] * shape[2])) * shape[1] * shape[2]
    chunk_shape = (one_chunk // (shape[1] * shape[2]), shape[1], shape[2])
    results["inference_chunk_kernels_us"] = kernel_breakdown(slang_inference(inr_bf16, vols, chunk_shape, one_chunk),
                                                             sync)
    results["fused_inference_chunk_kernels_us"] = kernel_breakdown(
        slang_inference(inr_bf16, vols, chunk_shape, one_chunk, fused=True), sync)

    # 3. One hidden layer's product alone, bf16: our kernel vs cuBLAS, same shape and data.
    rows.extend(layer_product(device, sync, args.chunk, results))
    write_json(args.json, results)
    print(f"device: {results['device']}  torch {torch.__version__}")
    print_table(rows, ["task", "impl", "ms", "Mpts/s", "vs torch fp32", "vs torch bf16"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
