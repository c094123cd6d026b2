"""Render-loss refinement, path (a): gradients of an image loss through the volume cache.

The INR is evaluated over the case's grid into a class-probability volume
(:func:`neumours.torch.cache`); the raymarcher renders it in soft mode from each
camera (:func:`neumours.torch.render`), the image loss is computed in torch where the
images live (:func:`neumours.refine.image_loss.masked_mse`), and autograd carries it
back: the renderer's backward scatters dL/dp into the volume, then over the voxels
that received gradient only, the softmax and the INR backward pass reach the weights
(:mod:`neumours.infer.backprop`).

Cost: one INR forward over every voxel, plus a forward and backward over the
voxels some ray reached, whatever the number of views and pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.refine.image_loss import masked_mse
from neumours.render.camera import Camera
from neumours.render.transfer import RenderSettings
from neumours.torch import INRModule, cache, render
from neumours.torch.exchange import torch_device


def view_tensors(inr: INR, targets: Sequence, weights: Sequence | None) -> tuple[list, list]:
    """Targets (H, W, 3) and pixel weights (H, W) (None: all pixels) as float32 tensors where the images live."""
    where = torch_device(inr.device)

    def tensor(a):
        return a.to(where, torch.float32) if isinstance(a, torch.Tensor) else \
            torch.as_tensor(np.asarray(a, np.float32), device=where)

    ts = [tensor(t) for t in targets]
    ws = [None if weights is None or weights[k] is None else tensor(weights[k]) for k in range(len(ts))]
    return ts, ws


def cache_path_loss(net: INRModule, vols: CaseVolumes, spacing, cameras: Sequence[Camera], settings: RenderSettings,
                    targets: Sequence[torch.Tensor], weights: Sequence[torch.Tensor | None], case_index: int = 0,
                    chunk_points: int = 1 << 18, stats: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The image loss summed over views by path (a), as a differentiable torch scalar, and the images."""
    probs = cache(net, vols, case_index, chunk_points=chunk_points, stats=stats)
    images = [render(probs, camera, settings, spacing=spacing) for camera in cameras]
    loss = sum(masked_mse(image, t, w) for image, t, w in zip(images, targets, weights, strict=True))
    return loss, images


def add_to_gradient_buffer(inr: INR, loss: torch.Tensor, net: INRModule) -> None:
    """Add d(loss)/d(weights) into ``inr``'s gradient buffer (what it held before stays)."""
    bridge = inr.bridge
    bridge.pull_grads()
    before = bridge.grads.clone()
    grads = torch.autograd.grad(loss, net.ordered_parameters(), allow_unused=True)
    with torch.no_grad():
        bridge.grads.copy_(before)
        for view, g in zip(inr.layout.views(bridge.grads).values(), grads):
            if g is not None:
                view.add_(g)
    if bridge.zero_copy:
        torch.cuda.current_stream().synchronize()
    else:
        bridge.grads_buffer.copy_from_numpy(bridge.grads.numpy())


def cache_path_gradients(inr: INR, vols: CaseVolumes, spacing, cameras: Sequence[Camera],
                         settings: RenderSettings, targets: Sequence[np.ndarray],
                         weights: Sequence[np.ndarray | None] | None = None, case_index: int = 0,
                         chunk_points: int = 1 << 18, stats: dict | None = None) -> tuple[float, list[np.ndarray]]:
    """Add d(image loss)/d(weights), summed over views, into ``inr``'s gradient buffer.

    The device-buffer form of :func:`cache_path_loss` (benchmarks and tests of the
    kernels' gradients); :func:`neumours.refine.loop.refine` uses the torch form.

    Args:
        inr: the network (weights on the device); its gradient buffer is added to,
            not zeroed (call ``inr.zero_grad()`` first).
        vols: the case's normalised volumes on the device.
        spacing: voxel size (sets the rendered box).
        cameras: one per view; targets: (H, W, 3) images, one per view;
            weights: optional (H, W) per-pixel weights (0 = don't care).
        chunk_points: grid points per INR backward chunk.
        stats: if given, gets ``forward_points`` and ``backward_points`` (INR evaluations).

    Returns:
        (loss summed over views, the rendered images as host arrays).
    """
    net = INRModule.wrap(inr)
    if stats is not None:
        stats.update(forward_points=0, backward_points=0)
    ts, ws = view_tensors(inr, targets, weights)
    loss, images = cache_path_loss(net, vols, spacing, cameras, settings, ts, ws, case_index, chunk_points, stats)
    add_to_gradient_buffer(inr, loss, net)
    return float(loss.detach()), [image.detach().cpu().numpy() for image in images]
