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


def views(shape, spacing, count: int, size: tuple[int, int] = (256, 256), elevation: float = 20.0,
          fov_y_deg: float = 30.0) -> list[Camera]:
    """``count`` cameras orbiting the volume's box at equal azimuth steps, framing the whole box."""
    from neumours.render.box import volume_box
    from neumours.render.camera import fit_distance, orbit

    width, height = size
    distance = fit_distance(volume_box(shape, spacing), fov_y_deg, width / height)
    return [orbit(360.0 * k / count, elevation, distance, fov_y_deg=fov_y_deg, width=width, height=height)
            for k in range(count)]


def render_label_views(device, labels: np.ndarray, spacing, cameras: Sequence[Camera],
                       settings: RenderSettings, num_classes: int = 4) -> list[np.ndarray]:
    """Target images: a (corrected) label volume rendered in soft mode as one-hot probabilities,
    the same path the refined model's probabilities take."""
    one_hot = (np.arange(num_classes)[:, None, None, None] == labels[None]).astype(np.float32)
    scene = Scene(device, tuple(labels.shape), tuple(spacing),
                  probabilities=DeviceVolume.upload(device, one_hot, channels_last=False))
    images = []
    for camera in cameras:
        frame = Frame.allocate(device, camera.width, camera.height)
        render_device(scene, camera, settings, frame)
        images.append(frame.to_numpy()[0])
    return images


class Anchor:
    """Keeps predictions on other cases close to the original model while refining.

    Holds points sampled from other cases and the original model's class
    probabilities there; :meth:`add_gradients` adds ``weight`` x the mean
    cross-entropy of the current model against those soft targets (zero at the
    start, growing as predictions drift).
    """

    def __init__(self, inr: INR, vols: DeviceVolumes, points: int = 4096, weight: float = 1.0, seed: int = 0):
        from neumours.model.inputs import gather_inputs

        rng = np.random.default_rng(seed)
        cfg = inr.config
        case_ids = rng.integers(0, len(vols.shapes), points).astype(np.uint32)
        dims = np.array(vols.shapes)[case_ids]
        positions = np.floor(rng.random((points, 3)) * dims).astype(np.float32)
        self.inr, self.weight, self.count = inr, float(weight), points
        self.coords = empty_buffer(inr.device, points * 3)
        self.patches = empty_buffer(inr.device, points * cfg.patch_dim)
        gather_inputs(cfg, vols, upload(inr.device, positions), upload(inr.device, case_ids, np.uint32), points,
                      self.coords, self.patches)
        self.logits = empty_buffer(inr.device, points * cfg.num_classes)
        self.targets = self._probabilities()

    def _probabilities(self) -> np.ndarray:
        self.workspace = self.inr.forward_device(self.coords, self.patches, self.count, self.logits)
        z = download(self.logits, (self.count, self.inr.config.num_classes)).astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def add_gradients(self) -> float:
        """Add the penalty's weight gradients into the INR's buffer; returns the penalty (CE - entropy)."""
        p = self._probabilities()
        q = self.targets
        penalty = float(self.weight * (q * (np.log(q + 1e-12) - np.log(p + 1e-12))).sum(axis=1).mean())
        grad = (self.weight * (p - q) / self.count).astype(np.float32)
        self.inr.backward_device(self.coords, self.patches, self.count, upload(self.inr.device, grad), self.workspace)
        return penalty


def refine(inr: INR, vols: DeviceVolumes, spacing, cameras: Sequence[Camera], settings: RenderSettings,
           targets: Sequence[np.ndarray], steps: int = 20, lr: float = 1e-4, anchor: Anchor | None = None,
           weights: Sequence[np.ndarray | None] | None = None, progress: bool = False) -> list[dict]:
    """Optimise the INR's weights in place so its rendered probabilities match the targets.

    Each step: path (a) gradients of the image loss summed over views, plus the
    anchor's penalty, then one AdamW step (torch, through the bridge) with
    gradients clipped to norm 1.

    Returns:
        one ``{"step", "image_loss", "anchor"}`` row per step (losses before the step).
    """
    import torch
    from tqdm import tqdm

    params = inr.bridge.torch_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rows = []
    for step in tqdm(range(steps), desc="refine", unit="step", disable=not progress):
        inr.zero_grad()
        loss, _ = cache_path_gradients(inr, vols, spacing, cameras, settings, targets, weights)
        penalty = anchor.add_gradients() if anchor is not None else 0.0
        inr.bridge.pull_grads()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        inr.bridge.push_params()
        rows.append({"step": step, "image_loss": loss, "anchor": penalty})
    return rows
