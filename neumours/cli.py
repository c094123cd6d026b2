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

    result = run_demo(args.out, cases=args.cases, shape=_shape(args.shape), seed=args.seed)
    print(format_demo_report(result))


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
                       description="Synthesise phantom cases, load them through the data layer, "
                                   "and write a montage PNG and a summary.")
    p.add_argument("--out", type=Path, default=Path("neumours-demo"), help="output folder (default neumours-demo)")
    p.add_argument("--cases", type=int, default=3, help="number of phantom cases (default 3)")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
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
