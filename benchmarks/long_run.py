"""Long-run stability on the GPU: many paper training steps in bf16 and fp32, and many
render-loss refinement steps on one case, checking that nothing drifts.

Every ``--every`` steps it prints and records: the loss and gradient norm of that step,
whether every weight and the loss are finite, the GPU memory in use on the whole device
(``torch.cuda.mem_get_info``, which sees slangpy's allocations too) and the steps/s since
the previous report. At the end it says whether memory stayed flat after warm-up (the
largest rise after the first report, in MiB) and, as the throughput peer, the same number
of steps of the torch bf16 loop of ``train_step.py`` for ``--peer-steps`` steps.

Training: a phantom dataset of ``--cases`` cases of ``--shape`` voxels, the paper preset with
``--steps`` steps (the schedule's length, so the learning rate decays as in a real run).
Refinement: ``neumours.refine.loop.refine`` (path "cache", bf16 INR) on one 240 x 240 x 155
phantom towards a corrected label map rendered from ``--views`` cameras of ``--size`` pixels.

    python benchmarks/long_run.py [--steps 10000] [--precisions bf16 fp32] [--refine-steps 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, write_json  # noqa: E402

from neumours.data import normalise  # noqa: E402
from neumours.data.phantom import make_case, write_dataset  # noqa: E402
from neumours.device import describe, get_device  # noqa: E402
from neumours.model.config import INRConfig  # noqa: E402
from neumours.model.inputs import CaseVolumes  # noqa: E402
from neumours.model.inr import INR  # noqa: E402
from neumours.refine.loop import refine  # noqa: E402
from neumours.render import RenderSettings  # noqa: E402
from neumours.render.views import orbit_cameras, render_label_views  # noqa: E402
from neumours.train.config import preset  # noqa: E402
from neumours.train.trainer import Trainer  # noqa: E402

MIB = 1 << 20


def gpu_used_mib() -> float:
    """Memory in use on the whole GPU (every process and allocator), MiB."""
    free, total = torch.cuda.mem_get_info()
    return (total - free) / MIB


def weights_finite(inr: INR) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in inr.state_dict().values())


def report(label: str, step: int, loss: float, grad_norm: float | None, finite: bool, memory: float,
           rate: float) -> dict:
    norm = "-" if grad_norm is None else f"{grad_norm:.4f}"
    print(f"{label:>10} step {step:6d}  loss {loss:.5f}  grad_norm {norm:>6}  finite {finite}  "
          f"gpu {memory:8.1f} MiB  {rate:7.1f} steps/s", flush=True)
    return {"step": step, "loss": loss, "grad_norm": grad_norm, "finite": finite, "gpu_mib": memory,
            "steps_per_s": rate}


def summarise(label: str, rows: list[dict]) -> dict:
    memory = [r["gpu_mib"] for r in rows]
    rise = max(memory[1:], default=memory[0]) - memory[0]
    finite = all(r["finite"] and np.isfinite(r["loss"]) for r in rows)
    rate = float(np.median([r["steps_per_s"] for r in rows[1:]] or [rows[0]["steps_per_s"]]))
    print(f"{label}: all finite {finite}; GPU memory {memory[0]:.1f} MiB after warm-up, largest rise after it "
          f"{rise:+.1f} MiB; median {rate:.1f} steps/s", flush=True)
    return {"rows": rows, "all_finite": finite, "memory_rise_mib": rise, "median_steps_per_s": rate}


def long_training(data: Path, work: Path, precision: str, steps: int, every: int, device) -> dict:
    config = preset("paper")
    config = dataclasses.replace(config, network=dataclasses.replace(config.network, precision=precision),
                                 schedule=dataclasses.replace(config.schedule, steps=steps, val_every=steps + 1))
    trainer = Trainer(data, work / f"run_{precision}", config, device, progress=False)
    rows, last, last_step = [], time.perf_counter(), 0
    losses_finite = True  # every step's, not only the reported ones
    for _ in range(steps):
        row = trainer.train_step()
        losses_finite = losses_finite and bool(np.isfinite(row["loss"]))
        if trainer.step % every == 0:
            device.wait_for_idle()
            now = time.perf_counter()
            rows.append(report(f"train {precision}", trainer.step, row["loss"], row["grad_norm"],
                               weights_finite(trainer.inr) and losses_finite, gpu_used_mib(),
                               (trainer.step - last_step) / (now - last)))
            last, last_step = now, trainer.step
    trainer.close()
    return summarise(f"train {precision}", rows)


def torch_peer(data: Path, work: Path, steps: int, device) -> float:
    """Steps/s of train_step.py's torch bf16 loop over ``steps`` steps."""
    from train_step import TorchLoop

    trainer = Trainer(data, work / "run_peer", preset("paper"), device, progress=False)
    loop = TorchLoop(trainer, bf16=True)
    for _ in range(20):
        loop.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    torch.cuda.synchronize()
    trainer.close()
    return steps / (time.perf_counter() - start)


def long_refinement(steps: int, every: int, views: int, size: int, device) -> dict:
    from scipy import ndimage

    case = make_case((240, 240, 155), seed=0)
    spacing = (1.0, 1.0, 1.0)
    inr = INR(dataclasses.replace(INRConfig.paper(), precision="bf16"), device)
    vols = CaseVolumes.upload(device, [normalise(case.images)])
    settings = RenderSettings()
    corrected = case.label.copy()
    corrected[ndimage.binary_dilation(case.label == 3, iterations=2) & (case.label > 0)] = 3
    cameras = orbit_cameras(case.label.shape, spacing, views, size=(size, size))
    targets = render_label_views(device, corrected, spacing, cameras, settings)
    rows, last = [], time.perf_counter()
    for done in range(every, steps + 1, every):
        history = refine(inr, vols, spacing, cameras, settings, targets, steps=every, lr=5e-4)
        device.wait_for_idle()
        now = time.perf_counter()
        loss = history[-1]["image_loss"]
        rows.append(report("refine", done, loss, None, weights_finite(inr) and
                           all(np.isfinite(h["image_loss"]) for h in history), gpu_used_mib(), every / (now - last)))
        last = now
    return summarise("refine", rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10000, help="training steps per precision")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--every", type=int, default=1000, help="report every N steps")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 96])
    parser.add_argument("--peer-steps", type=int, default=1000, help="steps of the torch bf16 peer (0: none)")
    parser.add_argument("--refine-steps", type=int, default=1000, help="refinement steps (0: none)")
    parser.add_argument("--refine-every", type=int, default=100)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", default="long_run.json")
    add_device_argument(parser, note="it reads torch.cuda's memory figures")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    work = Path(tempfile.mkdtemp())
    write_dataset(work / "data", args.cases, shape=tuple(args.shape), seed=0, progress=False)
    results = {"device": describe(device), "torch": torch.__version__, "args": vars(args)}
    for precision in args.precisions if args.steps else ():
        results[f"train_{precision}"] = long_training(work / "data", work, precision, args.steps, args.every, device)
    if args.peer_steps and args.steps:
        rate = torch_peer(work / "data", work, args.peer_steps, device)
        results["torch_bf16_steps_per_s"] = rate
        for precision in args.precisions:
            ours = results[f"train_{precision}"]["median_steps_per_s"]
            print(f"slang {precision} {ours:.1f} steps/s vs torch bf16 {rate:.1f} steps/s: {ours / rate:.2f}x")
    if args.refine_steps:
        results["refine"] = long_refinement(args.refine_steps, args.refine_every, args.views, args.size, device)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
