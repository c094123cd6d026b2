"""How long a refinement will take, said before its first step.

A refinement step on the CPU device can take minutes (a 96 x 96 x 64 case with
four 256 x 256 views: 266-380 s a step on 2 cores), so ``neumours refine`` times
one pass of the INR over the case first (it needs it for the Dice before
refinement anyway) and scales it to a step:

* path ``cache``: a step caches the class probabilities over every voxel and
  back-propagates through them (about :data:`CACHE_STEP_PASSES` passes over the
  case), and renders every view forward and backward (about
  :data:`CACHE_SAMPLE_PASSES` of a voxel's forward pass per ray sample);
* path ``direct``: a step evaluates the INR forward and backward, with the
  patches' trilinear gradients, at every ray sample: about
  :data:`DIRECT_SAMPLE_PASSES` of a voxel's forward pass per sample.

Ray samples are counted exactly from the cameras on the host. The constants were
measured on the CPU device (tiny network: a 48 x 48 x 32 case with one 32 x 32
view, and the 96 x 96 x 64 case with four 256 x 256 views, whose steps took
266-380 s); they are estimates, not promises.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.estimates import long_work_note
from neumours.render.box import intersect_box, volume_box
from neumours.render.camera import Camera

#: Path (a): the volume's share of a step, in forward passes of the INR over the case.
CACHE_STEP_PASSES = 5.0
#: Path (a): rendering forward and backward, per ray sample, in forward evaluations of one voxel.
CACHE_SAMPLE_PASSES = 0.5
#: Path (b): forward, backward and input gradients per ray sample, in forward evaluations of one voxel.
DIRECT_SAMPLE_PASSES = 8.0


def ray_sample_count(cameras: Sequence[Camera], half: np.ndarray, step: float) -> int:
    """Samples the raymarcher takes over all views: every pixel's chord through the box over ``step``."""
    total = 0
    for camera in cameras:
        origins, directions = camera.rays()
        enter, leave = intersect_box(origins, directions, np.asarray(half, np.float64))
        total += int(np.ceil(np.clip(leave - enter, 0.0, None) / step).sum())
    return total


def refine_step_seconds(path: str, forward_s: float, voxels: int, cameras: Sequence[Camera], half: np.ndarray,
                        step: float) -> float:
    """Estimated seconds of one refinement step from ``forward_s``, one timed INR pass over ``voxels`` voxels."""
    per_voxel = forward_s / max(voxels, 1)
    samples = ray_sample_count(cameras, half, step)
    if path == "cache":
        return CACHE_STEP_PASSES * forward_s + CACHE_SAMPLE_PASSES * per_voxel * samples
    return DIRECT_SAMPLE_PASSES * per_voxel * samples


def announce_refinement(device, path: str, steps: int, forward_s: float, shape: Sequence[int], spacing,
                        cameras: Sequence[Camera], step: float) -> None:
    """Before the first step: one line on stderr when the refinement will take more than a few minutes.

    Args:
        forward_s: one timed pass of the INR over the case (``shape``, ``spacing``).
        step: the renderer's step (``RenderSettings.step``).
    """
    step_s = refine_step_seconds(path, forward_s, int(np.prod(shape)), cameras, volume_box(shape, spacing), step)
    cpu = device.info.type == spy.DeviceType.cpu
    small = (path == "direct" and len(cameras) <= 2 and steps <= 2
             and all(c.width * c.height <= 32 * 32 for c in cameras))
    suggestion = "fewer --steps or --views, or a smaller --size, shorten it"
    if cpu and not small:
        suggestion = "for a CPU-sized run: --views 2 --size 32x32 --steps 2 --path direct"
    line = long_work_note(f"refinement ({steps} steps, {len(cameras)} views, path {path})",
                          step_s * steps, f"about {step_s:.0f} s a step, scaled from a measured "
                          f"{forward_s:.1f} s pass of the INR over the case", suggestion)
    if line is not None:
        print(line, file=sys.stderr, flush=True)
