"""``neumours segment`` and ``neumours evaluate``: labels from a checkpoint, scores against ground truth."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import (add_command, add_device_option, add_force_geometry_option, add_keep_going_option,
                                  add_precision_option, add_quiet_option, finite_float, seed)

#: Largest --scale (beyond it even one voxel's grid exceeds every buffer; smaller scales that still do not
#: fit are refused with the largest scale that fits).
MAX_SCALE = 1024.0


def parse_tta(text: str | None) -> tuple[int, ...]:
    """``--tta AXES`` (comma-separated array axes, e.g. ``0`` or ``0,1,2``) as flip axes; None: off.

    Raises:
        NeumoursError: naming ``--tta`` and the allowed axes.
    """
    from neumours.errors import NeumoursError
    from neumours.infer.tta import check_flip_axes

    if text is None:
        return ()
    try:
        return check_flip_axes([int(a) for a in text.split(",")])
    except ValueError:
        raise NeumoursError(f"--tta takes comma-separated distinct axes among 0, 1, 2 (e.g. 0 or 0,1,2), "
                            f"got {text!r}") from None


def cmd_segment(args) -> None:
    from neumours.device import get_device
    from neumours.infer.segment import check_outputs, format_timings, segment_paths

    def report(result, path) -> None:
        if args.timings:
            print(format_timings(result))

    tta = parse_tta(args.tta)
    check_outputs(args.out, args.probs)  # before the device is set up
    written = segment_paths(args.case, args.checkpoint, args.out, denoise=args.denoise, probs=args.probs,
                            scale=args.scale, timings=args.timings, device=get_device(args.device),
                            progress=not args.quiet, on_result=report, force_geometry=args.force_geometry,
                            keep_going=args.keep_going, precision=args.precision, tta_flips=tta,
                            smooth_mm=args.smooth)
    print(f"wrote {len(written)} segmentation(s)" + (f" to {args.out}" if len(written) != 1 else f": {written[0]}"))


def cmd_evaluate(args) -> None:
    from neumours.errors import CasesFailedError
    from neumours.eval.evaluate import run_evaluate
    from neumours.outputs import check_output_folder

    if args.out is not None:
        check_output_folder(args.out, "report folder (--out)")
    device = None
    if args.checkpoint is not None:
        from neumours.device import get_device

        device = get_device(args.device)
    failures: list = []
    _, summary = run_evaluate(args.out, pred=args.pred, gt=args.gt, checkpoint=args.checkpoint, data=args.data,
                              split=args.split, seed=args.seed, device=device, progress=not args.quiet,
                              force_geometry=args.force_geometry, keep_going=args.keep_going, failures=failures,
                              precision=args.precision)
    print(summary, end="")
    if args.out is not None:
        print(f"wrote {args.out / 'per_case.csv'} and {args.out / 'summary.md'}")
    if failures:
        raise CasesFailedError(f"{len(failures)} case(s) failed (listed above) and are not in the scores", failures)


def add_parsers(sub) -> None:
    p = add_command(sub, "segment", "segment a case (or every case under a folder) with a trained INR",
                    "Evaluate the INR over the whole volume on the device (volume caching), arg-max to labels "
                    "0-3 (background, NCR, ED, ET) and write a NIfTI with the input's affine and header.",
                    examples=("neumours segment data/Phantom-00000-000 --checkpoint run/best.safetensors "
                              "--out seg.nii.gz --denoise",
                              "neumours segment data --checkpoint run/best.safetensors --out segs/"))
    p.add_argument("case", type=Path, help="a case folder or modality file, or a folder of cases")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True,
                   help="SEG.nii.gz (or .nii) for one case, or a folder (one <case id>.nii.gz per case); any other "
                        "file name is an error")
    p.add_argument("--denoise", action="store_true", help="connected-component filtering and hole filling")
    p.add_argument("--probs", type=Path, help="also write class probabilities, 4-D float32 (X, Y, Z, 4); "
                                              "a file for one case, a folder for several")
    p.add_argument("--scale", type=finite_float(1, MAX_SCALE), default=1.0,
                   help="super-resolution: evaluate on an S-times finer grid of the same field of view; a grid too "
                        "large for 32-bit indices, the 2 GiB buffer limit or the free memory is refused up front "
                        "with the largest scale that fits")
    p.add_argument("--timings", action="store_true", help="print per-stage times (load, normalise, inference, ...)")
    p.add_argument("--tta", nargs="?", const="0", metavar="AXES",
                   help="test-time augmentation: average the class probabilities over the case mirrored along every "
                        "subset of AXES (comma-separated array axes; alone: 0, left-right, two passes; 0,1,2: eight)")
    p.add_argument("--smooth", type=finite_float(0, 100), default=0.0, metavar="MM",
                   help="blur each class's probabilities by a Gaussian of this sigma (mm) before the arg-max: fewer "
                        "stray specks in the raw labels (0: off)")
    add_force_geometry_option(p)
    add_keep_going_option(p, "segmented")
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_segment)

    p = add_command(
        sub, "evaluate", "Dice and HD95 per region (NCR, ED, ET, TC, WT)",
        "Score segmentations per case and region. Two mutually exclusive modes, one per call:\n"
        "  --pred DIR --gt DIR          predictions already on disk against the ground truth\n"
        "  --checkpoint CKPT --data DIR segment with the INR and score raw and denoised labels\n"
        "With --out, writes per_case.csv and summary.md there: standard Dice/HD95 and the BraTS 2023 "
        "lesion-wise Dice/HD95 with lesion counts (docs/evaluation.md).",
        usage="neumours evaluate (--pred DIR --gt DIR | --checkpoint CKPT --data DIR [--split val|all] [--seed S])"
              " [--out REPORT] [--force-geometry] [--keep-going] [--device KIND] [--precision P] [--quiet]",
        examples=("neumours evaluate --checkpoint run/best.safetensors --data data --out report",
                  "neumours evaluate --pred segs --gt data --out report"))
    p.add_argument("--pred", type=Path, help="mode 1: folder of predictions, <case id>.nii.gz")
    p.add_argument("--gt", type=Path, help="mode 1: dataset folder (or folder of label files) with the ground truth")
    p.add_argument("--checkpoint", type=Path, help="mode 2: INR checkpoint to segment with")
    p.add_argument("--data", type=Path, help="mode 2: dataset folder to segment and score")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="mode 2: the validation split of training (10 %% of the cases, by --seed) or all cases")
    p.add_argument("--seed", type=seed, default=0, help="mode 2: split seed")
    p.add_argument("--out", type=Path, help="output folder for per_case.csv and summary.md (checked before any work; "
                                            "both files are written together)")
    add_force_geometry_option(p)
    add_keep_going_option(p, "scored")
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_evaluate)
