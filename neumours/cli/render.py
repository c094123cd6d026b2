"""The ``neumours render`` command: a case (and its segmentation) to a PNG, GIF or MP4.

    neumours render CASE [--seg SEG.nii.gz | --probs PROBS.nii.gz | --ground-truth | --checkpoint CKPT]
                    --out IMG.png
                    [--size 1920x1080] [--azimuth A --elevation E] [--modalities t2f=1,t1c=0.5]
                    [--step 0.02] [--turntable N]

``--seg`` overlays hard labels (nearest voxel); ``--probs`` the class
probabilities that ``neumours segment --probs`` writes, (X, Y, Z, 4), sampled
trilinearly (the renderer's differentiable path).
MRI windows come from each modality's intensity percentiles (``auto_windows``);
``--modalities`` enables exactly the listed modalities with the given weights.
Every input is checked before anything is rendered, and the output file is
written atomically, so a failure leaves no partial output behind.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from neumours.cli.options import (add_command, add_device_option, add_force_geometry_option,
                                  add_precision_option, add_quiet_option, finite_float, int_range)
from neumours.errors import NeumoursError

_MAX_SIZE = 16384
#: Largest --modalities weight.
MAX_WEIGHT = 1000.0
#: Most --turntable frames (a minute at 60 frames/s).
MAX_FRAMES = 3600


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise NeumoursError(f"--size must be WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= _MAX_SIZE and 1 <= height <= _MAX_SIZE):
        raise NeumoursError(f"--size must have width and height in 1..{_MAX_SIZE}, got {text!r}")
    return width, height


def image_size(text: str) -> tuple[int, int]:
    """The argparse ``type`` of ``--size``: :func:`parse_size`, its error as argparse's."""
    import argparse

    try:
        return parse_size(text)
    except NeumoursError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--size ")) from None


def parse_modalities(text: str) -> dict[str, float]:
    """``"t2f=1,t1c=0.5"`` -> {"t2f": 1.0, "t1c": 0.5}; a bare name means weight 1."""
    from neumours.conventions import MODALITIES

    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        name = name.strip().lower()
        if name not in MODALITIES:
            raise NeumoursError(f"--modalities: unknown modality {name!r} (expected some of {', '.join(MODALITIES)}, "
                                "e.g. t2f=1,t1c=0.5)")
        try:
            weight = float(value) if value.strip() else 1.0
        except ValueError:
            raise NeumoursError(f"--modalities: weight of {name} is not a number: {value!r}") from None
        if not (math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT):
            raise NeumoursError(f"--modalities: weight of {name} must be in [0, {MAX_WEIGHT:g}], got {value!r}")
        weights[name] = weight
    return weights


def _check_args(args) -> tuple[tuple[int, int], dict[str, float] | None]:
    from neumours.render.io import ANIMATION_SUFFIXES, IMAGE_SUFFIXES, mp4_available

    size = args.size  # numbers (--size, --step, --fov, angles, --fps, --turntable) are checked by the parser
    modalities = parse_modalities(args.modalities) if args.modalities else None
    suffix = args.out.suffix.lower()
    if args.turntable is not None:
        if args.turntable > MAX_FRAMES:
            raise NeumoursError(f"--turntable must be at most {MAX_FRAMES} frames, got {args.turntable}")
        if suffix not in ANIMATION_SUFFIXES:
            raise NeumoursError(f"{args.out}: --turntable writes {' or '.join(ANIMATION_SUFFIXES)}")
        if suffix == ".mp4" and not mp4_available():
            raise NeumoursError(f"{args.out}: writing .mp4 needs imageio and imageio-ffmpeg "
                                "(pip install 'neumours[video]'); or write a .gif")
    elif suffix not in IMAGE_SUFFIXES:
        raise NeumoursError(f"{args.out}: output must end in {', '.join(IMAGE_SUFFIXES)} "
                            "(or use --turntable N with .gif/.mp4)")
    if args.denoise and args.checkpoint is None:
        raise NeumoursError("--denoise applies to --checkpoint only")
    from neumours.data.layouts import case_files, resolve_case
    from neumours.outputs import Output, check_output_file, check_outputs

    check_output_file(args.out, "image (--out)")
    check_outputs([Output(args.out, "image (--out)")],
                  [*case_files([resolve_case(args.case)]), ("--seg", args.seg), ("--probs", args.probs),
                   ("--checkpoint", args.checkpoint)])
    return size, modalities


def _probabilities(path: Path, case):
    """(4, X, Y, Z) class probabilities from a (X, Y, Z, 4) NIfTI."""
    import numpy as np

    from neumours.conventions import NUM_CLASSES
    from neumours.data.nifti import read_nifti

    data = np.asarray(read_nifti(path).get_fdata(dtype=np.float32))
    if data.shape != (*case.shape, NUM_CLASSES):
        raise NeumoursError(f"{path}: probabilities shape {data.shape} does not match case {case.case_id} "
                            f"(expected {(*case.shape, NUM_CLASSES)})")
    if not np.isfinite(data).all():
        raise NeumoursError(f"{path}: probabilities contain NaN/Inf")
    return np.moveaxis(data, -1, 0)


def _labels(args, case):
    import numpy as np

    from neumours.data.nifti import read_label_volume

    if args.seg is not None:
        label, _ = read_label_volume(args.seg, force_geometry=args.force_geometry)
        if label.shape != case.shape:
            raise NeumoursError(f"{args.seg}: label shape {label.shape} does not match case "
                                f"{case.case_id} shape {case.shape}")
        return np.asarray(label)
    if args.ground_truth:
        if case.label is None:
            raise NeumoursError(f"{args.case}: case {case.case_id} has no label file for --ground-truth")
        return case.label
    return None


