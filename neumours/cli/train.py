"""``neumours train`` and ``neumours plot``: train the INR, draw training curves."""

from __future__ import annotations

import sys
from pathlib import Path

from neumours.cli.options import (add_command, add_device_option, add_force_geometry_option, add_keep_going_option,
                                  add_quiet_option, positive_int, seed)
from neumours.errors import CasesFailedError, NeumoursError


def resolve_config(args):
    """The run's configuration: the preset (or the resumed run's own), then ``--config``, then the flags."""
    import dataclasses

    from neumours.train.config import TrainConfig, load_toml, preset

    config = load_toml(args.resume / "config.toml", TrainConfig()) if args.resume else preset(args.preset)
    if args.config:
        config = load_toml(args.config, config)
    if args.optimizer:
        config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, name=args.optimizer))
    if args.precision is not None:
        config = dataclasses.replace(config, network=dataclasses.replace(config.network, precision=args.precision))
    if args.augment:
        from neumours.train.augment import AugmentConfig

        config = dataclasses.replace(config, augment=AugmentConfig.default_on())
    from neumours.schema import SettingError

    for key, value in (("steps", args.steps), ("seed", args.seed), ("val_every", args.val_every)):
        if value is None:
            continue
        try:  # the parser checked the flag's type; [schedule] may bound it further
            config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, **{key: value}))
        except SettingError as exc:
            raise NeumoursError(f"--{key.replace('_', '-')} {value}: [schedule] {exc}") from None
    return config


def warn_if_slow(config, device) -> None:
    """One line on stderr when the paper's network is about to train on the CPU device."""
    import slangpy as spy

    from neumours.model.config import INRConfig

    if device.info.type == spy.DeviceType.cpu and config.network.architecture() == INRConfig.paper():
        print("neumours: note: the paper network on the CPU device takes about 15 s a step (2 cores); "
              "add --preset tiny for a CPU-sized run", file=sys.stderr)


def cmd_train(args) -> None:
    from neumours.data import list_cases
    from neumours.device import get_device
    from neumours.train.trainer import train

    from neumours.data.layouts import case_files
    from neumours.outputs import Output, check_output_folder, check_outputs
    from neumours.train.checkpoints import is_run

    if (args.out is None) == (args.resume is None):
        raise NeumoursError("give either --out RUN for a new run or --resume RUN to continue one")
    if args.resume_new_data and args.resume is None:
        raise NeumoursError("--resume-new-data goes with --resume RUN (continue that run on other data)")
    if args.overwrite and args.out is None:
        raise NeumoursError("--overwrite goes with --out (a new run replacing the one in that folder)")
    run_dir = args.resume or args.out
    check_output_folder(run_dir, "run folder")
    if args.out is not None and not args.overwrite and is_run(args.out):
        raise NeumoursError(f"{args.out}: already holds a training run; continue it with --resume {args.out}, "
                            "choose a new --out folder, or add --overwrite to replace it")
    config = resolve_config(args)
    refs = list_cases(args.data)  # a bad data folder fails here, before a device is set up
    check_outputs([Output(run_dir, "--resume" if args.resume else "--out", folder=True, kind="run")],
                  [*case_files(refs), ("--config", args.config)])
    device = get_device(args.device)
    warn_if_slow(config, device)
    summary = train(args.data, run_dir, config, device, resume=args.resume is not None, overwrite=args.overwrite,
                    force_geometry=args.force_geometry, keep_going=args.keep_going, new_data=args.resume_new_data,
                    progress=not args.quiet)
    print(f"trained {summary['steps']} steps in {summary['time_s']:.1f} s; best validation mean Dice "
          f"{summary['best_val_dice_mean']:.4f} ({summary['validation']}); run: {summary['run_dir']}")
    if summary.get("failures"):
        raise CasesFailedError(f"{len(summary['failures'])} case(s) were left out of the run (listed above)",
                               summary["failures"])


#: The figures ``plot`` draws into a run folder (the only files of a run it may replace).
FIGURES = ("curves.png", "comparison.png")


