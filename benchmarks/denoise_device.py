"""Denoising on the device (``denoise_on_device``) against scipy on the host, on realistic noisy predictions.

Both start where the Segmenter has the arg-max labels, in a uint32 device
buffer, and end with the denoised uint8 labels on the host:

* **device**: ``neumours.infer.denoise_device.denoise_on_device`` (the kernels
  of ``slang/denoise_kernels.slang``; only the final labels, packed to bytes,
  cross to the host);
* **scipy**: download the raw labels (``VolumeCache.labels``: uint32 -> uint8),
  then ``neumours.infer.denoise.denoise`` on the host, the peer and the reference.

Predictions: phantom cases at the BraTS shape with ground truth corrupted as in
``benchmarks/denoise_defaults.py`` (its "heavy" level, and a heavier one), the
default parameters and two others. Every run checks the two agree voxel for
voxel. A second, synchronised device run splits the device time by step. The
last column counts the voxels whose label depends on the tie rule of the
nearest-voxel step (scipy on the volume mirrored along every axis picks another
of several equidistant voxels, with another label): a lower bound of how often
exact tie equality matters.

    python benchmarks/denoise_device.py [--cases 2] [--repeats 10] [--json denoise_device.json]
    python benchmarks/denoise_device.py --device cpu --shape 48 48 40 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402
from denoise_defaults import LEVELS, corrupt  # noqa: E402

from neumours.data.phantom import make_case  # noqa: E402
from neumours.device import ScratchBuffers, describe, download, get_device, upload  # noqa: E402
from neumours.infer.cache import StageTimer  # noqa: E402
from neumours.infer.denoise import DEFAULTS, DenoiseParams, denoise  # noqa: E402
from neumours.infer.denoise_device import denoise_on_device  # noqa: E402

HEAVIER = {"specks": 20_000, "blobs": 6, "holes": 800, "flips": 2_000}
PARAMS = {"defaults": DEFAULTS, "axial/6": DenoiseParams(0, 50, "axial", 6),
          "18/islands 200": DenoiseParams(100, 200, "3d", 18)}
SPACING = (1.0, 1.0, 1.0)  # the phantoms' voxels
STEPS = ("components", "islands", "holes", "nearest", "download")


def tie_dependent(labels: np.ndarray, params: DenoiseParams, spacing) -> tuple[int, int]:
    """(voxels whose output label changes when the nearest-voxel ties break the other way, changed voxels)."""
    out = denoise(labels, params, spacing=spacing)
    mirrored = denoise(labels[::-1, ::-1, ::-1], params, spacing=spacing)[::-1, ::-1, ::-1]
    return int((out != mirrored).sum()), int((out != labels).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser, default="cuda")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="phantom shape")
    parser.add_argument("--cases", type=int, default=2, help="phantom cases (each at two noise levels)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--json", default="denoise_device.json", help="where to write the numbers")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    scratch = ScratchBuffers(device)
    shape = tuple(args.shape)

    def sync():
        device.wait_for_idle()

    rows, results = [], []
    for index in range(args.cases):
        case = make_case(shape, seed=0, index=index)
        brain = case.images.any(0)
        for level_name, level in (("heavy", LEVELS["heavy"]), ("heavier", HEAVIER)):
            noisy = corrupt(case.label, brain, level, np.random.default_rng([index, 7]))
            raw = upload(device, noisy, np.uint32)  # where the VolumeCache leaves its labels
            for name, params in PARAMS.items():
                got = denoise_on_device(device, raw, shape, params, SPACING, scratch=scratch)
                expected = denoise(noisy, params, spacing=SPACING)
                wrong = int((got != expected).sum())

                def on_device():
                    denoise_on_device(device, raw, shape, params, SPACING, scratch=scratch)

                def on_host():
                    denoise(download(raw, shape, np.uint32).astype(np.uint8), params, spacing=SPACING)

                def scipy_only():
                    denoise(noisy, params, spacing=SPACING)

                dev_t = time_it(on_device, sync, args.repeats)
                host_t = time_it(on_host, sync, max(2, args.repeats // 2), warmup=1)
                scipy_t = time_it(scipy_only, sync, max(2, args.repeats // 2), warmup=1)
                timer = StageTimer(device)
                for _ in range(args.repeats):
                    denoise_on_device(device, raw, shape, params, SPACING, scratch=scratch, timer=timer)
                steps = {s: timer.seconds.get(s, 0.0) / args.repeats for s in STEPS}
                ties, changed = tie_dependent(noisy, params, SPACING)
                ratio = host_t["median_s"] / dev_t["median_s"]
                results.append({"case": case.case_id, "noise": level_name, "params": name,
                                "tumour_voxels": int((noisy > 0).sum()), "changed_voxels": changed,
                                "tie_dependent_voxels": ties, "mismatches": wrong, "device": dev_t,
                                "host_download_and_scipy": host_t, "scipy": scipy_t, "device_steps_s": steps,
                                "ratio": ratio})
                rows.append({"case": case.case_id, "noise": level_name, "params": name,
                             "device ms": f"{dev_t['median_s'] * 1e3:.2f}",
                             **{s: f"{v * 1e3:.2f}" for s, v in steps.items()},
                             "dl+scipy ms": f"{host_t['median_s'] * 1e3:.1f}",
                             "scipy ms": f"{scipy_t['median_s'] * 1e3:.1f}", "ratio": f"{ratio:.1f}x",
                             "changed": changed, "tie-dep.": ties, "mismatch": wrong})
                print(f"{case.case_id} {level_name} {name}: device {dev_t['median_s'] * 1e3:.2f} ms, "
                      f"download + scipy {host_t['median_s'] * 1e3:.1f} ms ({ratio:.1f}x), mismatches {wrong}",
                      flush=True)
    print(f"\n{describe(device)}, {shape}, medians of {args.repeats} (step columns: a synchronised run, ms)")
    print_table(rows, ["case", "noise", "params", "device ms", *STEPS, "dl+scipy ms", "scipy ms", "ratio",
                       "changed", "tie-dep.", "mismatch"])
    ratios = [r["ratio"] for r in results]
    print(f"device vs download + scipy: median {np.median(ratios):.1f}x (min {min(ratios):.1f}x); "
          f"mismatching voxels in all runs: {sum(r['mismatches'] for r in results)}")
    write_json(args.json, {"device": describe(device), "shape": shape, "runs": results,
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    return 1 if any(r["mismatches"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