def render_command(args) -> None:
    """Run ``neumours render`` with parsed arguments (see :func:`add_parsers`)."""
    (width, height), modalities = _check_args(args)

    from neumours.data import load_case
    from neumours.device import get_device
    from neumours.render import Frame, RenderSettings, Scene, auto_windows, orbit, render_device
    from neumours.render.framing import framed_orbit
    from neumours.render.skipping import occupied_box
    from neumours.render.transfer import labels_visible
    from neumours.conventions import CLASS_NAMES
    from neumours.render.io import stamp_label_legend, to_uint8, write_animation, write_image
    from tqdm import tqdm

    case = load_case(args.case, force_geometry=args.force_geometry)
    labels = _labels(args, case)
    probabilities = _probabilities(args.probs, case) if args.probs is not None else None
    settings = RenderSettings(windows=auto_windows(case.images), step=args.step)
    if modalities is not None:
        settings = settings.with_modalities(modalities)

    device = get_device(args.device)
    scene = Scene.upload(device, case.spacing, volumes=case.images, labels=labels, probabilities=probabilities)
    if args.checkpoint is not None:  # volume caching: the INR over the whole case, arg-max labels
        from neumours.infer.segment import Segmenter

        segmenter = Segmenter(args.checkpoint, device, precision=args.precision)
        segmenter.fits(args.case, case.shape, case.images.shape[0])
        scene.labels = segmenter.labels_on_device(case, denoise=args.denoise)
    frame = Frame.allocate(device, width, height)
    if scene.label_mode != 0:  # a thinner brain, so the labels inside it show
        settings = labels_visible(settings)
    brain = occupied_box(volumes=case.images)
    count = args.turntable or 1
    images = []
    for k in tqdm(range(count), desc="render", unit="frame", disable=args.quiet or count < 2, leave=False):
        azimuth = args.azimuth + 360.0 * k / count
        if args.distance is None:  # framed on the brain: it fills the frame from every angle
            camera = framed_orbit(case.shape, case.spacing, brain, azimuth, args.elevation, width, height, args.fov)
        else:
            camera = orbit(azimuth, args.elevation, args.distance, fov_y_deg=args.fov, width=width, height=height)
        render_device(scene, camera, settings, frame)
        image = to_uint8(frame.to_numpy()[0])
        if scene.label_mode != 0 and not args.no_legend:  # a key to the label colours (tumour classes)
            image = stamp_label_legend(image, settings.lut.colours[1:], CLASS_NAMES[1:])
        images.append(image)
    if args.turntable is None:
        write_image(args.out, images[0])
    else:
        write_animation(args.out, images, fps=args.fps)
    print(f"wrote {args.out} ({width}x{height}, {count} frame{'s' if count > 1 else ''})")


def add_parsers(sub) -> None:
    """Add the ``render`` subcommand to the ``neumours`` command's subparsers."""
    p = add_command(sub, "render", "render a case (and a segmentation) with the differentiable raymarcher",
                    "Ray-march the four MRI modalities of a case, optionally with a segmentation, to a PNG "
                    "(or a GIF/MP4 turntable with --turntable N). MRI windows come from each modality's intensity "
                    "percentiles. At most one of --seg, --probs, --ground-truth and --checkpoint.",
                    examples=("neumours render data/Phantom-00000-000 --seg seg.nii.gz --out view.png --size 1280x720",
                              "neumours render data/Phantom-00000-000 --ground-truth --turntable 36 --out spin.gif"))
    p.add_argument("case", type=Path, help="a case folder (BraTS, MU-Glioma-Post or nnU-Net layout)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--seg", type=Path, help="label NIfTI (0..3, or legacy 4) to overlay")
    source.add_argument("--probs", type=Path, help="class probabilities (X, Y, Z, 4) NIfTI (soft, trilinear)")
    source.add_argument("--ground-truth", action="store_true", help="overlay the case's own label file")
    source.add_argument("--checkpoint", type=Path, help="segment the case with an INR checkpoint first")
    p.add_argument("--out", type=Path, required=True, help="output .png (.jpg), or .gif/.mp4 with --turntable")
    p.add_argument("--size", type=image_size, default="1920x1080", help="image size, WIDTHxHEIGHT")
    p.add_argument("--azimuth", type=finite_float(-3600, 3600), default=30.0,
                   help="camera angle about +z from +x, degrees")
    p.add_argument("--elevation", type=finite_float(-90, 90), default=20.0,
                   help="camera angle above the xy plane, degrees")
    p.add_argument("--distance", type=finite_float(gt=0, max=1e6), default=None,
                   help="orbit distance in box units, about the box's centre (default: framed on the brain, which "
                        "then fills the frame)")
    p.add_argument("--fov", type=finite_float(gt=0, lt=180), default=30.0, help="vertical field of view, degrees")
    p.add_argument("--modalities", default=None,
                   help="enabled modalities and weights, e.g. t2f=1,t1c=0.5 (default: all four at 0.25)")
    p.add_argument("--step", type=finite_float(gt=0), default=0.02,
                   help="ray-march step in box units (the longest axis spans 2)")
    p.add_argument("--turntable", type=int_range(1, unit="frame"), default=None, metavar="N",
                   help=f"N frames around the case (.gif/.mp4), at most {MAX_FRAMES}")
    p.add_argument("--fps", type=finite_float(gt=0, max=240), default=15.0, help="turntable frame rate")
    p.add_argument("--denoise", action="store_true", help="with --checkpoint: denoise the segmentation first")
    p.add_argument("--no-legend", action="store_true",
                   help="no colour key of the label classes (drawn on label overlays at least 96 pixels high)")
    add_force_geometry_option(p)
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p, "no progress bar over the frames of a turntable")
    p.set_defaults(func=render_command)
