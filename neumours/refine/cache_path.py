"""Render-loss refinement, path (a): gradients of an image loss through the volume cache.

The INR is evaluated over the case's grid into a class-probability volume
(:class:`neumours.infer.cache.VolumeCache`); the raymarcher renders it in soft
mode from each camera and back-propagates the image loss into that volume
(dL/dp at every voxel, scattered from the trilinear samples); then, over the
voxels that received gradient only, the softmax and the INR backward pass carry
it into the weight-gradient buffer (:mod:`neumours.refine.backprop`).
Everything stays on the device except the images, which the loss reads on the host.

Cost: one INR forward over every voxel, plus a forward and backward over the
voxels some ray reached, whatever the number of views and pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neumours.device import upload
from neumours.infer.cache import VolumeCache
from neumours.model.inputs import CaseVolumes, grid_inputs
from neumours.model.inr import INR
from neumours.refine.backprop import backprop_probabilities
from neumours.refine.image_loss import image_loss
from neumours.render.camera import Camera
from neumours.render.raymarch import ChannelVolume, Frame, Gradients, Scene, render_backward_device, render_device
from neumours.render.transfer import RenderSettings


def cache_path_gradients(inr: INR, vols: CaseVolumes, spacing, cameras: Sequence[Camera],
                         settings: RenderSettings, targets: Sequence[np.ndarray],
                         weights: Sequence[np.ndarray | None] | None = None, case_index: int = 0,
                         chunk_points: int = 1 << 18, stats: dict | None = None) -> tuple[float, list[np.ndarray]]:
    """Add d(image loss)/d(weights), summed over views, into ``inr``'s gradient buffer.

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
        (loss summed over views, the rendered images).
    """
    device = inr.device
    cfg = inr.config
    cache = VolumeCache(inr, vols, case_index=case_index, keep_probs=True)
    shape, total = cache.shape, cache.total
    probs = ChannelVolume(cache.probs_buffer, cfg.num_classes, shape, channels_last=False)
    scene = Scene(device, shape, tuple(spacing), probabilities=probs)
    grads = Gradients.zeros(scene, mri=False, probabilities=True)
    loss, images = 0.0, []
    for k, (camera, target) in enumerate(zip(cameras, targets, strict=True)):
        frame = Frame.allocate(device, camera.width, camera.height)
        render_device(scene, camera, settings, frame)
        image = frame.to_numpy()[0]
        value, grad_image = image_loss(image, target, None if weights is None else weights[k])
        render_backward_device(scene, camera, settings, frame, upload(device, grad_image), grads)
        loss += value
        images.append(image)

    def fill(start, count, coords, patches):
        grid_inputs(cfg, vols, case_index, shape, start, count, coords, patches)

    backward = backprop_probabilities(inr, grads.probabilities.buffer, total, fill, chunk_points)
    if stats is not None:
        stats.update(forward_points=total + backward, backward_points=backward)
    return loss, images
