"""``neumours synth`` and ``neumours inspect``: write phantom cases, summarise cases."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import add_command, add_force_geometry_option, add_quiet_option
from neumours.errors import NeumoursError

#: Smallest phantom edge (voxels) the generator supports.
MIN_PHANTOM_EDGE = 16


def parse_shape(values: list[int]) -> tuple[int, int, int]:
    """``--shape X Y Z`` checked: three sizes of at least :data:`MIN_PHANTOM_EDGE`."""
    if len(values) != 3 or min(values) < MIN_PHANTOM_EDGE:
        raise NeumoursError(f"--shape needs three sizes of at least {MIN_PHANTOM_EDGE} voxels, got {values}")
    return tuple(values)


def cmd_synth(args) -> None:
    from neumours.data.phantom import write_dataset
    from neumours.outputs import check_output_folder

    if args.cases < 1:
        raise NeumoursError(f"--cases must be at least 1, got {args.cases}")
    shape = parse_shape(args.shape)
    check_output_folder(args.out, "output folder (--out)")
    paths = write_dataset(args.out, args.cases, shape=shape, seed=args.seed,
                          progress=not args.quiet)
    print(f"wrote {len(paths)} phantom case(s) to {args.out}")


def cmd_inspect(args) -> None:
    from neumours.data import list_cases, load_case
    from neumours.summary import case_summary, format_case_summary

    for ref in list_cases(args.case):
        print(format_case_summary(case_summary(load_case(ref, force_geometry=args.force_geometry))))


def add_parsers(sub) -> None:
    p = add_command(sub, "synth", "write synthetic BraTS-style phantom cases",
                    "Write N phantom cases in the BraTS 2023 layout (1 mm spacing): four modalities and a "
                    "label volume per case.")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--cases", type=int, default=4, help="number of cases")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"),
                   help="volume shape in voxels (BraTS is 240 240 155)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_quiet_option(p)
    p.set_defaults(func=cmd_synth)

    p = add_command(sub, "inspect", "summarise a case (or every case under a folder)",
                    "Shapes, spacing, orientation, affine check, intensities and label volumes in mL per "
                    "region (NCR, ED, ET, TC, WT).")
    p.add_argument("case", type=Path, help="a case folder, or a folder of cases (BraTS, MU-Glioma-Post or nnU-Net "
                                           "layout)")
    add_force_geometry_option(p)
    p.set_defaults(func=cmd_inspect)
