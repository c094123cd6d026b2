"""Trials per hour of `neumours sweep` on one GPU: N trials sharing the GPU (``--trials-per-gpu N``)
against the same trials trained one after another, same GPU, same run.

The INR is small and a training step is bound by the host (sampling, kernel launches, the torch
optimiser step), so several trials can share one GPU. Each level N runs a real sweep through the
library (``neumours.sweep``: a local Ray instance with one GPU, every trial asking for 1/N of it)
with ``waves * N`` configurations of the paper network (a grid over ``[optimizer] lr``) x ``folds``
folds x ``steps`` steps on phantom cases. The peer is the strongest sequential loop: the same
trials (the same trainable function, ``train_folds``) one after another in this process, with
the device and its compiled kernels reused, no Ray and no process start.

Reported per level: wall time, trials per hour (over the whole sweep, and steady: N over the median
time of a trial that ran in an already warm process), the ratio to the sequential loop, the GPU's mean
utilisation and peak memory while the sweep ran (``nvidia-smi`` every 0.5 s), the peak memory of
each trial process (Ray reuses one process per concurrent trial), and the largest difference of a
fold's final validation Dice from the same configuration trained sequentially (run-to-run noise:
GPU reductions are not bitwise deterministic).

    python benchmarks/sweep_throughput.py [--levels 1 2 4 8] [--steps 300] [--folds 2] [--waves 2]
                                          [--cases 6] [--shape 96 96 64] [--json sweep.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, write_json  # noqa: E402

from neumours.data.phantom import write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.sweep.folds import make_folds  # noqa: E402
from neumours.sweep.resources import physical_gpus, plan_resources  # noqa: E402
from neumours.sweep.results import read_trials  # noqa: E402
from neumours.sweep.runner import new_sweep, run_sweep, start_ray  # noqa: E402
from neumours.sweep.settings import SweepSettings, save_sweep  # noqa: E402
from neumours.sweep.trainable import TrialSetup, train_folds  # noqa: E402
from neumours.train.config import preset  # noqa: E402


class GpuSampler:
    """``nvidia-smi`` every ``period`` seconds in a thread: GPU utilisation (%), memory used (MiB) and
    the memory of every compute process (MiB, by pid) while the context is open."""

    def __init__(self, period: float = 0.5, exclude: tuple[int, ...] = ()):
        self.period, self.exclude = period, set(exclude)
        self.util: list[float] = []
        self.memory: list[float] = []
        self.per_process: dict[int, float] = {}
        self._stop = threading.Event()

    def _query(self, *args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                gpu = self._query("--query-gpu=utilization.gpu,memory.used")[0]
                self.util.append(float(gpu[0]))
                self.memory.append(float(gpu[1]))
                for pid, used in self._query("--query-compute-apps=pid,used_memory"):
                    if int(pid) not in self.exclude:
                        self.per_process[int(pid)] = max(self.per_process.get(int(pid), 0.0), float(used))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self._stop.wait(self.period)

    def __enter__(self):
        try:  # memory in use before the sweep (this process's own context): subtracted for "per trial"
            self.baseline = float(self._query("--query-gpu=memory.used")[0][0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            self.baseline = float("nan")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self, trials_at_once: int) -> dict:
        """``trial_mem_*``: per process as nvidia-smi lists them (empty where a container hides the
        pids); ``trial_mem_from_total_mib``: (peak - memory before the sweep) / trials at once."""
        procs = sorted(self.per_process.values())
        peak = max(self.memory) if self.memory else float("nan")
        return {"gpu_util_mean_pct": statistics.mean(self.util) if self.util else float("nan"),
                "gpu_mem_peak_mib": peak,
                "trial_mem_from_total_mib": (peak - self.baseline) / trials_at_once,
                "trial_processes": len(procs),
                "trial_mem_median_mib": statistics.median(procs) if procs else float("nan"),
                "trial_mem_max_mib": procs[-1] if procs else float("nan")}


def learning_rates(n: int) -> list[float]:
    """``n`` distinct learning rates around the paper's, 3 significant digits; level N uses the first
    ``waves * N``, so the first ones are trained at every level (for the Dice comparison)."""
    lo, hi = 5e-4, 4e-3
    return [float(f"{lo * (hi / lo) ** (i / max(n - 1, 1)):.3g}") for i in range(n)]


def sequential(setup: TrialSetup, lrs: list[float], root: Path) -> tuple[list[float], dict]:
    """The trials one after another in this process: seconds per trial, final fold Dice by lr."""
    times, dice = [], {}
    for lr in lrs:
        folder = root / f"lr-{lr:g}"
        folder.mkdir(parents=True)
        start = time.perf_counter()
        result = train_folds(setup, {"optimizer": {"lr": lr}}, folder, lambda metrics: None)
        times.append(time.perf_counter() - start)
        dice[lr] = [row["val_dice_mean"] for row in result["folds"]]
    return times, dice


def trial_spans(out: Path) -> list[tuple[float, float, int]]:
    """(start, end, pid) of every finished trial, by start: ``trial.json`` is written when a trial
    starts, ``result.json`` when it has finished."""
    spans = []
    for result in out.glob("trials/*/result.json"):
        info = result.parent / "trial.json"
        spans.append((info.stat().st_mtime, result.stat().st_mtime, json.loads(info.read_text())["pid"]))
    return sorted(spans)


def sweep_level(data: Path, root: Path, base, n: int, lrs: list[float], folds: int, cpus: int,
                device: str) -> dict:
    """One sweep of ``len(lrs)`` trials, ``n`` of them sharing the GPU; wall time, GPU use, fold Dice."""
    space = root / f"space-{n}.toml"
    space.write_text("[optimizer]\nlr = { grid = [" + ", ".join(f"{lr:g}" for lr in lrs) + "] }\n")
    cpus_per_trial = max(1.0, float(cpus // n))
    settings = SweepSettings(data=str(data), folds=folds, trials_per_gpu=n, cpus_per_trial=cpus_per_trial,
                             device=device)
    sweep = new_sweep(root / f"sweep-{n}", space, base, settings)
    save_sweep(sweep, space)
    resources = plan_resources(None, 1, n, cpus_per_trial, "1 GPU")
    with GpuSampler(exclude=(os.getpid(),)) as sampler:
        start = time.perf_counter()
        outcome = run_sweep(sweep, resources, quiet=True)
        wall = time.perf_counter() - start
    records = read_trials(sweep)
    dice = {float(r.config["optimizer"]["lr"]): [f["val_dice_mean"] for f in r.folds if f] for r in records
            if r.status == "finished"}
    spans = trial_spans(sweep.out)
    # Trials after the first n: Ray reuses their processes, so they run warm (kernels compiled).
    warm = [end - begin for begin, end, _ in spans[n:]]
    return {"wall_s": wall, "trials": len(lrs), "finished": outcome.counts.get("finished", 0),
            "gpu": sampler.summary(n), "dice": dice, "cpus_per_trial": cpus_per_trial,
            "warm_trial_s": statistics.median(warm) if warm else float("nan"),
            "processes": len({pid for _, _, pid in spans})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="trials sharing the GPU")
    ap.add_argument("--steps", type=int, default=300, help="training steps per trial and fold")
    ap.add_argument("--folds", type=int, default=2, help="cross-validation folds per trial")
    ap.add_argument("--waves", type=int, default=2, help="each level runs waves x N trials")
    ap.add_argument("--cases", type=int, default=6, help="phantom cases")
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="phantom shape")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPU cores of the local Ray instance")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--preset", choices=["paper", "tiny"], default="paper",
                    help="network (tiny with --device cpu: a smoke check of this script without a GPU)")
    add_device_argument(ap, default="cuda", note="the GPU numbers need cuda")
    args = ap.parse_args()
    if args.device == "cuda" and physical_gpus() < 1:
        raise SystemExit("sweep_throughput: needs an NVIDIA GPU (nvidia-smi finds none)")
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: the single-GPU measurement even on a larger host
    device = get_device(args.device, announce=False)
    base = preset(args.preset)
    base = dataclasses.replace(base, schedule=dataclasses.replace(base.schedule, steps=args.steps,
                                                                  val_every=args.steps))
    all_lrs = learning_rates(args.waves * max(args.levels))
    with tempfile.TemporaryDirectory(prefix="neumours-sweep-bench-") as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.cases, shape=tuple(args.shape), progress=False)
        folds = make_folds(root / "data", args.folds, base.schedule.seed)
        setup = TrialSetup(str(root / "data"), str(root / "seq"), base, tuple(folds), args.device)
        seq_lrs = all_lrs[:args.waves]
        seq_times, seq_dice = sequential(setup, seq_lrs, root / "seq")
        per_trial = seq_times[-1] if len(seq_times) > 1 else seq_times[0]  # the first one compiles the kernels
        seq_rate = 3600.0 / per_trial
        start_ray(None, args.cpus, 1)
        rows, levels = [], {}
        for n in args.levels:
            level = sweep_level(root / "data", root, base, n, all_lrs[:args.waves * n], args.folds, args.cpus,
                                args.device)
            rate = level["finished"] / level["wall_s"] * 3600.0  # everything: Ray's start, compiling, the tail
            steady = n / level["warm_trial_s"] * 3600.0  # n slots, each finishing a trial every warm_trial_s
            diffs = [abs(a - b) for lr in seq_lrs if lr in level["dice"]
                     for a, b in zip(level["dice"][lr], seq_dice[lr])]
            level.update(trials_per_hour=rate, vs_sequential=rate / seq_rate, steady_trials_per_hour=steady,
                         steady_vs_sequential=steady / seq_rate,
                         max_dice_diff=max(diffs) if diffs else float("nan"))
            levels[n] = level
            g = level["gpu"]
            rows.append({"trials/GPU": n, "trials": f"{level['finished']}/{level['trials']}",
                         "processes": level["processes"], "wall s": f"{level['wall_s']:.1f}",
                         "trials/h (wall)": f"{rate:.0f}", "vs seq (wall)": f"{rate / seq_rate:.2f}x",
                         "s/trial (warm)": f"{level['warm_trial_s']:.1f}",
                         "trials/h (steady)": f"{steady:.0f}", "vs seq (steady)": f"{steady / seq_rate:.2f}x",
                         "GPU util %": f"{g['gpu_util_mean_pct']:.0f}", "GPU mem peak MiB": f"{g['gpu_mem_peak_mib']:.0f}",
                         "MiB/trial (median, max)": f"{g['trial_mem_median_mib']:.0f}, {g['trial_mem_max_mib']:.0f}",
                         "MiB/trial (total)": f"{g['trial_mem_from_total_mib']:.0f}",
                         "max |dDice| vs seq": f"{level['max_dice_diff']:.4f}"})
            print(f"level {n}: {rows[-1]}", flush=True)
    print(f"\ndevice: {describe(device)}; {args.preset} network, {args.folds} folds x {args.steps} steps per trial, "
          f"{args.cases} phantoms of {tuple(args.shape)}; CPU cores: {args.cpus}")
    print(f"sequential (in-process, kernels compiled once): {per_trial:.1f} s per trial "
          f"(first trial {seq_times[0]:.1f} s), {seq_rate:.0f} trials/h\n")
    print_table(rows, list(rows[0]))
    best = max(levels.values(), key=lambda lv: lv["trials_per_hour"])
    print(f"\nbest (wall): {best['trials_per_hour']:.0f} trials/h = {best['vs_sequential']:.2f}x the sequential loop")
    print("wall: trials / the sweep's whole time (Ray start, each process compiling its kernels, the last wave's "
          "tail); steady: N / the median time of a trial in a warm process (trials after the first N)")
    if args.json:
        write_json(args.json, {"args": vars(args), "device": describe(device), "sequential_s": seq_times,
                               "sequential_trials_per_hour": seq_rate, "levels": levels})


if __name__ == "__main__":
    main()
