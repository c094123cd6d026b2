"""Render-loss refinement, path (a): gradients of an image loss through the volume cache
back to the INR's weights.

The INR is evaluated over the case's grid into a class-probability volume
(:class:`neumours.infer.cache.VolumeCache`); the raymarcher renders it in soft
mode from each camera; the image loss's gradient is back-propagated by the
raymarcher into the probability volume, through the softmax
(``slang/refine_kernels.slang``) and through the INR (``INR.backward_device``)
chunk by chunk into the weight-gradient buffer. Everything stays on the device
except the images, which the loss reads on the host.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neumours.device import download, empty_buffer, load_kernel, upload
from neumours.infer.cache import VolumeCache
from neumours.model.inputs import DeviceVolumes, grid_inputs
from neumours.model.inr import INR
from neumours.render.camera import Camera
from neumours.render.raymarch import DeviceVolume, Frame, Gradients, Scene, render_backward_device, render_device
from neumours.render.transfer import RenderSettings

_FILE = "refine_kernels.slang"


def image_loss(image: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean squared error over pixels and channels, and its gradient.

    Args:
        image, target: (H, W, 3). weight: (H, W) per-pixel weight (0 = don't care), or None.

    Returns:
        (loss, dL/dimage (H, W, 3) float32).
    """
    w = np.ones(image.shape[:2]) if weight is None else np.asarray(weight, np.float64)
    diff = (np.asarray(image, np.float64) - target) * w[..., None]
    n = max(float(w.sum()) * 3.0, 1.0)
    return float((diff * diff).sum() / n), (2.0 * diff * w[..., None] / n).astype(np.float32)


def cache_path_gradients(inr: INR, vols: DeviceVolumes, spacing, cameras: Sequence[Camera],
                         settings: RenderSettings, targets: Sequence[np.ndarray],
                         weights: Sequence[np.ndarray | None] | None = None, case_index: int = 0,
                         chunk_points: int = 1 << 18) -> tuple[float, list[np.ndarray]]:
    """Add d(image loss)/d(weights), summed over views, into ``inr``'s gradient buffer.

    Args:
        inr: the network (weights on the device); its gradient buffer is added to,
            not zeroed (call ``inr.zero_grad()`` first).
        vols: the case's normalised volumes on the device.
        spacing: voxel size (sets the rendered box).
        cameras: one per view; targets: (H, W, 3) images, one per view;
            weights: optional (H, W) per-pixel weights (0 = don't care).
        chunk_points: grid points per INR backward chunk.

    Returns:
        (loss summed over views, the rendered images).
    """
    device = inr.device
    cfg = inr.config
    cache = VolumeCache(inr, vols, case_index=case_index, keep_probs=True)
    shape, total = cache.shape, cache.total
    probs = DeviceVolume(cache.probs_buffer, cfg.num_classes, shape, channels_last=False)
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

    chunk = min(int(chunk_points), total)
    ws = inr.workspace(chunk)
    coords, patches = empty_buffer(device, chunk * 3), empty_buffer(device, chunk * cfg.patch_dim)
    logits, grad_logits = empty_buffer(device, chunk * cfg.num_classes), empty_buffer(device, chunk * cfg.num_classes)
    kernel = load_kernel(device, _FILE, "softmax_backward", {"NUM_CLASSES": cfg.num_classes})
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        grid_inputs(cfg, vols, case_index, shape, start, count, coords, patches)
        inr.forward_device(coords, patches, count, logits, ws)
        kernel(count, params={"logits": logits, "grad_probs": grads.probabilities.buffer, "grad_logits": grad_logits,
                              "start": start, "count": count, "total": total})
        inr.backward_device(coords, patches, count, grad_logits, ws)
    return loss, images


def weight_gradients(inr: INR) -> dict[str, np.ndarray]:
    """The gradient buffer as named arrays (SPEC.md names and shapes)."""
    inr.bridge.pull_grads()
    flat = download(inr.bridge.grads_buffer, (inr.layout.total,))
    return {name: view.copy() for name, view in inr.layout.views(flat).items()}
