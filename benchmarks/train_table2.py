"""The paper's training experiment on synthetic data: the default network trained with AdamW
and with Muon (Table I settings), then Dice per class at the best checkpoint on the training
and validation cases (a Table II analogue), wall time, steps/s, best step, and curves.

    python benchmarks/train_table2.py --out DIR [--cases 40] [--shape 160 160 112] [--steps 10000]
                                      [--runs adamw:bf16 muon:bf16 adamw:fp32]

Each run is OPTIMIZER:PRECISION; the same seed everywhere, so adamw:bf16 against adamw:fp32
is the check that bf16 training reaches fp32's validation Dice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.data import list_cases, load_case, normalise, split_cases  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.model.checkpoint import load_checkpoint  # noqa: E402
from neumours.model.inputs import CaseVolumes  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.curves import compare_runs, read_metrics  # noqa: E402
from neumours.train.trainer import CLASS_KEYS, train  # noqa: E402
from neumours.infer.cache import VolumeCache  # noqa: E402
from neumours.train.validate import dice_per_class  # noqa: E402


def split_dice(device, checkpoint, refs, precision: str = "auto") -> np.ndarray:
    """Mean over cases of hard Dice per class (bg, NCR, ED, ET) with the checkpoint's weights."""
    state, config, _ = load_checkpoint(checkpoint)
    inr = INR(dataclasses.replace(config, precision=precision), device)
    inr.load_state_dict(state)
    scores = []
    for ref in refs:
        case = load_case(ref)
        vols = CaseVolumes.upload(device, [normalise(case.images)])
        scores.append(dice_per_class(VolumeCache(inr, vols).labels(), case.label))
    return np.mean(scores, axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 112])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--train-eval-cases", type=int, default=8, help="training cases scored at the end")
    parser.add_argument("--runs", nargs="+", default=["adamw:bf16", "muon:bf16"],
                        help="OPTIMIZER:PRECISION per run (adamw|muon : bf16|fp32)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    data = args.out / "data"
    if not data.exists():
        write_dataset(data, args.cases, shape=tuple(args.shape), seed=0, progress=False)
    refs = list_cases(data)
    config = preset("paper")
    train_refs, val_refs = split_cases(refs, config.schedule.val_fraction, config.schedule.seed)
    results = {"device": describe(device), "cases": len(refs), "train": len(train_refs), "val": len(val_refs),
               "shape": args.shape, "steps": args.steps, "runs": {}}
    rows = []
    for run in args.runs:
        optimizer, precision = run.split(":")
        name = f"{optimizer}_{precision}"
        run_config = dataclasses.replace(
            config, optimizer=dataclasses.replace(config.optimizer, name=optimizer),
            network=dataclasses.replace(config.network, precision=precision),
            schedule=dataclasses.replace(config.schedule, steps=args.steps,
                                         val_every=min(config.schedule.val_every, args.steps)))
        summary = train(data, args.out / name, run_config, device, progress=False)
        metrics = read_metrics(args.out / name)
        val = metrics["val_dice_mean"]
        best_step = int(metrics["step"][np.nanargmax(val)])
        best = args.out / name / "best.safetensors"
        train_scores = split_dice(device, best, train_refs[: args.train_eval_cases], precision)
        val_scores = split_dice(device, best, val_refs, precision)
        results["runs"][name] = {"time_s": summary["time_s"], "steps_per_s": args.steps / summary["time_s"],
                                 "best_step": best_step, "train_dice": train_scores.tolist(),
                                 "val_dice": val_scores.tolist(), "final_loss": float(metrics["loss"][-1])}
        for split, scores in (("train", train_scores), ("val", val_scores)):
            row = {"run": name, "split": split, "best step": best_step,
                   "steps/s": f"{args.steps / summary['time_s']:.1f}", "wall s": f"{summary['time_s']:.0f}"}
            row.update({k: f"{s:.3f}" for k, s in zip(CLASS_KEYS, scores)})
            row["mean"] = f"{scores.mean():.3f}"
            rows.append(row)
    compare_runs([args.out / f"{r.split(':')[0]}_{r.split(':')[1]}" for r in args.runs], args.out / "comparison.png")
    write_json(args.out / "table2.json", results)
    print(f"device: {results['device']}; {len(train_refs)} train / {len(val_refs)} val phantom cases "
          f"{'x'.join(map(str, args.shape))}; {args.steps} steps; Dice at the best checkpoint")
    print_table(rows, ["run", "split", "bg", "NCR", "ED", "ET", "mean", "best step", "steps/s", "wall s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