def cmd_plot(args) -> None:
    from neumours.outputs import Output, check_output_file, check_outputs, files_under
    from neumours.train.curves import compare_runs, plot_run

    out = args.out or args.runs[0] / ("curves.png" if len(args.runs) == 1 else "comparison.png")
    check_output_file(out, "figure (--out)")
    # A run's figures are plot's to redraw; every other file of the runs is an input.
    inputs = [(f"a file of run {run}", path) for run in args.runs for _, path in files_under(run, "")
              if path.name not in FIGURES]
    check_outputs([Output(out, "figure (--out)")], inputs, may_write_in=args.runs)
    if len(args.runs) == 1:
        path = plot_run(args.runs[0], args.out)
    else:
        path = compare_runs(args.runs, args.out or args.runs[0] / "comparison.png")
    if not args.quiet:
        print(f"wrote {path}")


def add_parsers(sub) -> None:
    p = add_command(sub, "train", "train the INR on a folder of cases",
                    "Train the Slang INR (paper Table I by default). Writes RUN/config.toml, metrics.csv, "
                    "best.safetensors, last.safetensors, curves.png and the checkpoint --resume continues from "
                    "(checkpoint.json + checkpoints/step-N/: weights, optimiser state and metrics of one step, "
                    "committed together at every validation; a crash or kill at any moment leaves a run that "
                    "resumes). Every case's headers are checked before anything is written. Settings come from "
                    "the preset, then --config, then the flags (docs/configuration.md lists every key).",
                    examples=("neumours train --data data --out run --preset tiny          # CPU-sized",
                              "neumours train --data data --out run --device cuda           # the paper's run, GPU",
                              "neumours train --data data --resume run"))
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder (BraTS, MU-Glioma-Post or nnU-Net layout)")
    p.add_argument("--out", type=Path, help="run folder to create (or give --resume); a folder that already holds "
                                            "a run is refused unless --overwrite")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue RUN from its last checkpoint; --data must be the run's data (same case ids, "
                        "validation split and NIfTI headers)")
    p.add_argument("--resume-new-data", action="store_true",
                   help="with --resume: continue on other data than the run's (its best is forgotten: validation "
                        "Dice on other cases does not compare)")
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper",
                   help="paper: Table I (a GPU network: about 15 s a step on 2 CPU cores); tiny: a small "
                        "network and batch for the CPU device (150 steps of 64x64x48 phantoms take about 15 s "
                        "on 2 cores, validation included)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], help="override [optimizer] name")
    p.add_argument("--steps", type=positive_int, help="override [schedule] steps")
    p.add_argument("--val-every", type=positive_int, help="override [schedule] val_every (steps between validations)")
    p.add_argument("--seed", type=seed, help="override [schedule] seed (split, initialisation, sampling)")
    p.add_argument("--config", type=Path, help="TOML file overriding the preset (sections network, loss, "
                                               "optimizer, sampler, schedule, augment)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out: replace the run already in that folder (its files are deleted once the data "
                        "and settings have been checked)")
    add_force_geometry_option(p)
    add_keep_going_option(p, "are used (the train/validation split is made over the good cases)")
    p.add_argument("--augment", action="store_true",
                   help="switch on every [augment] transform at its moderate setting (flips, coordinate jitter, "
                        "intensity scale/shift/gamma, bias field, noise, modality dropout; docs/phantom.md); "
                        "a --config [augment] table sets single keys instead")
    add_device_option(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="override [network] precision: bf16 tensor cores (CUDA only), fp32 FMA, or auto "
                        "(bf16 on CUDA, fp32 elsewhere; the default)")
    add_quiet_option(p, "no progress bar and no time estimate")
    p.set_defaults(func=cmd_train)

    p = add_command(sub, "plot", "training curves of a run, or several runs overlaid",
                    "One run: RUN/curves.png. Several runs: one overlay (e.g. AdamW vs Muon), by default "
                    "FIRST_RUN/comparison.png. Raw values are drawn faintly under their moving average.",
                    examples=("neumours plot run", "neumours plot runs/adamw runs/muon --out comparison.png"))
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="training run folder(s)")
    p.add_argument("--out", type=Path, help="output PNG (default: RUN/curves.png or FIRST_RUN/comparison.png)")
    add_quiet_option(p, "print nothing when the figure is written")
    p.set_defaults(func=cmd_plot)
