"""What the boundary loss (``[loss] boundary_weight``) does to HD95 and stray components (GPU).

Writes a training set and a test set (another seed) of one phantom family (``--family hard``, the
default, or ``randomised``; docs/phantom.md), trains the INR on the training set once per boundary
weight, 0 (the paper's loss, Table I) first and then each of ``--weights``, with the same seed, data,
split and points (the sampler's draws do not depend on the weight), and segments every test case
with the last checkpoint of each run (the same step count; the best-by-Dice checkpoint would
choose by another measure). Per weight and variant (raw arg-max, denoised): Dice and HD95 (mm) per
region, mean ± sd over the test cases (an infinite HD95, a region predicted where there is none
or missed entirely, is left out of the mean and counted), and the BraTS 2023 lesion-wise false
whole-tumour components per case (predicted components that match no ground-truth lesion;
raw: the speckle the loss is meant to remove). The scores are ``neumours.eval.metrics.RegionMetric``'s.

    python benchmarks/boundary_loss.py --out DIR [--family hard] [--steps 2000] [--cases 24]
        [--test-cases 12] [--shape 96 96 64] [--weights 0.01 0.1]
    python benchmarks/boundary_loss.py --out DIR --preset tiny --device cpu --steps 3 --cases 3 \\
        --test-cases 1 --shape 24 24 24 --weights 0.1 --workers 1      # a check of the script

Outputs in DIR: ``tables.md`` (markdown, also printed), ``results.json`` (aggregates, per-case
rows, training summaries), ``data/`` (reused when its ``synth.toml`` records the same arguments)
and ``runs/w<weight>/``. Writing the data and scoring run in ``--workers`` processes while the
next run trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import markdown_table, mean_sd, write_tables  # noqa: E402
from generalisation import write_one as write_randomised  # noqa: E402

from neumours.data import list_cases, load_case  # noqa: E402
from neumours.data.phantom import synth_record, write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.eval.metrics import RegionMetric  # noqa: E402
from neumours.infer.segment import Segmenter  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.trainer import CHECKPOINT_LAST, train  # noqa: E402

REGIONS = ("WT", "TC", "ET", "NCR")
VARIANTS = ("raw", "denoised")
FAMILIES = ("hard", "randomised")
VAL_FRACTION = 0.125  # 3 of 24 training cases
TEST_SEED_OFFSET = 1000


def write_data(folder: Path, n: int, kind: str, seed: int, shape: tuple[int, int, int], family: str) -> str:
    """Write one dataset of ``family`` unless its synth.toml already records these arguments (worker process)."""
    if family == "randomised":
        return write_randomised(folder, n, kind, seed, [], shape)
    record = synth_record(n, shape, seed, family, kind, None)
    if (folder / "synth.toml").is_file() and (folder / "synth.toml").read_text() == record:
        return "reused"
    write_dataset(folder, n, shape=shape, seed=seed, progress=False, difficulty=family, kind=kind, overwrite=True)
    return "written"


def score_case(pred: np.ndarray, gt: np.ndarray, spacing, case_id: str, variant: str) -> dict:
    """Dice, HD95 and lesion-wise scores of one prediction (worker process)."""
    return RegionMetric(REGIONS)(pred, gt, spacing, case_id=case_id, variant=variant)


def summarise(rows: list[dict], variant: str) -> dict:
    """RegionMetric's aggregate of one run's rows of ``variant``, with the false WT components per case."""
    metric = RegionMetric(REGIONS)
    metric.rows = [r for r in rows if r["variant"] == variant]
    out = metric.aggregate(variant)
    fp = np.array([r["lw_fp_WT"] for r in metric.rows], np.float64)
    out["lw_fp_WT"] = {"mean": float(fp.mean()) if len(fp) else float("nan"),
                       "sd": float(fp.std(ddof=1)) if len(fp) > 1 else 0.0, "n": len(fp)}
    return out


def run_config(args, weight: float):
    config = preset(args.preset)
    return dataclasses.replace(
        config, loss=dataclasses.replace(config.loss, boundary_weight=weight),
        schedule=dataclasses.replace(config.schedule, steps=args.steps, seed=args.seed, val_fraction=VAL_FRACTION,
                                     val_every=args.steps))


def _hd95(stats: dict) -> str:
    text = mean_sd(stats)
    return text + (f" ({stats['excluded']} inf)" if stats.get("excluded") else "")


def table_rows(runs: dict, variant: str) -> list[dict]:
    rows = []
    for name, run in runs.items():
        s = run["stats"][variant]
        row = {"boundary_weight": f"{run['weight']:g}", "n": s["dice_WT"]["n"] + s["dice_WT"]["excluded"]}
        row.update({f"Dice {r}": mean_sd(s[f"dice_{r}"]) for r in REGIONS})
        row.update({f"HD95 {r} (mm)": _hd95(s[f"hd95_{r}"]) for r in REGIONS})
        row["false WT comps/case"] = f"{s['lw_fp_WT']['mean']:.1f}"
        rows.append(row)
    return rows


def _submit(pool, fn, *args) -> Future:
    if pool is None:  # --workers 1: in this process
        future: Future = Future()
        future.set_result(fn(*args))
        return future
    return pool.submit(fn, *args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--family", choices=FAMILIES, default="hard", help="phantom family of training and test data")
    parser.add_argument("--kind", choices=("pre", "post"), default="pre", help="pre- or post-operative cases")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps per run")
    parser.add_argument("--cases", type=int, default=24, help="training cases (an eighth held out for validation)")
    parser.add_argument("--test-cases", type=int, default=12, help="test cases (another seed)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="phantom shape")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.1],
                        help="positive boundary weights to compare with 0 (each in (0, 10])")
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper", help="network and batch preset")
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, split, weights and sampling")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="processes that write data and score cases (1: in this process)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.cases < 2 or args.test_cases < 1 or args.workers < 1 or min(args.shape) < 16:
        parser.error("--steps, --test-cases and --workers must be >= 1, --cases >= 2, --shape sizes >= 16")
    if not all(0 < w <= 10 for w in args.weights):
        parser.error("--weights must each be in (0, 10] (0, the baseline, always runs)")
    args.out.mkdir(parents=True, exist_ok=True)
    pool = None if args.workers == 1 else ProcessPoolExecutor(
        args.workers, mp_context=multiprocessing.get_context("spawn"))  # spawn: no fork of a CUDA process
    try:
        return _run(args, tuple(args.shape), pool, argv)
    finally:
        if pool is not None:
            pool.shutdown()


def _run(args, shape, pool, argv) -> int:
    start = time.perf_counter()
    data = args.out / "data"
    jobs = [(data / "train", args.cases, args.seed), (data / "test", args.test_cases, args.seed + TEST_SEED_OFFSET)]
    made = [_submit(pool, write_data, folder, n, args.kind, seed, shape, args.family) for folder, n, seed in jobs]
    written = [f.result() for f in made]
    data_s = time.perf_counter() - start
    print(f"data: {written.count('written')} dataset(s) written, {written.count('reused')} reused, {data_s:.1f} s")
    tests = [load_case(r) for r in list_cases(data / "test")]
    device = get_device(args.device)
    hardware = describe(device)
    results: dict = {"hardware": hardware, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()},
                     "data_s": data_s, "runs": {}, "rows": []}
    pending: list[tuple[str, Future]] = []
    for weight in [0.0, *args.weights]:
        name = f"w{weight:g}"
        run_dir = args.out / "runs" / name
        t0 = time.perf_counter()
        summary = train(data / "train", run_dir, run_config(args, weight), device, progress=False, plot=False,
                        overwrite=True)
        summary["wall_s"] = time.perf_counter() - t0  # with loading the cases (and their distance maps)
        segmenter = Segmenter(run_dir / CHECKPOINT_LAST, device)
        for case in tests:
            result = segmenter(case, denoise=True)
            spacing = tuple(float(s) for s in case.spacing)
            for variant, labels in (("raw", result.raw_labels), ("denoised", result.labels)):
                pending.append((name, _submit(pool, score_case, labels, case.label, spacing, case.case_id, variant)))
        results["runs"][name] = {"weight": weight, "summary": {k: v for k, v in summary.items() if k != "failures"}}
        print(f"boundary_weight {weight:g}: {summary['steps']} steps in {summary['time_s']:.1f} s "
              f"({summary['steps'] / summary['time_s']:.1f} steps/s), validation Dice "
              f"{summary['best_val_dice_mean']:.3f}")
    for name, future in pending:
        results["rows"].append(dict(future.result(), run=name))
    for name, run in results["runs"].items():
        rows = [r for r in results["rows"] if r["run"] == name]
        run["stats"] = {variant: summarise(rows, variant) for variant in VARIANTS}
    columns = (["boundary_weight", "n"] + [f"Dice {r}" for r in REGIONS] + [f"HD95 {r} (mm)" for r in REGIONS]
               + ["false WT comps/case"])
    command = f"python benchmarks/boundary_loss.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    text = [f"# The boundary loss on the {args.family} {args.kind}-operative family ({' x '.join(map(str, shape))})",
            "", f"`{command}` on {hardware}, {time.strftime('%Y-%m-%d')}: {args.cases} training cases, "
            f"{args.steps} steps per run ({args.preset} preset, seed {args.seed}), {args.test_cases} test cases "
            "(another seed), the last checkpoint of each run. HD95 in mm, mean ± sd over the cases where it is "
            "finite (the count left out in brackets); false WT comps/case: BraTS 2023 lesion-wise false "
            "positive whole-tumour components per case.", ""]
    for variant in VARIANTS:
        text += [f"## {variant}", "", markdown_table(table_rows(results["runs"], variant), columns), ""]
    timing = [{"boundary_weight": f"{r['weight']:g}", "steps": r["summary"]["steps"],
               "train s": f"{r['summary']['time_s']:.1f}",
               "steps/s": f"{r['summary']['steps'] / r['summary']['time_s']:.1f}",
               "with loading s": f"{r['summary']['wall_s']:.1f}",
               "val Dice": f"{r['summary']['best_val_dice_mean']:.3f}"} for r in results["runs"].values()]
    text += ["## Training", "", markdown_table(timing, list(timing[0])),
             "", "train s: the training loop (the first run's includes compiling the kernels); with loading: "
             "the whole `train` call, loading the cases and, with a boundary weight, their signed distance maps.",
             ""]
    write_tables(args.out, text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
