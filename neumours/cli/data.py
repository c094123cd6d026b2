"""``neumours synth`` and ``neumours inspect``: write phantom cases, summarise cases."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import add_command, add_force_geometry_option, add_quiet_option, int_range, seed
from neumours.data.phantom_randomised_ranges import FACTORS, RANDOMISED_DIFFICULTY
from neumours.data.phantom_ranges import DIFFICULTIES, KINDS
from neumours.errors import NeumoursError

#: Smallest and largest phantom edge (voxels) the generator supports.
MIN_PHANTOM_EDGE, MAX_PHANTOM_EDGE = 16, 512
#: ``--shape`` sizes, each checked by the parser.
shape_edge = int_range(MIN_PHANTOM_EDGE, MAX_PHANTOM_EDGE)
#: Most voxels of one phantom (about 3.6 BraTS volumes): the generator holds some twenty float
#: volumes of a case at once, ~2.5 GB at this size.
MAX_PHANTOM_VOXELS = 32 * 2**20


def parse_shape(values: list[int]) -> tuple[int, int, int]:
    """``--shape X Y Z`` checked: three sizes in MIN..MAX_PHANTOM_EDGE, at most MAX_PHANTOM_VOXELS voxels.

    Raises:
        NeumoursError: naming ``--shape`` and the allowed range (before any memory is taken).
    """
    if len(values) != 3 or min(values) < MIN_PHANTOM_EDGE or max(values) > MAX_PHANTOM_EDGE:
        raise NeumoursError(f"--shape needs three sizes of {MIN_PHANTOM_EDGE} to {MAX_PHANTOM_EDGE} voxels, "
                            f"got {' '.join(map(str, values))}")
    voxels = values[0] * values[1] * values[2]
    if voxels > MAX_PHANTOM_VOXELS:
        raise NeumoursError(f"--shape {' '.join(map(str, values))}: {voxels:,} voxels, more than the "
                            f"{MAX_PHANTOM_VOXELS:,} a phantom may have (BraTS 240 240 155 has 8,928,000)")
    return tuple(values)


def cmd_synth(args) -> None:
    from neumours.data.phantom import write_dataset
    from neumours.data.phantom_ranges import load_ranges, phantom_ranges
    from neumours.outputs import Output, check_output_file, check_output_folder, check_outputs

    if args.cases < 1:
        raise NeumoursError(f"--cases must be at least 1, got {args.cases}")
    if args.preview_cases < 1:
        raise NeumoursError(f"--preview-cases must be at least 1, got {args.preview_cases}")
    shape = parse_shape(args.shape)
    if args.difficulty == "classic" and (args.kind != "pre" or args.ranges is not None):
        raise NeumoursError("--difficulty classic is the original pre-operative recipe: it takes no --ranges "
                            "and no --kind post")
    ranges = None
    if args.difficulty == RANDOMISED_DIFFICULTY:
        if args.ranges is not None:
            raise NeumoursError("--ranges overrides the easy, medium and hard presets; --difficulty randomised "
                                "takes --fixed FACTOR instead")
        from neumours.data.phantom_randomised_ranges import randomised_ranges

        ranges = randomised_ranges(fixed=args.fixed or ())
    elif args.fixed:
        raise NeumoursError(f"--fixed holds a factor of --difficulty randomised fixed; --difficulty {args.difficulty} "
                            "has no factors")
    elif args.ranges is not None:
        try:
            ranges = load_ranges(args.ranges, phantom_ranges(args.difficulty, args.kind))
        except ValueError as exc:
            raise NeumoursError(str(exc)) from None
    check_output_folder(args.out, "output folder (--out)")
    if args.preview is not None:
        check_output_file(args.preview, "preview image")
    check_outputs([Output(args.out, "output folder (--out)", folder=True, kind="dataset"),
                   Output(args.preview, "preview image")], [("--ranges", args.ranges)])
    shown = []

    def keep(case) -> None:
        if len(shown) < args.preview_cases:
            shown.append(case)

    try:
        paths = write_dataset(args.out, args.cases, shape=shape, seed=args.seed, progress=not args.quiet,
                              difficulty=args.difficulty, kind=args.kind, ranges=ranges,
                              on_case=keep if args.preview is not None else None,
                              overwrite=args.overwrite)
    except MemoryError:
        raise NeumoursError(f"--shape {' '.join(map(str, shape))}: not enough memory to generate a case of this "
                            "size; choose a smaller --shape") from None
    if args.difficulty == "classic":
        what = "classic recipe"
    elif args.difficulty == RANDOMISED_DIFFICULTY:
        fixed = f", fixed {', '.join(sorted(set(args.fixed)))}" if args.fixed else ""
        what = f"randomised{fixed}, {args.kind}-operative"
    else:
        what = f"{args.difficulty if ranges is None else 'custom'}, {args.kind}-operative"
    print(f"wrote {len(paths)} phantom case(s) ({what}) to {args.out}")
    if args.preview is not None:
        from neumours.figures import case_montage

        print(f"wrote preview {case_montage(shown, args.preview)}")


def cmd_inspect(args) -> None:
    from neumours.data import list_cases, load_case
    from neumours.summary import case_summary, format_case_summary

    from tqdm import tqdm

    refs = list_cases(args.case)
    with tqdm(refs, desc="inspect", unit="case", disable=args.quiet or len(refs) < 2, leave=False) as bar:
        for ref in bar:  # the bar on stderr, the summaries on stdout
            summary = format_case_summary(case_summary(load_case(ref, force_geometry=args.force_geometry)))
            bar.clear()
            print(summary, flush=True)


def add_parsers(sub) -> None:
    p = add_command(sub, "synth", "write synthetic BraTS-style phantom cases",
                    "Write N phantom cases in the BraTS 2023 layout (1 mm spacing): four modalities and a "
                    "label volume per case, plus synth.toml recording how they were made. Each case draws its "
                    "anatomy, lesions, sub-regions and acquisition from the ranges of --difficulty "
                    "(docs/phantom.md).",
                    examples=("neumours synth --out data --cases 8 --shape 64 64 48 --preview preview.png",
                              "neumours synth --out post --cases 4 --kind post --seed 1000"))
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new or empty, or a dataset to replace whole with --overwrite")
    p.add_argument("--cases", type=int_range(1, 100_000), default=4, help="number of cases")
    p.add_argument("--shape", type=shape_edge, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"),
                   help="volume shape in voxels (BraTS is 240 240 155)")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--kind", choices=KINDS, default="pre",
                   help="pre: pre-operative gliomas (BraTS-like); post: post-operative cases with a resection cavity "
                        "(not tumour), residual enhancement and FLAIR change (MU-Glioma-Post-like)")
    p.add_argument("--difficulty", choices=DIFFICULTIES + (RANDOMISED_DIFFICULTY,), default="hard",
                   help="ranges of the phantom family (docs/phantom.md); classic: the original single recipe; "
                        "randomised: contrasts, lesion shapes, post-operative sites and acquisition randomised per "
                        "case (SynthSeg-style)")
    p.add_argument("--fixed", action="append", choices=FACTORS, metavar="FACTOR",
                   help=f"with --difficulty randomised: hold this factor ({', '.join(FACTORS)}) at its canonical "
                        "setting instead of randomising it (repeatable)")
    p.add_argument("--ranges", type=Path, metavar="TOML",
                   help="TOML file overriding ranges of the --difficulty preset (keys of PhantomRanges, or the "
                        "[ranges] table of a dataset's synth.toml)")
    p.add_argument("--preview", type=Path, metavar="PNG",
                   help="also write a montage (axial and coronal slices, labels overlaid) of the first cases")
    p.add_argument("--preview-cases", type=int_range(1, 64), default=3, help="cases shown in the --preview montage")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset already in --out, whole (without it such a folder is refused)")
    add_quiet_option(p)
    p.set_defaults(func=cmd_synth)

    p = add_command(sub, "inspect", "summarise a case (or every case under a folder)",
                    "Shapes, spacing, orientation, affine check, intensities and label volumes in mL per "
                    "region (NCR, ED, ET, TC, WT).",
                    examples=("neumours inspect data/Phantom-00000-000", "neumours inspect data --quiet"))
    p.add_argument("case", type=Path, help="a case folder, or a folder of cases (BraTS, MU-Glioma-Post or nnU-Net "
                                           "layout)")
    add_force_geometry_option(p)
    add_quiet_option(p, "no progress bar over the cases of a folder")
    p.set_defaults(func=cmd_inspect)
