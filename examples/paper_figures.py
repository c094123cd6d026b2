"""The paper's qualitative figures for a trained checkpoint on one case:

- Fig. 5 style: FLAIR axial slice with ground truth | INR raw | INR denoised overlays;
- Fig. 7 style: volume renders of FLAIR with the same three label volumes.

    python examples/paper_figures.py CASE --checkpoint best.safetensors [--out DIR] [--size 480x400]

Writes DIR/fig5_slices.png and DIR/fig7_renders.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from neumours.atomic import atomic_path
from neumours.conventions import CLASS_NAMES
from neumours.data import load_case
from neumours.device import get_device
from neumours.figures import segmentation_comparison
from neumours.infer.segment import Segmenter
from neumours.render import Frame, RenderSettings, Scene, auto_windows, render_device
from neumours.cli.render import parse_size
from neumours.render.framing import framed_orbit
from neumours.render.io import stamp_label_legend, stamp_title
from neumours.render.skipping import occupied_box
from neumours.render.transfer import labels_visible

TITLES = ("ground truth", "INR raw", "INR denoised")


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("paper-figures"))
    parser.add_argument("--size", default="480x400")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    width, height = parse_size(args.size)
    device = get_device(args.device)
    case = load_case(args.case)

    # Volume caching once: raw and denoised labels from one pass of the INR.
    result = Segmenter(args.checkpoint, device)(case, denoise=True)
    volumes = [case.label, result.raw_labels, result.labels]
    slices = segmentation_comparison([(case.case_id, case.images[3], volumes)], args.out / "fig5_slices.png",
                                     titles=TITLES)

    # FLAIR only (the paper's Fig. 7), the same camera for the three label volumes, framed on the brain,
    # a thinner brain so the labels show, each panel titled.
    settings = labels_visible(RenderSettings(windows=auto_windows(case.images), step=0.01).with_modalities({"t2f": 1.0}))
    camera = framed_orbit(case.shape, case.spacing, occupied_box(volumes=case.images), -60.0, 25.0, width, height,
                          fov_y_deg=35.0)
    frame = Frame.allocate(device, width, height)
    panels = []
    for title, labels in zip(TITLES, volumes):
        render_device(Scene.upload(device, case.spacing, volumes=case.images, labels=labels), camera, settings, frame)
        panels.append(stamp_title((np.clip(frame.to_numpy()[0], 0, 1) * 255).astype(np.uint8), title))
    strip = stamp_label_legend(np.concatenate(panels, axis=1), settings.lut.colours[1:], CLASS_NAMES[1:])
    renders = args.out / "fig7_renders.png"
    with atomic_path(renders) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    print(f"wrote {slices} and {renders} ({' | '.join(TITLES)})")
    return [slices, renders]


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
