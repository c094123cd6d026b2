"""``neumours sweep``: hyper-parameter search with k-fold cross-validation on Ray Tune."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from neumours.cli.options import add_command, add_quiet_option, finite_float, int_range, positive_int, seed
from neumours.errors import NeumoursError

#: Defaults of the options that define a sweep; --resume takes them from the sweep folder instead.
_DEFAULTS = {"data": None, "space": None, "out": None, "folds": 5, "preset": "paper", "config": None,
             "optimizer": None, "precision": None, "steps": None, "val_every": None, "seed": None,
             "search": "grid", "samples": 10, "asha": False, "asha_grace": None, "asha_reduction": 3, "trials_per_gpu": 1, "cpus_per_trial": 1.0,
             "device": "auto"}


def _resources(args, settings):
    """The trials' resources; a GPU request beyond what is there fails here, before anything is written.

    Joining a cluster (``--address``) connects to it to count its GPUs, as does a process that is already
    connected to Ray (a Python caller's own ``ray.init``); a local Ray starts later.
    """
    import ray

    from neumours.sweep.resources import describe_visible, physical_gpus, plan_resources, visible_gpus
    from neumours.sweep.runner import cluster_gpus, start_ray

    if args.address or ray.is_initialized():
        start_ray(args.address, None, 0)  # no-op when already connected
        available = cluster_gpus()
        where = f"the Ray cluster at {args.address}" if args.address else "the Ray instance of this process"
        found = f"{available} GPU{'' if available == 1 else 's'} in {where}"
    else:
        physical = physical_gpus()
        visible = visible_gpus(physical)
        available, found = len(visible), describe_visible(visible, physical)
    return plan_resources(args.gpus, available, settings.trials_per_gpu, settings.cpus_per_trial, found)


def _new_sweep(args):
    from neumours.cli.train import resolve_config
    from neumours.sweep.runner import new_sweep
    from neumours.sweep.settings import SweepSettings

    missing = [flag for flag, value in (("--data", args.data), ("--space", args.space), ("--out", args.out))
               if value is None]
    if missing:
        raise NeumoursError(f"a new sweep needs {', '.join(missing)} (or give --resume SWEEP)")
    config = resolve_config(SimpleNamespace(resume=None, preset=args.preset, config=args.config,
                                            optimizer=args.optimizer, precision=args.precision,
                                            steps=args.steps, seed=args.seed, val_every=args.val_every,
                                            augment=False))  # [augment] comes from --config or the space
    grace = args.asha_grace if args.asha_grace is not None else max(config.schedule.steps // 4, 1)
    settings = SweepSettings(data=str(args.data), folds=args.folds, search=args.search, samples=args.samples,
                             asha=args.asha, asha_grace=grace, asha_reduction=args.asha_reduction,
                             trials_per_gpu=args.trials_per_gpu, cpus_per_trial=args.cpus_per_trial,
                             device=args.device)
    return new_sweep(args.out, args.space, config, settings)


def cmd_sweep(args) -> None:
    from neumours.locks import FolderLock
    from neumours.sweep.runner import require_ray

    require_ray()
    folder = args.resume if args.resume is not None else args.out
    if folder is None:
        _new_sweep(args)  # names what a new sweep is missing
    from neumours.outputs import Output, check_output_folder, check_outputs

    check_output_folder(folder, "sweep folder")
    check_outputs([Output(folder, "sweep folder", folder=True, kind="sweep")],
                  [("--data", args.data), ("--space", args.space), ("--config", args.config)])
    with FolderLock(folder, "sweep folder"):  # held from before the first write to the end of the sweep
        _run(args)


def _run(args) -> None:
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name, default in _DEFAULTS.items() if getattr(args, name) != default]
        if given:
            raise NeumoursError(f"--resume takes the sweep's own settings; drop {', '.join(given)} "
                                "(only --gpus, --cpus, --address and --quiet may change)")
        from neumours.sweep.runner import resume

        sweep = resume(args.resume)
    else:
        sweep = _new_sweep(args)
    from neumours.sweep.runner import run_sweep, start_ray
    from neumours.sweep.settings import save_sweep

    resources = _resources(args, sweep.settings)
    if args.resume is None:
        save_sweep(sweep, args.space)
    start_ray(args.address, args.cpus, resources.gpus)  # no-op when already connected
    outcome = run_sweep(sweep, resources, quiet=args.quiet)
    counts = ", ".join(f"{n} {status}" for status, n in outcome.counts.items())
    print(f"{counts or 'no trials'}; wrote {outcome.results}, {outcome.summary}"
          + (f", {outcome.figure}" if outcome.figure else ""))
    if outcome.best is not None:
        from neumours.sweep.results import r_score

        print(f"best: trial {outcome.best.trial_id}, validation Dice {r_score(outcome.best)}; "
              f"config: {sweep.out / 'best_config.toml'}")
    if outcome.counts.get("unfinished"):
        print(f"neumours: interrupted: continue with `neumours sweep --resume {sweep.out}`", file=sys.stderr)
        raise SystemExit(130)


def add_parsers(sub) -> None:
    p = add_command(
        sub, "sweep", "hyper-parameter search with k-fold cross-validation on Ray Tune",
        "Train every configuration of a search space on k folds of a dataset (one Ray Tune trial per "
        "configuration; its folds train in lockstep) and rank the configurations by the mean +- sd over folds "
        "of the validation Dice. SPACE.toml uses the sections and keys of config.toml, each as\n"
        "  key = { grid = [...] } | { choice = [...] } | { uniform = [lo, hi] } | { loguniform = [lo, hi] }\n"
        "e.g. [optimizer] lr = { grid = [1e-3, 3e-3] }; everything else comes from the preset, --config and the "
        "flags as in `neumours train`. Writes SWEEP/results.csv (a row per trial and fold), summary.md "
        "(ranked), best_config.toml (for `neumours train --config`), sweep.png, and a normal run folder per "
        "trial and fold under SWEEP/trials/. Needs the sweep extra: pip install 'neumours[sweep]'.",
        epilog="Trials get --cpus-per-trial CPU cores and 1/--trials-per-gpu of a GPU each; Ray places them on "
               "every GPU it is given (all that CUDA_VISIBLE_DEVICES shows, or --gpus of them). Stopped "
               "half-way (Ctrl-C, kill), `neumours sweep --resume SWEEP` continues without redoing finished "
               "trials. docs/sweep.md has the details and multi-GPU / cluster use.",
        examples=("neumours sweep --data phantoms --space space.toml --folds 2 --out sweep1 --preset tiny "
                  "--steps 100 --cpus 2",
                  "neumours sweep --resume sweep1"))
    p.add_argument("--data", type=Path, help="dataset folder (BraTS, MU-Glioma-Post or nnU-Net layout), labelled")
    p.add_argument("--space", type=Path, metavar="SPACE.toml", help="search space (see above)")
    p.add_argument("--folds", type=int_range(2, 1000), default=_DEFAULTS["folds"], metavar="K",
                   help="cross-validation folds (from neumours.data.kfold with [schedule] seed)")
    p.add_argument("--out", type=Path, metavar="SWEEP", help="sweep folder to create (empty or new)")
    p.add_argument("--resume", type=Path, metavar="SWEEP", help="continue the sweep in SWEEP with its own settings")
    p.add_argument("--preset", choices=["paper", "tiny"], default=_DEFAULTS["preset"],
                   help="base configuration: paper (Table I, a GPU network) or tiny (a small network for the CPU device: "
                        "a few minutes for 150 steps of small phantoms)")
    p.add_argument("--config", type=Path, help="TOML file overriding the preset (as for train)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], help="override [optimizer] name")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="override [network] precision: bf16 tensor cores (CUDA only), fp32 FMA, or auto "
                        "(bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--steps", type=positive_int, help="override [schedule] steps (per trial and fold)")
    p.add_argument("--val-every", type=positive_int, help="override [schedule] val_every (steps between validations, "
                                                 "the points where ASHA compares trials)")
    p.add_argument("--seed", type=seed, help="override [schedule] seed (folds, initialisation, sampling, search)")
    p.add_argument("--search", choices=["grid", "random", "optuna"], default=_DEFAULTS["search"],
                   help="grid: every combination of the grid lists; random: --samples configurations drawn "
                        "(grid lists drawn like choices); optuna: --samples configurations proposed by Optuna "
                        "(needs pip install optuna)")
    p.add_argument("--samples", type=int_range(1, 1_000_000), default=_DEFAULTS["samples"],
                   help="configurations to try with --search random or optuna")
    p.add_argument("--asha", action="store_true",
                   help="stop poor trials early (ASHA on the fold-mean validation Dice at each validation)")
    p.add_argument("--asha-grace", type=positive_int, metavar="STEPS",
                   help="with --asha: steps every trial trains before it can be stopped (default: a quarter "
                        "of --steps)")
    p.add_argument("--asha-reduction", type=int_range(2, 1000), default=_DEFAULTS["asha_reduction"],
                   help="with --asha: keep 1 in this many trials at each rung")
    p.add_argument("--trials-per-gpu", type=int_range(1, 1024), default=_DEFAULTS["trials_per_gpu"], metavar="N",
                   help="trials sharing one GPU (each asks Ray for 1/N of a GPU)")
    p.add_argument("--cpus-per-trial", type=finite_float(gt=0, max=4096), default=_DEFAULTS["cpus_per_trial"],
                   help="CPU cores each trial reserves")
    p.add_argument("--gpus", type=int_range(0, 4096), metavar="G",
                   help="GPUs to use (default: every GPU CUDA_VISIBLE_DEVICES shows; 0: trials on the CPU device)")
    p.add_argument("--cpus", type=int_range(1, 1 << 20), metavar="C",
                   help="CPU cores of the local Ray instance (default: all)")
    p.add_argument("--address", metavar="ADDRESS",
                   help="join a running Ray cluster instead of starting one: auto, HOST:PORT or ray://HOST:10001")
    p.add_argument("--device", default=_DEFAULTS["device"],
                   help="device kind of the trials: auto (cuda when trials get a GPU share, else cpu), cuda, "
                        "vulkan, metal or cpu; NEUMOURS_DEVICE overrides it")
    add_quiet_option(p)
    p.set_defaults(func=cmd_sweep)

