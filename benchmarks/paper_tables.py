"""The paper's Tables II-V on the phantom family, one command (GPU; ``--smoke`` runs on the CPU device).

Trains the INR on the hard pre-operative family (Table I settings, bf16 on CUDA) once per
run OPTIMIZER:AUGMENT (AdamW / Muon, augmentation off / on), then writes:

* Table II analogue: per class, hard Dice and mean cross-entropy on training cases (whole
  volumes, the best checkpoint) per run;
* Table III analogue: the pre-operative validation split (held out by the trainer's own
  split), INR raw and denoised, Dice and HD95 of WT / TC / ET, mean +- sd, n;
* Table IV analogue: a held-out post-operative family (another seed, never trained on), same columns;
* Table V analogue: parameters, inference time per case (segment + denoise, after a warm-up
  case), training wall time and steps/s, hardware.

    python benchmarks/paper_tables.py --out DIR [--cases 40] [--post-cases 12] [--shape 96 96 64]
                                      [--steps 2000] [--runs adamw:off adamw:on muon:off muon:on]
    python benchmarks/paper_tables.py --out DIR --smoke     # CPU device, tiny network, seconds

Outputs in DIR: ``tables.md`` (the four tables), ``table2.csv`` .. ``table5.csv``,
``results.json``, the datasets (``pre/``, ``post/``; reused when present) and one run folder per run.
Augmentation "on" is :meth:`AugmentConfig.default_on`; "off" is the paper's Table I run exactly.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402
from common import markdown_table as _markdown, mean_sd as _pm  # noqa: E402

from neumours.atomic import atomic_write_text  # noqa: E402
from neumours.conventions import CLASS_KEYS, NUM_CLASSES  # noqa: E402
from neumours.data import list_cases, load_case, split_cases  # noqa: E402
from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.eval.metrics import RegionMetric  # noqa: E402
from neumours.infer.segment import Segmenter  # noqa: E402
from neumours.model.params import ParamLayout  # noqa: E402
from neumours.train.augment import AugmentConfig  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.trainer import CHECKPOINT_BEST, train  # noqa: E402
from neumours.train.validate import dice_per_class  # noqa: E402

REGIONS = ("WT", "TC", "ET")
VAL_FRACTION = 0.2  # 8 of 40 cases: enough for a standard deviation


def make_data(out: Path, args) -> tuple[Path, Path]:
    pre, post = out / "pre", out / "post"
    if not pre.exists():
        write_dataset(pre, args.cases, shape=tuple(args.shape), seed=args.seed, progress=False,
                      difficulty=args.difficulty, kind="pre")
    if not post.exists():  # another seed: no case shares a draw with the training family
        write_dataset(post, args.post_cases, shape=tuple(args.shape), seed=args.seed + 1000, progress=False,
                      difficulty=args.difficulty, kind="post")
    return pre, post


def run_config(args, optimizer: str, augment: bool):
    config = preset("tiny" if args.smoke else "paper")
    return dataclasses.replace(
        config, optimizer=dataclasses.replace(config.optimizer, name=optimizer),
        augment=AugmentConfig.default_on() if augment else AugmentConfig(),
        schedule=dataclasses.replace(config.schedule, steps=args.steps, seed=args.seed, val_fraction=VAL_FRACTION,
                                     val_every=min(args.val_every, args.steps)))


def train_scores(segmenter: Segmenter, refs) -> tuple[np.ndarray, np.ndarray]:
    """Mean over cases of hard Dice and of cross-entropy (-log p of the true class), per class."""
    dices, ces = [], []
    for ref in refs:
        case = load_case(ref)
        result = segmenter(case, probs=True)
        p = np.clip(result.probs, 1e-12, 1.0)
        ce = [float(-np.log(p[k][case.label == k]).mean()) if np.any(case.label == k) else np.nan
              for k in range(NUM_CLASSES)]
        dices.append(dice_per_class(result.labels, case.label))
        ces.append(ce)
    ces = np.array(ces, np.float64)
    present = np.isfinite(ces)
    mean_ce = np.where(present.any(axis=0), np.where(present, ces, 0).sum(0) / np.maximum(present.sum(0), 1), np.nan)
    return np.mean(dices, axis=0), mean_ce  # CE NaN: the class is in none of the cases


def held_out_scores(segmenter: Segmenter, refs) -> tuple[RegionMetric, list[float]]:
    """Raw and denoised region scores of every case, and the seconds per case (first case: warm-up)."""
    metric, seconds = RegionMetric(REGIONS), []
    cases = [load_case(r) for r in refs]
    segmenter(cases[0], denoise=True)  # kernels compiled, buffers sized
    for case in cases:
        start = time.perf_counter()
        result = segmenter(case, denoise=True)  # labels downloaded: the device work is done
        seconds.append(time.perf_counter() - start)
        spacing = tuple(float(s) for s in case.spacing)
        metric(result.raw_labels, case.label, spacing, case_id=case.case_id, variant="raw")
        metric(result.labels, case.label, spacing, case_id=case.case_id, variant="denoised")
    return metric, seconds


def _csv(rows: list[dict], columns: list[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cases", type=int, default=40, help="pre-operative cases (train + validation)")
    parser.add_argument("--post-cases", type=int, default=12, help="held-out post-operative cases")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="phantom shape")
    parser.add_argument("--difficulty", default="hard", help="phantom difficulty of both families")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps per run")
    parser.add_argument("--val-every", type=int, default=500, help="steps between validations")
    parser.add_argument("--train-eval-cases", type=int, default=6, help="training cases scored for Table II")
    parser.add_argument("--runs", nargs="+", default=["adamw:off", "adamw:on", "muon:off", "muon:on"],
                        help="OPTIMIZER:AUGMENT per run (adamw|muon : off|on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, split, weights and sampling")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU device, tiny network, 24 x 24 x 20 cases, a few steps (a test of the script)")
    add_device_argument(parser, note="--smoke runs on the CPU device")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases, args.post_cases, args.shape = min(args.cases, 5), min(args.post_cases, 2), [24, 24, 20]
        args.steps, args.train_eval_cases = min(args.steps, 4), min(args.train_eval_cases, 1)
    device = get_device("cpu" if args.smoke else args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pre, post = make_data(args.out, args)
    data_s = time.perf_counter() - start
    train_refs, val_refs = split_cases(list_cases(pre), VAL_FRACTION, args.seed)
    post_refs = list_cases(post)
    hardware = describe(device)
    t2, t3, t4, t5 = [], [], [], []
    results = {"hardware": hardware, "args": vars(args), "data_s": data_s, "train": len(train_refs),
               "val": len(val_refs), "post": len(post_refs), "runs": {}}
    for run in args.runs:
        optimizer, augment = run.split(":")
        if optimizer not in ("adamw", "muon") or augment not in ("off", "on"):
            parser.error(f"--runs: {run!r} is not OPTIMIZER:AUGMENT (adamw|muon : off|on)")
        name = f"{optimizer}_aug-{augment}"
        config = run_config(args, optimizer, augment == "on")
        summary = train(pre, args.out / name, config, device, progress=False, plot=not args.smoke)
        segmenter = Segmenter(args.out / name / CHECKPOINT_BEST, device)
        dice, ce = train_scores(segmenter, train_refs[:args.train_eval_cases])
        for k, key in enumerate(CLASS_KEYS):
            t2.append({"run": name, "class": key, "train_dice": f"{dice[k]:.3f}", "train_ce": f"{ce[k]:.4f}"})
        per_run = {"summary": summary, "train_dice": dice.tolist(), "train_ce": ce.tolist()}
        for table, refs, split in ((t3, val_refs, "pre-op validation"), (t4, post_refs, "post-op held out")):
            metric, seconds = held_out_scores(segmenter, refs)
            for variant in ("raw", "denoised"):
                stats = metric.aggregate(variant)
                row = {"run": name, "split": split, "variant": variant, "n": stats["dice_WT"]["n"]}
                for region in REGIONS:
                    row[f"dice_{region}"] = _pm(stats[f"dice_{region}"])
                row["hd95_WT"] = _pm(stats["hd95_WT"])
                table.append(row)
                per_run[f"{split}/{variant}"] = stats
            per_run[f"{split}/seconds"] = seconds
        seconds = per_run["pre-op validation/seconds"] + per_run["post-op held out/seconds"]
        t5.append({"run": name, "parameters": ParamLayout(config.network).total,
                   "precision": segmenter.inr.precision, "inference_s_per_case": f"{np.median(seconds):.3f}",
                   "case_shape": "x".join(map(str, args.shape)), "train_steps": summary["steps"],
                   "train_s": f"{summary['time_s']:.1f}", "steps_per_s": f"{summary['steps'] / summary['time_s']:.1f}",
                   "best_val_dice_mean": f"{summary['best_val_dice_mean']:.3f}", "hardware": hardware})
        results["runs"][name] = per_run
    columns = {
        "table2": (t2, ["run", "class", "train_dice", "train_ce"]),
        "table3": (t3, ["run", "split", "variant", "n", "dice_WT", "dice_TC", "dice_ET", "hd95_WT"]),
        "table4": (t4, ["run", "split", "variant", "n", "dice_WT", "dice_TC", "dice_ET", "hd95_WT"]),
        "table5": (t5, ["run", "parameters", "precision", "inference_s_per_case", "case_shape", "train_steps",
                        "train_s", "steps_per_s", "best_val_dice_mean", "hardware"]),
    }
    titles = {"table2": "Table II analogue: training cases, per class (best checkpoint, whole volumes)",
              "table3": "Table III analogue: pre-operative validation split (mean ± sd over cases)",
              "table4": "Table IV analogue: held-out post-operative family (never trained on)",
              "table5": "Table V analogue: size, inference time per case (median), training time, hardware"}
    text = [f"# Paper tables on the phantom family ({args.difficulty}, {' x '.join(map(str, args.shape))})", "",
            f"`python benchmarks/paper_tables.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
            f"{hardware}: {len(train_refs)} training / {len(val_refs)} validation pre-operative cases, "
            f"{len(post_refs)} post-operative cases, {args.steps} steps per run.", ""]
    for key, (rows, cols) in columns.items():
        atomic_write_text(args.out / f"{key}.csv", _csv(rows, cols))
        text += [f"## {titles[key]}", "", _markdown(rows, cols), ""]
        print(titles[key])
        print_table(rows, cols)
    atomic_write_text(args.out / "tables.md", "\n".join(text))
    write_json(args.out / "results.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
