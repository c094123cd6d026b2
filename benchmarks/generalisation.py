"""Generalisation to what training never showed: leave-one-out over the randomised phantom family's factors (GPU).

For each RUN of ``--runs`` (a factor of the randomised family, ``docs/phantom.md``: contrast,
morphology, postop, acquisition; or ``none``) the script writes a training set of the randomised
family with that factor held at its canonical setting (``neumours synth --difficulty randomised
--fixed FACTOR``; ``none``: every factor randomised), a third of it post-operative, trains the INR
on it (Table I settings, ``--augment`` for the default augmentation), and tests it on one shared
test set of the fully randomised family (another seed), pre- and post-operative, in which the held
out factor varies as it never did in training. A held-out run next to the ``none`` run, on the
same test cases, is what not having seen that factor's variation costs. The training sets share
their seed, and the family's random streams are per factor, so a held-out run's cases differ from
the ``none`` run's only in that factor.

Per run, test kind and variant (raw or denoised; each plain, with TTA, and with TTA and probability
smoothing; TTA: the case and its left-right mirror averaged, ``neumours.infer.tta``; smoothing: a
Gaussian of ``--smooth-mm`` on the probabilities before the arg-max, ``neumours.infer.smooth``):
Dice per region (WT, TC, ET, NCR) mean ± sd over cases, BraTS 2023 lesion-wise Dice per region,
and the lesion-wise false whole-tumour components per case (predicted components that match no
ground-truth lesion).

    python benchmarks/generalisation.py --out DIR [--steps 3000] [--cases 24] [--test-cases 12]
        [--shape 96 96 64] [--runs contrast morphology postop acquisition none] [--augment]
    python benchmarks/generalisation.py --out DIR --preset tiny --device cpu --steps 4 --cases 4 \\
        --test-cases 2 --shape 32 32 32 --runs contrast none --workers 1     # a check of the script

Outputs in DIR: ``tables.md`` (markdown, also printed), ``results.json`` (aggregates, per-case rows,
training summaries), ``data/`` (reused when its ``synth.toml`` records the same arguments) and
``runs/<run>/``. Writing the data and scoring run in ``--workers``
processes while the next run trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, markdown_table, mean_sd, write_tables  # noqa: E402

from neumours.data import list_cases, load_case  # noqa: E402
from neumours.data.phantom import synth_record, write_dataset  # noqa: E402
from neumours.data.phantom_randomised_ranges import FACTORS, randomised_ranges  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.eval.lesionwise import lesion_scores  # noqa: E402
from neumours.eval.metrics import dice  # noqa: E402
from neumours.infer.segment import Segmenter  # noqa: E402
from neumours.regions import REGIONS as REGION_LABELS  # noqa: E402
from neumours.train.augment import AugmentConfig  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.trainer import CHECKPOINT_BEST, train  # noqa: E402

REGIONS = ("WT", "TC", "ET", "NCR")
VARIANTS = ("raw", "raw+tta", "raw+tta+smooth", "denoised", "denoised+tta", "denoised+tta+smooth")
KINDS = ("pre", "post")
RUNS = FACTORS + ("none",)
TTA_FLIPS = (0,)  # left-right
VAL_FRACTION = 0.125  # 3 of 24 training cases
TEST_SEED_OFFSET = 1000


def _fixed(run: str) -> list[str]:
    return [] if run == "none" else [run]


def dataset_jobs(root: Path, args) -> list[tuple]:
    """(folder, cases, kind, seed, fixed factors) of every dataset the runs need."""
    post = max(1, round(args.cases / 3)) if args.cases > 1 else 0
    jobs = []
    for run in args.runs:
        for kind, n in (("pre", args.cases - post), ("post", post)):
            if n > 0:
                jobs.append((root / f"train-{run}" / kind, n, kind, args.seed, _fixed(run)))
    for kind in KINDS:
        jobs.append((root / "test" / kind, args.test_cases, kind, args.seed + TEST_SEED_OFFSET, []))
    return jobs


def write_one(folder: Path, n: int, kind: str, seed: int, fixed: list[str], shape: tuple[int, int, int]) -> str:
    """Write one dataset unless its synth.toml already records these arguments (worker process)."""
    ranges = randomised_ranges(fixed=fixed)
    record = synth_record(n, shape, seed, "randomised", kind, ranges)
    if (folder / "synth.toml").is_file() and (folder / "synth.toml").read_text() == record:
        return "reused"
    if folder.is_dir():  # made with other arguments (this script's own folder): no stale case may stay
        shutil.rmtree(folder)
    write_dataset(folder, n, shape=shape, seed=seed, progress=False, difficulty="randomised", kind=kind,
                  ranges=ranges)
    return "written"


def score(pred: np.ndarray, gt: np.ndarray, spacing, case_id: str, kind: str, variant: str) -> dict:
    """Dice and lesion-wise scores of one prediction (worker process)."""
    row = {"case_id": case_id, "kind": kind, "variant": variant}
    for region in REGIONS:
        labels = list(REGION_LABELS[region])
        row[f"dice_{region}"] = dice(np.isin(pred, labels), np.isin(gt, labels))
    lw = lesion_scores(pred, gt, spacing, regions=REGIONS)
    row.update({k: v for k, v in lw.items() if not k.startswith("lw_hd95")})
    return row


class _Inline:
    """The executor interface, run in this process (``--workers 1``)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self) -> None:
        pass


