"""Raymarcher frame rate on the GPU: Slang against the same integrator in torch, same GPU, same run.

A 240 x 240 x 155 phantom case (four modalities, labels), 1920 x 1080, dt = 0.02,
all four modalities enabled, orbiting camera (every frame moves the azimuth by
3 degrees). Timed:

- forward, frames/s: MRI + hard labels (nearest); MRI + class probabilities (trilinear);
- forward + backward, iterations/s, class-probability mode: gradients with respect to
  the probabilities, look-up table and modality weights (refinement), and the same
  plus the four MRI volumes.

The torch peer is ``neumours.render.reference`` in float32 on the same GPU: all rays
in lockstep with termination masks, trilinear/nearest sampling by ``grid_sample``;
its backward runs in chunks of rays to fit in memory. Prints a table with the ratios
and the relative difference between the two images; writes JSON.

    python benchmarks/render_fps.py [--size 1920x1080] [--shape 240 240 155] [--json render_fps.json]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_device_argument, print_table, time_it, write_json  # noqa: E402

from neumours.data.phantom import make_case  # noqa: E402
from neumours.device import describe, get_device, upload  # noqa: E402
from neumours.render import (ChannelVolume, Frame, Gradients, RenderSettings, Scene, auto_windows,  # noqa: E402
                             fit_distance, orbit, render_backward_device, render_device, volume_box)
from neumours.render.box import intersect_box  # noqa: E402
from neumours.cli.render import parse_size  # noqa: E402
from neumours.render.reference import TorchScene, camera_rays, march_rays  # noqa: E402

SPACING = (1.0, 1.0, 1.0)


def soft_labels(label: np.ndarray) -> np.ndarray:
    """(4, X, Y, Z) class probabilities: one-hot labels blurred by a 1-voxel Gaussian, renormalised."""
    onehot = np.eye(4, dtype=np.float32)[label].transpose(3, 0, 1, 2)
    soft = np.stack([ndimage.gaussian_filter(c, 1.0) for c in onehot])
    return (soft / soft.sum(0, keepdims=True)).astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--step", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=20, help="Slang repeats (torch: a quarter, at least 2)")
    parser.add_argument("--chunk", type=int, default=1 << 19, help="rays per torch backward chunk")
    parser.add_argument("--json", default="render_fps.json")
    add_device_argument(parser, default="cuda", note="cpu only to try the script at tiny sizes")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    on_gpu = torch.cuda.is_available()
    width, height = parse_size(args.size)
    shape = tuple(args.shape)
    case = make_case(shape, seed=0)
    images, label, probs = case.images, case.label, soft_labels(case.label)
    settings = RenderSettings(windows=auto_windows(images), step=args.step)
    distance = fit_distance(volume_box(shape, SPACING), 30.0, width / height)
    azimuths = itertools.count(0.0, 3.0)

    def next_camera():
        return orbit(next(azimuths), 20.0, distance, width=width, height=height)

    def sync():
        device.wait_for_idle()
        if on_gpu:
            torch.cuda.synchronize()

    # ---------------------------------------------------------------- Slang
    hard = Scene.upload(device, SPACING, volumes=images, labels=label)
    soft = Scene.upload(device, SPACING, volumes=images, probabilities=probs)
    soft_cf = Scene(device, shape, SPACING, mri=ChannelVolume.upload(device, images, channels_last=False),
                    probabilities=ChannelVolume.upload(device, probs, channels_last=False))
    frame = Frame.allocate(device, width, height)
    rng = np.random.default_rng(0)
    grad_np = rng.normal(size=(height, width, 3)).astype(np.float32) / (width * height)
    grad_image = upload(device, grad_np)
    refine_grads = Gradients.zeros(soft, mri=False)
    all_grads = Gradients.zeros(soft)

    def slang_forward(scene):
        return lambda: render_device(scene, next_camera(), settings, frame)

    def slang_step(grads):
        def run():
            camera = next_camera()
            render_device(soft, camera, settings, frame)
            render_backward_device(soft, camera, settings, frame, grad_image, grads)
        return run

    r = args.repeats
    timings = {
        ("forward", "labels (hard)", "slang"): time_it(slang_forward(hard), sync, r),
        ("forward", "probabilities (soft)", "slang"): time_it(slang_forward(soft), sync, r),
        ("forward", "probabilities (soft), channel-first volumes", "slang"): time_it(slang_forward(soft_cf), sync, r),
        ("fwd+bwd", "grads: probs, LUT, weights", "slang"): time_it(slang_step(refine_grads), sync, max(2, r // 2)),
        ("fwd+bwd", "grads: + MRI volumes", "slang"): time_it(slang_step(all_grads), sync, max(2, r // 2)),
    }

    # ---------------------------------------------------------------- torch peer
    def build(**leaves):
        return TorchScene.build(shape, SPACING, settings, **cuda, **leaves)

    cuda = {"dtype": torch.float32, "device": "cuda" if on_gpu else "cpu"}
    t_images, t_probs = torch.as_tensor(images, **cuda), torch.as_tensor(probs, **cuda)
    t_hard = build(volumes=t_images, labels=label)
    t_soft = build(volumes=t_images, probabilities=t_probs)
    t_grad = torch.as_tensor(grad_np, **cuda).reshape(-1, 3)

    def torch_forward(scene):
        @torch.no_grad()
        def run():
            march_rays(scene, *camera_rays(next_camera(), **cuda))
        return run

    def torch_step(with_volumes):
        leaves = {"probabilities": t_probs.clone().requires_grad_(),
                  "weights": torch.as_tensor(settings.weights, **cuda).requires_grad_(),
                  "lut_colours": torch.as_tensor(settings.lut.colours, **cuda).requires_grad_(),
                  "lut_opacities": torch.as_tensor(settings.lut.opacities, **cuda).requires_grad_()}
        leaves["volumes"] = t_images.clone().requires_grad_(with_volumes)
        scene = build(**leaves)

        def run():
            origins, directions = camera_rays(next_camera(), **cuda)
            for start in range(0, origins.shape[0], args.chunk):
                part = slice(start, start + args.chunk)
                colour, _ = march_rays(scene, origins[part], directions[part])
                (colour * t_grad[part]).sum().backward()
        return run

    tr = max(2, r // 4)
    timings.update({
        ("forward", "labels (hard)", "torch"): time_it(torch_forward(t_hard), sync, tr, warmup=1),
        ("forward", "probabilities (soft)", "torch"): time_it(torch_forward(t_soft), sync, tr, warmup=1),
        ("fwd+bwd", "grads: probs, LUT, weights", "torch"): time_it(torch_step(False), sync, 2, warmup=1),
        ("fwd+bwd", "grads: + MRI volumes", "torch"): time_it(torch_step(True), sync, 2, warmup=1),
    })

    # ---------------------------------------------------------------- agreement at one view
    camera = orbit(30.0, 20.0, distance, width=width, height=height)
    render_device(soft, camera, settings, frame)
    slang_image = frame.to_numpy()[0]
    with torch.no_grad():
        torch_image = march_rays(t_soft, *camera_rays(camera, **cuda))[0].reshape(height, width, 3).cpu().numpy()
    agreement = float(np.linalg.norm(slang_image - torch_image) / np.linalg.norm(torch_image))
    # How much of the frame is volume: the rate scales with rays that hit the box and their samples.
    t_enter, t_exit = intersect_box(*camera.rays(), volume_box(shape, SPACING))
    hit = t_exit > t_enter
    coverage = {"rays_hitting_box": float(hit.mean()),
                "samples_per_hitting_ray_without_termination": float(((t_exit - t_enter)[hit] / args.step).mean())}

    rows, results = [], {"device": describe(device), "torch": torch.__version__, "python": platform.python_version(),
                         "size": [width, height], "shape": shape, "step": args.step,
                         "slang_vs_torch_image_rel_diff": agreement, **coverage, "timings": {}}
    for (task, mode, impl), t in timings.items():
        peer = timings.get((task, mode, "torch"))
        rate = 1.0 / t["median_s"]
        rows.append({"task": task, "mode": mode, "impl": impl, "ms": f"{t['median_s'] * 1e3:.2f}",
                     "rate": f"{rate:.1f} {'frames' if task == 'forward' else 'it'}/s",
                     "vs torch": f"{peer['median_s'] / t['median_s']:.1f}x" if peer else ""})
        results["timings"][f"{task} | {mode} | {impl}"] = t
    write_json(args.json, results)
    print(f"device: {results['device']}  torch {torch.__version__}  {width}x{height}, volume {shape}, dt {args.step}")
    print(f"Slang vs torch fp32 image (soft mode, one view): relative difference {agreement:.2e}")
    print(f"rays hitting the box: {coverage['rays_hitting_box']:.1%}, "
          f"{coverage['samples_per_hitting_ray_without_termination']:.0f} samples each before termination")
    print_table(rows, ["task", "mode", "impl", "ms", "rate", "vs torch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
