"""The same work on several slangpy device kinds in one process: one column per device.

Rows, each the median of ``--repeats`` synchronised runs:

- inference: the INR over every voxel of a ``--shape`` grid (``VolumeCache``: the patch gather,
  the network, the arg-max; the volumes already on the device);
- training step: ``Trainer.train_step`` (sample on the host, gather, forward, loss, backward,
  clip, the torch optimiser's step through the bridge: on CUDA zero-copy, elsewhere the
  parameters and gradients cross to the host and torch steps them there) on ``--cases``
  phantoms of ``--train-shape``, the ``--config`` preset's batch;
- render: one raymarched frame of ``--size`` of a phantom case of ``--shape`` (four MRI
  modalities and labels, dt 0.02).

The CPU device is far slower than a GPU (the tiny network took ~0.15 ms a point on a 2-core
machine): ``--cpu-scale`` gives it a
fraction of the points and pixels and scales its times back up (the cost per point and per
pixel does not depend on their number, apart from fixed launch costs that this then
overstates); its training step is not scaled, so run the paper network on it only with
patience (minutes a step) and compare the three kinds with ``--config tiny``.

Each cell is the seconds and the ratio to CUDA's (or to the first device's, without CUDA):
how many times slower. ``--precision auto`` runs each device at its default (bf16 tensor
cores on CUDA, whose kernels are CUDA C++; fp32 on Vulkan, Metal and the CPU); ``fp32``
compares the same kernels everywhere. A device kind that cannot be created here gets its
reason instead of numbers. Writes every timing to ``--json``.

    python benchmarks/devices.py --devices cuda vulkan --config paper [--precision fp32] [--json devices.json]
    python benchmarks/devices.py --devices cuda vulkan cpu --config tiny --cpu-scale 0.005 --json devices_tiny.json
    python benchmarks/devices.py --devices cpu --config tiny --shape 16 16 16 --train-shape 16 16 16 \\
        --size 32x24 --steps 1 --repeats 1 --json /tmp/devices.json   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_sync, print_table, time_it, write_json  # noqa: E402

from neumours.cli.render import parse_size  # noqa: E402
from neumours.data.phantom import make_case, write_dataset  # noqa: E402
from neumours.device import DEVICE_KINDS, ScratchBuffers, describe, get_device  # noqa: E402
from neumours.errors import DeviceUnavailableError  # noqa: E402
from neumours.infer.cache import VolumeCache  # noqa: E402
from neumours.model.inputs import CaseVolumes  # noqa: E402
from neumours.model.inr import INR, resolve_precision  # noqa: E402
from neumours.render import Frame, RenderSettings, Scene, auto_windows, fit_distance, orbit, render_device, volume_box  # noqa: E402,E501
from neumours.train.config import preset  # noqa: E402
from neumours.train.trainer import Trainer  # noqa: E402

TASKS = ("inference", "training step", "render")
SPACING = (1.0, 1.0, 1.0)


def scaled_shape(shape, scale: float) -> tuple[int, ...]:
    """``shape`` with its element count times ``scale`` (each axis by the same factor), at least 16 a side."""
    f = scale ** (1 / len(shape))
    return tuple(max(16, round(n * f)) for n in shape)


def measure(kind: str, args, data: Path, work: Path) -> dict:
    """Time the three tasks on one device kind; ``{"error": reason}`` when it cannot be created."""
    try:
        device = get_device(kind, announce=False)
    except DeviceUnavailableError as exc:
        return {"error": str(exc)}
    sync = device_sync(device)
    train = preset(args.config)
    network = dataclasses.replace(train.network, precision=args.precision)
    shape, size = tuple(args.shape), parse_size(args.size)
    grid, pixels = shape, size
    if kind == "cpu" and args.cpu_scale != 1:  # the CPU takes minutes at GPU sizes: fewer points and pixels
        grid, pixels = scaled_shape(shape, args.cpu_scale), scaled_shape(size, args.cpu_scale)
    grid_scale, pixel_scale = math.prod(shape) / math.prod(grid), math.prod(size) / math.prod(pixels)
    case = make_case(shape, seed=0)
    result = {"device": describe(device), "precision": resolve_precision(args.precision, device),
              "grid": list(grid), "pixels": list(pixels), "scaled": grid != shape or pixels != size}

    inr = INR(network, device, seed=0)
    volumes = CaseVolumes.upload(device, [make_case(grid, seed=0).images if grid != shape else case.images])
    scratch = ScratchBuffers(device)
    t = time_it(lambda: VolumeCache(inr, volumes, scratch=scratch), sync, args.repeats, warmup=1)
    result["inference"] = {**t, "points": math.prod(grid), "seconds": t["median_s"] * grid_scale}

    config = dataclasses.replace(train, network=network)
    trainer = Trainer(data, work / f"run_{kind}", config, device, progress=False)
    try:
        t = time_it(lambda: [trainer.train_step() for _ in range(args.steps)], sync, args.repeats, warmup=1)
    finally:
        trainer.close()
    result["training step"] = {**t, "steps": args.steps, "seconds": t["median_s"] / args.steps}

    width, height = pixels
    settings = RenderSettings(windows=auto_windows(case.images), step=0.02)
    camera = orbit(30.0, 20.0, fit_distance(volume_box(shape, SPACING), 30.0, width / height), width=width,
                   height=height)
    scene = Scene.upload(device, SPACING, volumes=case.images, labels=case.label)
    frame = Frame.allocate(device, width, height)
    t = time_it(lambda: render_device(scene, camera, settings, frame), sync, args.repeats, warmup=1)
    result["render"] = {**t, "size": [width, height], "seconds": t["median_s"] * pixel_scale}
    return result


def table(results: dict, kinds: list[str]) -> list[dict]:
    """One row per task, one column per device: ``seconds (ratio to the reference device)``."""
    measured = [k for k in kinds if "error" not in results[k]]
    reference = "cuda" if "cuda" in measured else (measured[0] if measured else None)
    rows = []
    for task in TASKS:
        row = {"task": task}
        for kind in kinds:
            r = results[kind]
            if "error" in r:
                row[kind] = "not available"
                continue
            seconds = r[task]["seconds"]
            ratio = seconds / results[reference][task]["seconds"]
            scaled = " (scaled)" if r["scaled"] and task != "training step" else ""
            row[kind] = f"{seconds:.4g} s{scaled} ({ratio:.2f}x {reference})"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cuda", "vulkan", "cpu"], choices=DEVICE_KINDS)
    parser.add_argument("--config", choices=["paper", "tiny"], default="paper", help="network and batch preset")
    parser.add_argument("--precision", choices=["auto", "fp32"], default="auto")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="inference grid and render case")
    parser.add_argument("--cpu-scale", type=float, default=1.0,
                        help="the CPU device infers this fraction of the grid's points and renders this fraction "
                             "of the pixels; its times are scaled back up per point and per pixel ('scaled')")
    parser.add_argument("--train-shape", type=int, nargs=3, default=[96, 96, 64], help="training phantoms")
    parser.add_argument("--cases", type=int, default=2, help="training phantoms")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    parser.add_argument("--size", default="1920x1080", help="render size WxH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="devices.json")
    args = parser.parse_args(argv)
    if not 0 < args.cpu_scale <= 1:
        parser.error("--cpu-scale must be in (0, 1]")
    if os.environ.get("NEUMOURS_DEVICE"):
        parser.error("NEUMOURS_DEVICE is set: it would turn every device of --devices into one kind; unset it")

    work = Path(tempfile.mkdtemp(prefix="devices_"))
    data = work / "data"
    write_dataset(data, args.cases, shape=tuple(args.train_shape), seed=0, progress=False)
    kinds = list(dict.fromkeys(args.devices))
    results = {}
    for kind in kinds:
        results[kind] = measure(kind, args, data, work)
        status = results[kind].get("error") or f"{results[kind]['device']}, {results[kind]['precision']}"
        print(f"{kind}: {status}", flush=True)
    payload = {"python": platform.python_version(), "config": args.config, "precision": args.precision,
               "shape": args.shape, "train_shape": args.train_shape, "size": args.size, "repeats": args.repeats,
               "devices": results}
    write_json(args.json, payload)
    columns = {k: (f"{k} ({results[k]['precision']})" if "error" not in results[k] else k) for k in kinds}
    rows = [{"task": r["task"], **{columns[k]: r[k] for k in kinds}} for r in table(results, kinds)]
    print(f"\n{args.config} network, grid {tuple(args.shape)}, render {args.size}, training {args.cases} x "
          f"{tuple(args.train_shape)} phantoms; medians of {args.repeats}")
    print_table(rows, ["task", *columns.values()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
