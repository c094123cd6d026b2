"""Where refinement paths (a) and (b) differ: the INR between voxel centres.

Path (a) renders the trilinear mix of softmax(INR) at the 8 voxels around a
sample; path (b) renders softmax(INR) at the sample itself, where the network
reads an interpolated patch and an off-grid coordinate it was never trained on.
This script measures the gap on a phantom case: at N random off-grid points,
the mean |p_b - p_a| and how often the arg-max class differs, split by whether
the point is inside the head (any modality nonzero at the nearest voxel) and by
whether the 8 voxels agree on their class (inside a region) or not (at a border).

    python benchmarks/offgrid_field.py --checkpoint CKPT [--shape 240 240 155] [--points 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.data import normalise  # noqa: E402
from neumours.data.phantom import make_case  # noqa: E402
from neumours.device import describe, download, empty_buffer, get_device, upload  # noqa: E402
from neumours.infer.cache import VolumeCache  # noqa: E402
from neumours.model.checkpoint import load_checkpoint  # noqa: E402
from neumours.model.inputs import CaseVolumes, gather_inputs  # noqa: E402
from neumours.model.inr import INR  # noqa: E402


def softmax_at(inr: INR, vols: CaseVolumes, positions: np.ndarray) -> np.ndarray:
    """softmax(INR) at (N, 3) voxel positions of case 0: (N, K)."""
    cfg, dev, n = inr.config, inr.device, len(positions)
    coords, patches = empty_buffer(dev, 3 * n), empty_buffer(dev, cfg.patch_dim * n)
    gather_inputs(cfg, vols, upload(dev, positions), upload(dev, np.zeros(n, np.uint32), np.uint32), n, coords, patches)
    logits = empty_buffer(dev, cfg.num_classes * n)
    inr.forward_device(coords, patches, n, logits)
    z = download(logits, (n, cfg.num_classes)).astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--points", type=int, default=1 << 20)
    parser.add_argument("--json", default="offgrid_field.json")
    add_device_argument(parser, default="cuda")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    state, config, _ = load_checkpoint(args.checkpoint)
    inr = INR(config, device)
    inr.load_state_dict(state)
    case = make_case(tuple(args.shape), seed=0)
    images = normalise(case.images)
    vols = CaseVolumes.upload(device, [images])
    grid = VolumeCache(inr, vols, keep_probs=True).probabilities().astype(np.float64)  # (K, X, Y, Z)

    rng = np.random.default_rng(0)
    dims = np.array(args.shape)
    positions = (rng.random((args.points, 3)) * (dims - 1)).astype(np.float32)
    direct = softmax_at(inr, vols, positions)
    mixed = np.stack([ndimage.map_coordinates(g, positions.T.astype(np.float64), order=1) for g in grid], 1)
    base = np.floor(positions).astype(int)
    corners = np.stack([grid.argmax(0)[tuple((base + np.array(o)).clip(0, dims - 1).T)]
                        for o in np.ndindex(2, 2, 2)], 1)
    border = (corners != corners[:, :1]).any(1)
    nearest = tuple(np.rint(positions).astype(int).T)
    head = (np.abs(case.images) > 0).any(0)[nearest]

    rows, out = [], {"device": describe(device), "checkpoint": args.checkpoint, "shape": args.shape,
                     "points": args.points, "groups": {}}
    groups = {"all": np.ones(len(positions), bool), "head, inside a region": head & ~border,
              "head, at a class border": head & border, "outside the head": ~head}
    for name, mask in groups.items():
        if not mask.any():
            continue
        gap = np.abs(direct[mask] - mixed[mask]).sum(1)
        flip = (direct[mask].argmax(1) != mixed[mask].argmax(1)).mean()
        stats = {"share": float(mask.mean()), "mean_L1_gap": float(gap.mean()), "p99_L1_gap": float(np.quantile(gap, 0.99)),
                 "argmax_differs": float(flip)}
        out["groups"][name] = stats
        rows.append({"points": name, "share": f"{stats['share']:.1%}", "mean |p_b - p_a|_1": f"{stats['mean_L1_gap']:.4f}",
                     "p99": f"{stats['p99_L1_gap']:.4f}", "arg-max differs": f"{stats['argmax_differs']:.3%}"})
    write_json(args.json, out)
    print(f"device: {out['device']}  checkpoint {args.checkpoint}  volume {tuple(args.shape)}, {args.points} off-grid points")
    print_table(rows, ["points", "share", "mean |p_b - p_a|_1", "p99", "arg-max differs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
