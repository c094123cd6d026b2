"""``neumours refine``: correct a trained INR from rendered views of one case (DESCRIPTION says how)."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import (add_command, add_device_option, add_force_geometry_option,
                                  add_precision_option, add_quiet_option, finite_float, int_range)
from neumours.cli.render import image_size
from neumours.errors import NeumoursError

DESCRIPTION = """\
Correct a trained INR from rendered views of one case: an image loss on the
views flows back through the raymarcher into the INR's weights.

Targets, one of:
  --from-labels SEG.nii.gz  a corrected label volume, rendered from --views
                            orbiting cameras (with --masks: as tumour masks)
  --targets DIR             DIR/targets.npz with azimuth and elevation (V,) in
                            degrees and either images (V, H, W, 3) with optional
                            weights (V, H, W) (0 = don't care), or masks (V, H, W)
                            of 0 (not tumour), 1 (tumour), 255 (don't care)

Writes the refined checkpoint and, beside it, a .json report: loss and seconds
per step and, when the case has labels, Dice per region before and after. The
two are written together (both or neither); the report holds the checkpoint's
SHA-256, so a report can always be matched to its checkpoint. The report is
strict JSON: an infinite HD95 (exactly one side empty) is the string "inf"."""

EPILOG = """\
Gradient paths (--path): cache renders the cached class-probability volume
(cost set by the voxels, whatever the views); direct evaluates the INR at the
ray samples (cost set by pixels x samples per ray: small or masked views).
On the CPU device a step at --size 256x256 on a 96x96x64 case takes minutes:
use small views (e.g. --views 2 --size 64x64 --steps 3) there."""

EXAMPLES = ("neumours refine data/Phantom-00000-000 --checkpoint run/best.safetensors --from-labels corrected.nii.gz "
            "--out refined.safetensors",
            "neumours refine data/Phantom-00000-000 --checkpoint run/best.safetensors --from-labels corrected.nii.gz "
            "--views 2 --size 64x64 --steps 3 --out refined.safetensors   # CPU-sized")


def _announce(args, device, forward_s: float, case, cameras, settings) -> None:
    """Before the first step: one line on stderr when the refinement will take more than a few minutes."""
    from neumours.refine.estimate import announce_refinement

    if not args.quiet:
        announce_refinement(device, args.path, args.steps, forward_s, case.shape, case.spacing, cameras, settings.step)


def refine_command(args) -> None:
    from neumours.data import list_cases
    from neumours.data.layouts import case_files, resolve_case
    from neumours.outputs import Output, check_output_file, check_outputs
    from neumours.refine.checkpoint import check_targets, refine_checkpoint, report_path

    check_targets(args.from_labels, args.targets, args.masks)
    if not str(args.out).endswith(".safetensors"):
        raise NeumoursError(f"{args.out}: the refined checkpoint must end in .safetensors")
    check_output_file(args.out, "refined checkpoint (--out)")
    anchors = case_files(list_cases(args.anchor_data)) if args.anchor_data is not None else []
    check_outputs([Output(args.out, "refined checkpoint (--out)"), Output(report_path(args.out), "its report")],
                  [*case_files([resolve_case(args.case)]), ("--checkpoint", args.checkpoint),
                   ("--from-labels", args.from_labels), ("--targets", args.targets), *anchors])
    report = refine_checkpoint(args.checkpoint, args.case, from_labels=args.from_labels, targets=args.targets,
                               masks=args.masks, views=args.views, size=args.size, steps=args.steps, lr=args.lr,
                               path=args.path, anchor_data=args.anchor_data, anchor_weight=args.anchor_weight,
                               device=args.device, precision=args.precision, force_geometry=args.force_geometry,
                               progress=not args.quiet, announce=not args.quiet)
    report.write(args.out)
    rows = report.steps
    print(f"refined {args.checkpoint} on {report.case} from {report.views} views in {args.steps} steps: "
          f"image loss {rows[0]['image_loss']:.4g} -> {rows[-1]['image_loss']:.4g}; wrote {args.out}")


def add_parsers(sub) -> None:
    p = add_command(sub, "refine", "correct a trained INR from rendered views of one case", DESCRIPTION, EPILOG,
                    usage="neumours refine CASE --checkpoint CKPT (--from-labels SEG | --targets DIR) --out CKPT2 "
                          "[options]", examples=EXAMPLES)
    p.add_argument("case", type=Path, help="the case to refine on (a case folder, any layout)")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint to start from (.safetensors)")
    p.add_argument("--targets", type=Path,
                   help="folder holding targets.npz (or the .npz file itself): cameras and images or masks")
    p.add_argument("--from-labels", type=Path, help="corrected label NIfTI, rendered from --views cameras")
    p.add_argument("--views", type=int_range(1, 360), default=4,
                   help="with --from-labels: orbiting cameras at equal azimuth steps")
    p.add_argument("--masks", action="store_true",
                   help="with --from-labels: tumour masks of the corrected labels as targets, not colour images")
    p.add_argument("--size", type=image_size, default="256x256",
                   help="with --from-labels: target image size, WIDTHxHEIGHT")
    p.add_argument("--steps", type=int_range(1, 1_000_000), default=20, help="AdamW steps")
    p.add_argument("--lr", type=finite_float(gt=0, max=1), default=1e-4, help="AdamW learning rate")
    p.add_argument("--path", choices=("cache", "direct"), default="cache",
                   help="gradient path: through the volume cache (a) or the INR at the ray samples (b)")
    p.add_argument("--anchor-data", type=Path,
                   help="folder of other cases whose predictions should stay as they are (first 4 used)")
    p.add_argument("--anchor-weight", type=finite_float(0, 1e6), default=1.0, help="weight of the anchor penalty")
    p.add_argument("--out", type=Path, required=True,
                   help="refined checkpoint to write (.safetensors); its .json report goes beside it")
    add_force_geometry_option(p)
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=refine_command)
