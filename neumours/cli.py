"""The ``neumours`` command. Each subcommand calls an importable function.

Errors meant for the user (bad data, unavailable device, wrong checkpoint)
print one line ``neumours: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neumours.errors import NeumoursError


def _shape(values: list[int]) -> tuple[int, int, int]:
    if len(values) != 3 or min(values) < 16:
        raise NeumoursError(f"--shape needs three sizes of at least 16 voxels, got {values}")
    return tuple(values)


def cmd_synth(args) -> None:
    from neumours.data.phantom import write_dataset

    if args.cases < 1:
        raise NeumoursError(f"--cases must be at least 1, got {args.cases}")
    paths = write_dataset(args.out, args.cases, shape=_shape(args.shape), seed=args.seed, progress=not args.quiet)
    print(f"wrote {len(paths)} phantom case(s) to {args.out}")


def cmd_inspect(args) -> None:
    from neumours.data import list_cases, load_case
    from neumours.summary import case_summary, format_case_summary

    refs = list_cases(args.case)
    for ref in refs:
        print(format_case_summary(case_summary(load_case(ref))))


def cmd_demo(args) -> None:
    from neumours.demo import format_demo_report, run_demo
    from neumours.device import get_device

    if args.cases is not None and args.cases < 2:
        raise NeumoursError(f"--cases must be at least 2 (training and validation), got {args.cases}")
    if args.steps is not None and args.steps < 1:
        raise NeumoursError(f"--steps must be at least 1, got {args.steps}")
    result = run_demo(args.out, device=get_device(args.device), cases=args.cases,
                      shape=_shape(args.shape) if args.shape else None, steps=args.steps, seed=args.seed)
    print(format_demo_report(result))


def cmd_segment(args) -> None:
    from neumours.device import get_device
    from neumours.infer.segment import format_timings, segment_paths

    def report(result, path) -> None:
        if args.timings:
            print(format_timings(result))

    written = segment_paths(args.case, args.checkpoint, args.out, denoise=args.denoise, probs=args.probs,
                            scale=args.scale, timings=args.timings, device=get_device(args.device),
                            progress=not args.quiet, on_result=report)
    print(f"wrote {len(written)} segmentation(s)" + (f" to {args.out}" if len(written) != 1 else f": {written[0]}"))


def cmd_evaluate(args) -> None:
    from neumours.eval.evaluate import run_evaluate

    device = None
    if args.checkpoint is not None:
        from neumours.device import get_device

        device = get_device(args.device)
    _, summary = run_evaluate(args.out, pred=args.pred, gt=args.gt, checkpoint=args.checkpoint, data=args.data,
                              split=args.split, seed=args.seed, device=device, progress=not args.quiet)
    print(summary, end="")
    if args.out is not None:
        print(f"wrote {args.out / 'per_case.csv'} and {args.out / 'summary.md'}")


def cmd_train(args) -> None:
    import dataclasses

    from neumours.data import list_cases
    from neumours.device import get_device
    from neumours.train.config import TrainConfig, load_toml, preset
    from neumours.train.trainer import train

    if (args.out is None) == (args.resume is None):
        raise NeumoursError("give either --out RUN for a new run or --resume RUN to continue one")
    # A resumed run starts from its own saved configuration; flags override either.
    config = load_toml(args.resume / "config.toml", TrainConfig()) if args.resume else preset(args.preset)
    if args.config:
        config = load_toml(args.config, config)
    if args.optimizer:
        config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, name=args.optimizer))
    schedule = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("val_every", args.val_every))
                if v is not None}
    if schedule:
        config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, **schedule))
    if config.schedule.steps < 1 or config.schedule.val_every < 1:
        raise NeumoursError("--steps and --val-every must be at least 1")
    list_cases(args.data)  # a bad data folder fails here, before a device is set up
    summary = train(args.data, args.resume or args.out, config, get_device(args.device),
                    resume=args.resume is not None)
    print(f"trained {summary['steps']} steps in {summary['time_s']:.1f} s; best validation mean Dice "
          f"{summary['best_val_dice_mean']:.4f}; run: {summary['run_dir']}")


def cmd_plot(args) -> None:
    from neumours.train.curves import compare_runs, plot_run

    if len(args.runs) == 1:
        path = plot_run(args.runs[0], args.out)
    else:
        path = compare_runs(args.runs, args.out or args.runs[0] / "comparison.png")
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neumours",
        description="Implicit neural tumour representations in a differentiable Slang renderer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write synthetic BraTS-style phantom cases",
                       description="Write N phantom cases in the BraTS 2023 layout (1 mm spacing).")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"),
                   help="volume shape (default 96 96 64; BraTS is 240 240 155)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="summarise a case (or every case under a folder)",
                       description="Shapes, spacing, orientation, affine check, intensities and "
                                   "label volumes in mL per region (NCR, ED, ET, TC, WT).")
    p.add_argument("case", type=Path, help="a case folder, or a folder of cases (BraTS, MU-Glioma-Post, nnU-Net)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="run the main job on the embedded phantom data",
                       description="Synthesise phantom cases, train the INR (tiny preset on the CPU, the paper's "
                                   "network on a GPU), segment the validation cases raw and denoised, print the "
                                   "Table III analogue and write figures.")
    p.add_argument("--out", type=Path, default=Path("neumours-demo"), help="output folder (default neumours-demo)")
    p.add_argument("--cases", type=int, help="number of phantom cases (CPU 16, GPU 40)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="case shape (CPU 64 64 48, GPU 128 128 96)")
    p.add_argument("--steps", type=int, help="training steps (CPU 300, GPU 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cuda, vulkan, metal or cpu")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment a case (or every case under a folder) with a trained INR",
                       description="Evaluate the INR over the whole volume on the device (volume caching), "
                                   "arg-max to labels 0-3 and write a NIfTI with the input's affine and header.")
    p.add_argument("case", type=Path, help="a case folder or modality file, or a folder of cases")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True,
                   help="SEG.nii.gz for one case, or a folder (one <case id>.nii.gz per case)")
    p.add_argument("--denoise", action="store_true", help="connected-component filtering and hole filling")
    p.add_argument("--probs", type=Path, help="also write class probabilities, 4-D float32 (X, Y, Z, 4); "
                                              "a file for one case, a folder for several")
    p.add_argument("--scale", type=float, default=1.0,
                   help="super-resolution: evaluate on an S-times finer grid of the same field of view (default 1)")
    p.add_argument("--timings", action="store_true", help="print per-stage times (load, normalise, inference, ...)")
    p.add_argument("--device", default="auto", help="auto, cuda, vulkan, metal or cpu (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="Dice and HD95 per region (NCR, ED, ET, TC, WT)",
                       description="Score predictions against ground truth (--pred/--gt), or segment and score "
                                   "raw and denoised in one go (--checkpoint/--data). Writes per_case.csv and "
                                   "summary.md with --out.")
    p.add_argument("--pred", type=Path, help="folder of predictions, <case id>.nii.gz")
    p.add_argument("--gt", type=Path, help="dataset folder (or folder of label files) with the ground truth")
    p.add_argument("--checkpoint", type=Path, help="INR checkpoint to segment with")
    p.add_argument("--data", type=Path, help="dataset folder to segment and score")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="with --data: the validation split (split_cases 0.1) or all cases (default val)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--out", type=Path, help="output folder for per_case.csv and summary.md")
    p.add_argument("--device", default="auto", help="auto, cuda, vulkan, metal or cpu (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the INR on a folder of cases",
                       description="Train the Slang INR (paper Table I by default). Writes RUN/config.toml, "
                                   "metrics.csv, best.safetensors, last.safetensors, last.state.pt, curves.png.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (BraTS, MU-Glioma-Post or nnU-Net layout)")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper",
                   help="paper: Table I (default); tiny: a small network that trains in seconds on the CPU")
    p.add_argument("--optimizer", choices=["adamw", "muon"], help="override the optimizer")
    p.add_argument("--steps", type=int, help="override the number of steps")
    p.add_argument("--val-every", type=int, help="override the validation interval (steps)")
    p.add_argument("--seed", type=int, help="override the seed (split, init, sampling)")
    p.add_argument("--config", type=Path, help="TOML file overriding the preset (sections network, loss, "
                                               "optimizer, sampler, schedule)")
    p.add_argument("--device", default="auto", help="auto, cuda, vulkan, metal or cpu")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="training curves of a run, or several runs overlaid",
                       description="One run: RUN/curves.png. Several: an overlay (e.g. AdamW vs Muon).")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, help="output PNG")
    p.set_defaults(func=cmd_plot)

    from neumours.render.cli import add_parser as add_render_parser
    from neumours.render.refine_cli import add_parser as add_refine_parser

    add_render_parser(sub)
    add_refine_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NeumoursError as exc:
        print(f"neumours: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neumours: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
