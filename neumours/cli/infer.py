"""``neumours segment`` and ``neumours evaluate``: labels from a checkpoint, scores against ground truth."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import add_command, add_device_option, add_precision_option, add_quiet_option


def cmd_segment(args) -> None:
    from neumours.device import get_device
    from neumours.infer.segment import format_timings, segment_paths

    def report(result, path) -> None:
        if args.timings:
            print(format_timings(result))

    written = segment_paths(args.case, args.checkpoint, args.out, denoise=args.denoise, probs=args.probs,
                            scale=args.scale, timings=args.timings, device=get_device(args.device),
                            progress=not args.quiet, on_result=report, precision=args.precision)
    print(f"wrote {len(written)} segmentation(s)" + (f" to {args.out}" if len(written) != 1 else f": {written[0]}"))


def cmd_evaluate(args) -> None:
    from neumours.eval.evaluate import run_evaluate

    device = None
    if args.checkpoint is not None:
        from neumours.device import get_device

        device = get_device(args.device)
    _, summary = run_evaluate(args.out, pred=args.pred, gt=args.gt, checkpoint=args.checkpoint, data=args.data,
                              split=args.split, seed=args.seed, device=device, progress=not args.quiet,
                              precision=args.precision)
    print(summary, end="")
    if args.out is not None:
        print(f"wrote {args.out / 'per_case.csv'} and {args.out / 'summary.md'}")


def add_parsers(sub) -> None:
    p = add_command(sub, "segment", "segment a case (or every case under a folder) with a trained INR",
                    "Evaluate the INR over the whole volume on the device (volume caching), arg-max to labels "
                    "0-3 (background, NCR, ED, ET) and write a NIfTI with the input's affine and header.")
    p.add_argument("case", type=Path, help="a case folder or modality file, or a folder of cases")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True,
                   help="SEG.nii.gz for one case, or a folder (one <case id>.nii.gz per case)")
    p.add_argument("--denoise", action="store_true", help="connected-component filtering and hole filling")
    p.add_argument("--probs", type=Path, help="also write class probabilities, 4-D float32 (X, Y, Z, 4); "
                                              "a file for one case, a folder for several")
    p.add_argument("--scale", type=float, default=1.0,
                   help="super-resolution: evaluate on an S-times finer grid of the same field of view")
    p.add_argument("--timings", action="store_true", help="print per-stage times (load, normalise, inference, ...)")
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_segment)

    p = add_command(
        sub, "evaluate", "Dice and HD95 per region (NCR, ED, ET, TC, WT)",
        "Score segmentations per case and region. Two mutually exclusive modes, one per call:\n"
        "  --pred DIR --gt DIR          predictions already on disk against the ground truth\n"
        "  --checkpoint CKPT --data DIR segment with the INR and score raw and denoised labels\n"
        "With --out, writes per_case.csv and summary.md there.",
        usage="neumours evaluate (--pred DIR --gt DIR | --checkpoint CKPT --data DIR [--split val|all] [--seed S])"
              " [--out REPORT] [--device KIND] [--precision P] [--quiet]")
    p.add_argument("--pred", type=Path, help="mode 1: folder of predictions, <case id>.nii.gz")
    p.add_argument("--gt", type=Path, help="mode 1: dataset folder (or folder of label files) with the ground truth")
    p.add_argument("--checkpoint", type=Path, help="mode 2: INR checkpoint to segment with")
    p.add_argument("--data", type=Path, help="mode 2: dataset folder to segment and score")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="mode 2: the validation split of training (10 %% of the cases, by --seed) or all cases")
    p.add_argument("--seed", type=int, default=0, help="mode 2: split seed")
    p.add_argument("--out", type=Path, help="output folder for per_case.csv and summary.md")
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_evaluate)
