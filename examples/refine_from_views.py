"""Correct an INR from four rendered views of one case (render-loss refinement).

    python examples/refine_from_views.py [--out DIR] [--train-steps 60] [--steps 20] [--path cache|direct]
                                         [--device auto]

An early checkpoint of the tiny network is the model to correct; four views of
one case's ground truth play the clinician's correction. Prints Dice per
region on that case before and after, and the mean Dice on the other cases
before and after (the anchor keeps them from drifting).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from neumours.data import list_cases, load_case, normalise
from neumours.data.phantom import write_dataset
from neumours.device import get_device
from neumours.eval.metrics import region_scores
from neumours.infer.cache import VolumeCache
from neumours.model.checkpoint import load_checkpoint
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.render import RenderSettings
from neumours.refine.loop import Anchor, refine
from neumours.render.views import orbit_cameras, render_label_views
from neumours.train.config import preset
from neumours.train.trainer import train


def dice(inr, vols, index, case) -> dict[str, float]:
    scores = region_scores(VolumeCache(inr, vols, case_index=index).labels(), case.label, case.spacing)
    return {k[5:]: round(v, 3) for k, v in scores.items() if k.startswith("dice_")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("refine-example"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 40, 32])
    parser.add_argument("--train-steps", type=int, default=60, help="an early checkpoint")
    parser.add_argument("--steps", type=int, default=20, help="refinement steps")
    parser.add_argument("--size", type=int, default=48, help="view size in pixels")
    parser.add_argument("--path", choices=("cache", "direct"), default="cache", help="gradient path (a) or (b)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = get_device(args.device)

    write_dataset(args.out / "data", args.cases, shape=tuple(args.shape), seed=5, progress=False, overwrite=True)
    config = preset("tiny")
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, steps=args.train_steps,
                                                                      val_every=args.train_steps))
    train(args.out / "data", args.out / "run", config, device, progress=False, plot=False)
    state, net, _ = load_checkpoint(args.out / "run" / "last.safetensors")
    inr = INR(net, device)
    inr.load_state_dict(state)

    cases = [load_case(r) for r in list_cases(args.out / "data")]
    target, others = cases[0], cases[1:]
    vols = CaseVolumes.upload(device, [normalise(target.images)])
    other_vols = CaseVolumes.upload(device, [normalise(c.images) for c in others])

    # The correction: the ground truth seen from four orbiting cameras.
    settings = RenderSettings()
    cameras = orbit_cameras(target.shape, target.spacing, 4, size=(args.size, args.size))
    images = render_label_views(device, target.label, target.spacing, cameras, settings)

    before = dice(inr, vols, 0, target)
    others_before = np.mean([dice(inr, other_vols, i, c)["WT"] for i, c in enumerate(others)])
    rows = refine(inr, vols, target.spacing, cameras, settings, images, steps=args.steps, lr=1e-2,
                  anchor=Anchor.sample(inr, other_vols, points=2048), path=args.path)
    after = dice(inr, vols, 0, target)
    others_after = np.mean([dice(inr, other_vols, i, c)["WT"] for i, c in enumerate(others)])
    seconds = np.median([r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]])
    print(f"path {args.path}: image loss {rows[0]['image_loss']:.4f} -> {rows[-1]['image_loss']:.4f} "
          f"in {args.steps} steps, {seconds:.3f} s per step")
    print(f"{target.case_id} Dice before: {before}")
    print(f"{target.case_id} Dice after:  {after}")
    print(f"other cases, mean WT Dice: {others_before:.3f} -> {others_after:.3f}")
    return {"before": before, "after": after, "others": (others_before, others_after), "rows": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
