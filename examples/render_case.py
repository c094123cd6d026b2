"""Render a case with a custom transfer function and modality weights, then a turntable.

    python examples/render_case.py [CASE] [--out DIR] [--size 960x540] [--frames 36] [--device auto]

CASE is a case folder (BraTS, MU-Glioma-Post or nnU-Net layout); without it a
synthetic phantom case is written to a temporary folder first. Writes
DIR/still.png and DIR/turntable.gif.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from neumours.data import load_case
from neumours.data.phantom import make_case, write_case
from neumours.device import get_device
from neumours.render import (Frame, LabelLUT, RenderSettings, Scene, TransferFunction, auto_windows, fit_distance,
                             orbit, render_device, volume_box)
from neumours.cli.render import parse_size
from neumours.conventions import CLASS_NAMES
from neumours.render.io import stamp_label_legend, to_uint8, write_animation, write_image


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", nargs="?", type=Path, help="case folder (default: a phantom case)")
    parser.add_argument("--out", type=Path, default=Path("render-example"))
    parser.add_argument("--size", default="960x540")
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    if args.case is None:  # a synthetic case, written like a real one
        args.case = write_case(make_case((96, 96, 64), seed=1), tempfile.mkdtemp(prefix="neumours-"))
    case = load_case(args.case)

    # Windows from each modality's brain-intensity percentiles (order t1n, t1c, t2w, t2f),
    # then a custom look: FLAIR in pale blue carries the anatomy and the oedema,
    # T1c in warm white picks out enhancement; t1n and t2w are switched off.
    windows = auto_windows(case.images, lo_percentile=40, hi_percentile=99.7)
    windows = (windows[0], replace(windows[1], tint=(1.0, 0.85, 0.7), gamma=0.8),
               windows[2], replace(windows[3], tint=(0.7, 0.8, 1.0)))
    settings = RenderSettings(
        windows=windows,
        # MRI extinction rises from 0 at weighted intensity 0.05 to 12 per box unit at 0.6.
        transfer=TransferFunction(density_scale=12.0, density_lo=0.05, density_hi=0.6, brightness=2.5),
        # Label extinctions (background, NCR, ED, ET): a faint oedema veil, a dense core.
        lut=LabelLUT(opacities=np.array([0.0, 60.0, 3.0, 60.0], np.float32)),
        step=0.01,
        background=(0.02, 0.02, 0.04),
    ).with_modalities({"t2f": 0.7, "t1c": 0.5})

    # Upload once; every frame then only sends a camera.
    device = get_device(args.device)
    scene = Scene.upload(device, case.spacing, volumes=case.images, labels=case.label)
    width, height = parse_size(args.size)
    frame = Frame.allocate(device, width, height)
    distance = fit_distance(volume_box(case.shape, case.spacing), 30.0, width / height)

    def shot(azimuth: float) -> np.ndarray:
        render_device(scene, orbit(azimuth, 25.0, distance, width=width, height=height), settings, frame)
        # A key to the label colours (drawn once the image is tall enough to hold it).
        return stamp_label_legend(to_uint8(frame.to_numpy()[0]), settings.lut.colours[1:], CLASS_NAMES[1:])

    still = write_image(args.out / "still.png", shot(40.0))
    turntable = write_animation(args.out / "turntable.gif", [shot(360.0 * k / args.frames) for k in range(args.frames)])
    print(f"wrote {still} and {turntable} ({args.frames} frames)")
    return [still, turntable]


if __name__ == "__main__":
    main(sys.argv[1:])
