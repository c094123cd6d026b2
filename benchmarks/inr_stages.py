"""Per-stage timing of the Slang INR on the GPU, each stage beside its torch equivalent.

Stages on a chunk of points: patch gather (grid_inputs), the spatial head (Fourier
features made in the kernel), a 256 x 256 hidden layer for every tile shape, and the
cost of one kernel dispatch. Used to find where inr_throughput's time goes.

    python benchmarks/inr_stages.py [--points 1048576] [--json stages.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402
from inr_throughput import TILE_VARIANTS, make_volume  # noqa: E402

from neumours.device import describe, empty_buffer, get_device, upload, zeros_buffer  # noqa: E402
from neumours.kernels.accumulate import scatter_add  # noqa: E402
from neumours.kernels.epilogue import Bias, Epilogue  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.kernels.gemm import Fourier, Strided, gemm  # noqa: E402
from neumours.model.inputs import CaseVolumes, grid_inputs  # noqa: E402
from neumours.model.reference import fourier_features_torch  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1 << 20)
    parser.add_argument("--json", default="inr_stages.json")
    parser.add_argument("--single", default="", help="run one stage once (for ncu) and exit: hidden|spatial|gather")
    parser.add_argument("--tiles", nargs="*", default=list(TILE_VARIANTS), help="tile variants to time")
    add_device_argument(parser, note="its torch peers need torch with CUDA")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    cfg, n = INRConfig.paper(), args.points
    rng = np.random.default_rng(0)

    def sync():
        device.wait_for_idle()
        torch.cuda.synchronize()

    x_np = np.maximum(rng.normal(size=(n, 256)), 0).astype(np.float32)
    w_np = (rng.normal(size=(256, 256)) / 16).astype(np.float32)
    b_np = rng.normal(size=256).astype(np.float32)
    x, w, b, y = upload(device, x_np), upload(device, w_np), upload(device, b_np), empty_buffer(device, n * 256)
    coords_np = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    ws_np = (rng.normal(size=(128, cfg.fourier_dim)) / 20).astype(np.float32)
    coords, ws = upload(device, coords_np), upload(device, ws_np)

    def hidden(tiles=None):
        return lambda: gemm(device, Strided(x, 256, 1), Strided(w, 256, 1), Strided(y, 256, 1), n, 256, 256,
                            Epilogue(bias=Bias(b), relu=True), tiles=tiles)

    def spatial(tiles=None):
        return lambda: gemm(device, Fourier(coords, cfg.num_freqs), Strided(ws, cfg.fourier_dim, 1),
                            Strided(y, 256, 1), n, 128, cfg.fourier_dim, Epilogue(bias=Bias(b), relu=True),
                            tiles=tiles)

    shape = (240, 240, 155)
    vols = CaseVolumes.upload(device, [make_volume(shape)])
    g_coords, g_patches = empty_buffer(device, n * 3), empty_buffer(device, n * cfg.patch_dim)

    def gather():
        grid_inputs(cfg, vols, 0, shape, 0, n, g_coords, g_patches)

    if args.single:
        {"hidden": hidden(), "spatial": spatial(), "gather": gather}[args.single]()
        sync()
        return 0

    rows, results = [], {"device": describe(device), "points": n}

    def record(stage: str, impl: str, fn, flop: float) -> None:
        t = time_it(fn, sync, 10)
        results[f"{stage} {impl}"] = t
        rows.append({"stage": stage, "impl": impl, "ms": f"{t['median_s'] * 1e3:.2f}",
                     "TFLOP/s": f"{flop / t['median_s'] / 1e12:.1f}"})

    flop_hidden = 2 * n * 256 * 256
    xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x_np, w_np, b_np))
    record("hidden 256x256", "torch addmm+relu", lambda: torch.relu(torch.addmm(bt, xt, wt.T)), flop_hidden)
    for name in args.tiles:
        record("hidden 256x256", f"slang {name}", hidden(TILE_VARIANTS[name]), flop_hidden)
    flop_spatial = 2 * n * 128 * cfg.fourier_dim
    ct, wst = torch.from_numpy(coords_np).cuda(), torch.from_numpy(ws_np).cuda()
    record("spatial head", "torch fourier+addmm",
           lambda: torch.relu(torch.addmm(bt[:128], fourier_features_torch(ct, cfg.num_freqs), wst.T)), flop_spatial)
    for name in args.tiles:
        record("spatial head", f"slang {name}", spatial(TILE_VARIANTS[name]), flop_spatial)
    t = time_it(gather, sync, 10)
    results["gather slang"] = t
    rows.append({"stage": "patch gather", "impl": "slang grid_inputs", "ms": f"{t['median_s'] * 1e3:.2f}",
                 "TFLOP/s": f"{n * (108 + 3) * 4 / t['median_s'] / 1e9:.0f} GB/s written"})

    tiny = zeros_buffer(device, 1)
    tiny_t = torch.zeros(1, device="cuda")
    one = upload(device, np.zeros(1, np.uint32), np.uint32)
    def dispatches():
        for _ in range(100):
            scatter_add(device, tiny, one, tiny, 1)

    t = time_it(dispatches, sync, 5)
    results["dispatch x100"] = t
    rows.append({"stage": "one dispatch", "impl": "slang (mean of 100)", "ms": f"{t['median_s'] * 10:.3f}"})

    # Do dispatches return before the GPU is done? Host time of 20 hidden-layer
    # products issued back to back, against the time until they have finished.
    run_hidden = hidden()
    sync()
    start = time.perf_counter()
    for _ in range(20):
        run_hidden()
    issued = time.perf_counter() - start
    sync()
    done = time.perf_counter() - start
    results["20 hidden products: issue / finish s"] = (issued, done)
    rows.append({"stage": "20 hidden products", "impl": "host issue / GPU finish",
                 "ms": f"{issued * 1e3:.1f} / {done * 1e3:.1f}"})
    t = time_it(lambda: [tiny_t.add_(1.0) for _ in range(100)], sync, 5)
    results["torch op x100"] = t
    rows.append({"stage": "one dispatch", "impl": "torch add_ (mean of 100)", "ms": f"{t['median_s'] * 10:.3f}"})
    write_json(args.json, results)
    print(f"device: {results['device']}, {n} points")
    print_table(rows, ["stage", "impl", "ms", "TFLOP/s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
