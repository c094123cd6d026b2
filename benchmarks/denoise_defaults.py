"""How the defaults of ``neumours.infer.denoise`` were chosen, and its speed on 240 x 240 x 155.

No trained network existed when the defaults were set, so the predictions are
ground-truth phantom labels corrupted the way the paper's Fig. 7(b) shows an
INR's raw output: stray specks of tumour in the brain (1-33 voxels, mostly
edema), a few larger false blobs (~100-900 voxels), background pockets inside
the tumour, and small islands of the wrong class inside it. Cases: the
validation part of ``split_cases`` (0.1, seed 0) of a 40-case phantom set at
the BraTS shape; two noise levels; every case scored with Dice of NCR, ED, ET,
TC, WT. The grid search keeps the best mean Dice; ties (equal means) go to
the smallest ``min_component_mm3``, because single-tumour phantoms cannot
penalise deleting a true satellite lesion, which real multifocal gliomas have.
(Two earlier runs took "the smallest ``min_component_mm3`` within 0.002 / 0.0005
of the best" and picked 100 / 500 mm^3, which keep some of the 100-900 voxel
false blobs: ED -0.001 to -0.003; the rule was narrowed to exact ties after
seeing that, so the threshold is tuned to this noise model's blob sizes.)

    python benchmarks/denoise_defaults.py [--json denoise_defaults.json] [--cases 40]

Result (2026-11-24, 4 validation cases x 2 noise levels, mean Dice NCR/ED/ET/TC/WT):
raw 0.920/0.963/0.935/0.936/0.961 (mean 0.943); chosen min_component_mm3=1000,
min_class_island_mm3=50, fill_holes="3d": 0.998/0.997/0.998/0.999/0.998 (mean 0.9982,
tied with 2000, 5000 and largest-only; island size 200: 0.9980; axial holes:
0.9979; no island step: lower). Time at that setting: median 0.18 s per
heavy-noise 240 x 240 x 155 volume on the 2-core development machine; 0.30 s on
the H100 host's CPU (benchmarks/segment_latency.py). The noise model is ours, so
these Dice values say which setting wins, not how much a real INR gains.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from neumours.data import split_cases  # noqa: E402
from neumours.data.phantom import make_case  # noqa: E402
from neumours.eval.metrics import REGION_NAMES, dice  # noqa: E402
from neumours.infer.denoise import DenoiseParams, denoise  # noqa: E402
from neumours.regions import REGIONS  # noqa: E402

LEVELS = {  # per 240 x 240 x 155 volume
    "light": {"specks": 500, "blobs": 1, "holes": 20, "flips": 50},
    "heavy": {"specks": 3000, "blobs": 3, "holes": 80, "flips": 200},
}
SPECK_RADII = (0.0, 1.0, 1.5, 2.0)  # balls of 1, 7, 19, 33 voxels
SPECK_P = (0.5, 0.25, 0.15, 0.1)


def _ball(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return np.stack(np.nonzero((g ** 2).sum(0) <= radius ** 2 + 1e-9), -1) - r


def _stamp(out: np.ndarray, centres: np.ndarray, radii: np.ndarray, values: np.ndarray, within=None) -> None:
    for c, r, v in zip(centres, radii, values):
        pts = c + _ball(float(r))
        pts = pts[np.all((pts >= 0) & (pts < out.shape), axis=1)]
        idx = tuple(pts.T)
        if within is not None:
            keep = within[idx]
            idx = tuple(p[keep] for p in idx)
        out[idx] = v


def corrupt(label: np.ndarray, brain: np.ndarray, level: dict, rng: np.random.Generator) -> np.ndarray:
    """Ground truth made to look like raw INR output (see the module docstring)."""
    out = label.copy()
    scale = label.size / (240 * 240 * 155)
    brain_pts = np.argwhere(brain & (label == 0))
    wt = label > 0
    wt_pts = np.argwhere(wt)
    n = int(round(level["specks"] * scale))
    centres = brain_pts[rng.integers(0, len(brain_pts), n)]
    radii = rng.choice(SPECK_RADII, n, p=SPECK_P)
    _stamp(out, centres, radii, rng.choice([1, 2, 3], n, p=[0.15, 0.6, 0.25]))
    n = level["blobs"]
    _stamp(out, brain_pts[rng.integers(0, len(brain_pts), n)], rng.uniform(3, 6, n), np.full(n, 2))
    n = int(round(level["holes"] * scale))
    _stamp(out, wt_pts[rng.integers(0, len(wt_pts), n)], rng.choice(SPECK_RADII, n, p=SPECK_P), np.zeros(n, int),
           within=wt)
    n = int(round(level["flips"] * scale))
    centres = wt_pts[rng.integers(0, len(wt_pts), n)]
    wrong = (label[tuple(centres.T)] - 1 + rng.integers(1, 3, n)) % 3 + 1
    _stamp(out, centres, rng.choice(SPECK_RADII[:3], n, p=[0.5, 0.3, 0.2]), wrong, within=wt)
    return out


def scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {r: dice(np.isin(pred, REGIONS[r]), np.isin(gt, REGIONS[r])) for r in REGION_NAMES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=40, help="phantom set size (validation = 10%%)")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--json", default="denoise_defaults.json")
    args = parser.parse_args(argv)

    ids = [f"Phantom-{i:05d}-000" for i in range(args.cases)]
    _, val = split_cases(ids, 0.1, 0)
    samples = []
    for cid in val:
        case = make_case(tuple(args.shape), seed=0, index=int(cid.split("-")[1]))
        brain = case.images.any(0)
        for k, (name, level) in enumerate(LEVELS.items()):
            rng = np.random.default_rng([int(cid.split("-")[1]), k])
            samples.append((cid, name, case.label, corrupt(case.label, brain, level, rng)))
    print(f"{len(val)} validation case(s) {val}, {len(samples)} corrupted volumes")

    grid = {
        "min_component_mm3": [0.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 1e9],
        "min_class_island_mm3": [0.0, 10.0, 50.0, 200.0],
        "fill_holes": ["none", "3d", "axial"],
    }
    raw = np.mean([list(scores(p, g).values()) for _, _, g, p in samples], axis=0)
    rows, results = [], []
    for values in itertools.product(*grid.values()):
        params = DenoiseParams(**dict(zip(grid, values)))
        per = np.array([list(scores(denoise(p, params), g).values()) for _, _, g, p in samples])
        mean = per.mean(axis=0)
        results.append({"params": dict(zip(grid, values)), "dice": dict(zip(REGION_NAMES, mean.tolist())),
                        "mean": float(mean.mean())})
    best = max(r["mean"] for r in results)
    near = [r for r in results if r["mean"] == best]
    chosen = min(near, key=lambda r: (r["params"]["min_component_mm3"], -r["mean"]))
    for r in sorted(results, key=lambda r: -r["mean"])[:12] + [chosen]:
        rows.append({**{k: v for k, v in r["params"].items()}, **{k: f"{v:.4f}" for k, v in r["dice"].items()},
                     "mean": f"{r['mean']:.4f}"})
    print("raw (no denoising): " + ", ".join(f"{r} {v:.4f}" for r, v in zip(REGION_NAMES, raw)) +
          f", mean {raw.mean():.4f}")
    print_table(rows, list(grid) + list(REGION_NAMES) + ["mean"])
    print(f"chosen: {chosen['params']} (mean Dice {chosen['mean']:.4f}, best {best:.4f})")

    # Speed on the heavy volumes at the chosen setting.
    params = DenoiseParams(**chosen["params"])
    heavy = [p for _, name, _, p in samples if name == "heavy"]
    times = []
    for p in heavy:
        denoise(p, params)
        t0 = time.perf_counter()
        for _ in range(5):
            denoise(p, params)
        times.append((time.perf_counter() - t0) / 5)
    print(f"denoise time per {tuple(args.shape)} volume (heavy noise): median {np.median(times) * 1e3:.0f} ms, "
          f"max {max(times) * 1e3:.0f} ms")
    write_json(args.json, {"validation": val, "raw": dict(zip(REGION_NAMES, raw.tolist())), "results": results,
                           "chosen": chosen, "time_s": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