def run_config(args, run_seed: int):
    config = preset(args.preset)
    return dataclasses.replace(
        config, augment=AugmentConfig.default_on() if args.augment else AugmentConfig(),
        schedule=dataclasses.replace(config.schedule, steps=args.steps, seed=run_seed, val_fraction=VAL_FRACTION,
                                     val_every=min(args.val_every, args.steps)))


def aggregate(rows: list[dict]) -> dict:
    """Mean and sd per column of ``rows`` (one run, kind and variant), and false WT components per case."""
    out = {"n": len(rows)}
    for key in [f"dice_{r}" for r in REGIONS] + [f"lw_dice_{r}" for r in REGIONS] + ["lw_fp_WT"]:
        values = np.array([row[key] for row in rows], np.float64)
        out[key] = {"mean": float(values.mean()) if len(values) else float("nan"),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def table_rows(stats: dict, kind: str) -> list[dict]:
    rows = []
    for run, per_kind in stats.items():
        for variant in VARIANTS:
            s = per_kind[kind][variant]
            row = {"held out": run, "variant": variant, "n": s["n"]}
            row.update({f"Dice {r}": mean_sd(s[f"dice_{r}"]) for r in REGIONS})
            row.update({f"LW Dice {r}": f"{s[f'lw_dice_{r}']['mean']:.3f}" for r in REGIONS})
            row["false WT comps/case"] = f"{s['lw_fp_WT']['mean']:.1f}"
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per run")
    parser.add_argument("--cases", type=int, default=24, help="training cases per run (a third post-operative)")
    parser.add_argument("--test-cases", type=int, default=12, help="test cases per kind (pre, post)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="phantom shape")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS,
                        help="factor held fixed in training per run; none: every factor randomised")
    parser.add_argument("--augment", action="store_true", help="train with AugmentConfig.default_on()")
    parser.add_argument("--smooth-mm", type=float, default=1.0, help="sigma of the probability smoothing, mm")
    parser.add_argument("--val-every", type=int, default=1000, help="steps between validations")
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper", help="network and batch preset")
    add_device_argument(parser, default="cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, split, weights and sampling")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="processes that write data and score cases (1: in this process)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.cases < 2 or args.test_cases < 1 or args.workers < 1 or min(args.shape) < 16:
        parser.error("--steps, --test-cases and --workers must be >= 1, --cases >= 2, --shape sizes >= 16")
    if not args.smooth_mm > 0:
        parser.error("--smooth-mm must be > 0")
    shape = tuple(args.shape)
    args.out.mkdir(parents=True, exist_ok=True)
    pool = _Inline() if args.workers == 1 else ProcessPoolExecutor(
        args.workers, mp_context=multiprocessing.get_context("spawn"))  # spawn: no fork of a CUDA process
    try:
        return _run(args, shape, pool, argv)
    finally:
        pool.shutdown()


def _run(args, shape, pool, argv) -> int:
    start = time.perf_counter()
    jobs = dataset_jobs(args.out / "data", args)
    made = [pool.submit(write_one, folder, n, kind, seed, fixed, shape) for folder, n, kind, seed, fixed in jobs]
    written = [f.result() for f in made]
    data_s = time.perf_counter() - start
    print(f"data: {written.count('written')} dataset(s) written, {written.count('reused')} reused, {data_s:.1f} s")
    tests = {kind: [load_case(r) for r in list_cases(args.out / "data" / "test" / kind)] for kind in KINDS}
    device = get_device(args.device)
    hardware = describe(device)
    results: dict = {"hardware": hardware, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()},
                     "data_s": data_s, "runs": {}, "rows": []}
    pending: list[tuple[str, Future]] = []
    for run in args.runs:
        run_dir = args.out / "runs" / run
        summary = train(args.out / "data" / f"train-{run}", run_dir, run_config(args, args.seed), device,
                        progress=False, plot=False, overwrite=True)
        checkpoint = run_dir / CHECKPOINT_BEST
        seconds = {"plain": [], "tta": [], "tta+smooth": []}
        for name, segmenter in (("plain", Segmenter(checkpoint, device)),
                                ("tta", Segmenter(checkpoint, device, tta_flips=TTA_FLIPS)),
                                ("tta+smooth", Segmenter(checkpoint, device, tta_flips=TTA_FLIPS,
                                                         smooth_mm=args.smooth_mm))):
            segmenter(tests["pre"][0])  # kernels compiled, buffers sized
            suffix = "" if name == "plain" else f"+{name}"
            for kind, cases in tests.items():
                for case in cases:
                    t0 = time.perf_counter()
                    result = segmenter(case, denoise=True)
                    seconds[name].append(time.perf_counter() - t0)
                    spacing = tuple(float(s) for s in case.spacing)
                    for variant, labels in (("raw", result.raw_labels), ("denoised", result.labels)):
                        pending.append((run, pool.submit(score, labels, case.label, spacing, case.case_id, kind,
                                                         variant + suffix)))
        results["runs"][run] = {"summary": {k: v for k, v in summary.items() if k != "failures"},
                                "seconds_per_case": {k: float(np.median(v)) for k, v in seconds.items()}}
        print(f"run {run}: {summary['steps']} steps in {summary['time_s']:.1f} s, best validation Dice "
              f"{summary['best_val_dice_mean']:.3f}")
    stats: dict = {}
    for run, future in pending:
        row = dict(future.result(), run=run)
        results["rows"].append(row)
    for run in args.runs:
        stats[run] = {kind: {variant: aggregate([r for r in results["rows"] if r["run"] == run and r["kind"] == kind
                                                 and r["variant"] == variant]) for variant in VARIANTS}
                      for kind in KINDS}
        results["runs"][run]["stats"] = stats[run]
    columns = (["held out", "variant", "n"] + [f"Dice {r}" for r in REGIONS] + [f"LW Dice {r}" for r in REGIONS]
               + ["false WT comps/case"])
    command = f"python benchmarks/generalisation.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    text = [f"# Generalisation to held-out factors (randomised family, {' x '.join(map(str, shape))})", "",
            f"`{command}` on {hardware}, {time.strftime('%Y-%m-%d')}: {args.cases} training cases per run "
            f"(a third post-operative), {args.steps} steps, {args.test_cases} + {args.test_cases} test cases of "
            "the fully randomised family (another seed). \"held out\": the factor fixed at its canonical setting "
            "in training (none: every factor randomised). TTA: the left-right flip averaged; smooth: "
            f"probabilities blurred by a Gaussian of {args.smooth_mm:g} mm before the arg-max. The first run's "
            "training time includes compiling the kernels.", ""]
    for kind, title in (("pre", "pre-operative test cases"), ("post", "post-operative test cases")):
        text += [f"## {title}", "", markdown_table(table_rows(stats, kind), columns), ""]
    timing = [{"run": run, "train steps": r["summary"]["steps"], "train s": f"{r['summary']['time_s']:.1f}",
               "best val Dice": f"{r['summary']['best_val_dice_mean']:.3f}",
               "s/case": f"{r['seconds_per_case']['plain']:.3f}", "s/case TTA": f"{r['seconds_per_case']['tta']:.3f}",
               "s/case TTA+smooth": f"{r['seconds_per_case']['tta+smooth']:.3f}"}
              for run, r in results["runs"].items()]
    text += ["## Training and inference", "", markdown_table(timing, list(timing[0])), ""]
    write_tables(args.out, text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
