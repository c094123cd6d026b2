"""Render-loss refinement, path (b): the INR evaluated at the ray samples, no volume cache.

Per view (``slang/direct_kernels.slang``):

1. ``ray_sample_counts``: how many samples each pixel's ray takes in the box
   (none for pixels of weight 0, which the loss ignores);
   a prefix sum on the host gives each ray's first sample.
2. ``ray_sample_positions``: the voxel position of every sample, ray after ray.
3. The INR (the Slang kernels of training, chunk by chunk) and a softmax give
   the class probabilities of every sample.
4. ``composite_forward`` / ``composite_backward``: eq. 1-3 over each ray's
   samples and its adjoint, giving dL/dp per sample.
5. :func:`neumours.render.refine_backprop.backprop_probabilities` carries dL/dp
   through the softmax and the INR into the weight-gradient buffer.

The samples are those of the cached renderer (same t, same stopping rule);
what differs from path (a) is the field: here p = softmax(INR(v)) at the
sample's own position, there the trilinear mix of softmax(INR) at the 8
surrounding voxels. Cost grows with the samples (pixels x steps per ray), not
the voxels, so this path wins for small or masked views and loses for large
ones (``benchmarks/refine_step.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import copy_elements, download, empty_buffer, load_kernel, upload
from neumours.infer.cache import MAX_BUFFER_BYTES, forward_workspace
from neumours.model.inputs import DeviceVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.render.camera import Camera
from neumours.render.image_loss import image_loss
from neumours.render.raymarch import LUT_ROW, MIN_TRANSMITTANCE, Frame, settings_buffers, view_params
from neumours.render.refine_backprop import backprop_probabilities
from neumours.render.transfer import RenderSettings

_FILE = "direct_kernels.slang"
_SEGMENT_FILE = "segment_kernels.slang"


@dataclass
class RaySamples:
    """The samples of one view, on the device.

    Attributes:
        counts: uint32 (H * W,) samples per ray. offsets: uint32 (H * W,) first sample of each ray.
        positions: float32 (total, 3) voxel positions, ray after ray.
        total: S, the number of samples.
    """

    counts: spy.Buffer
    offsets: spy.Buffer
    positions: spy.Buffer
    total: int


class DirectRenderer:
    """Renders one case's INR directly (no cache) and back-propagates an image loss to its weights.

    Args:
        inr: the network (weights on the device).
        vols: normalised volumes on the device; ``case_index`` picks the case.
        spacing: voxel size (sets the box).
        settings: its look-up table, step and background are used (the label
            medium only: refinement renders class probabilities, no MRI).
        chunk_points: most samples per INR pass.
    """

    def __init__(self, inr: INR, vols: DeviceVolumes, spacing, settings: RenderSettings, case_index: int = 0,
                 chunk_points: int = 1 << 18):
        self.inr, self.vols, self.settings = inr, vols, settings
        self.device, self.config = inr.device, inr.config
        self.case_index = int(case_index)
        self.shape = tuple(vols.shapes[self.case_index])
        self.spacing = tuple(float(s) for s in spacing)
        self.chunk = int(chunk_points)
        constants = {"NUM_CLASSES": self.config.num_classes, "LUT_ROW": LUT_ROW,
                     "MIN_TRANSMITTANCE": MIN_TRANSMITTANCE}
        self._kernels = {name: load_kernel(self.device, _FILE, name, constants) for name in
                         ("ray_sample_counts", "ray_sample_positions", "composite_forward", "composite_backward")}
        self._case_ids = None

    def _params(self, camera: Camera, **buffers) -> dict:
        return {**view_params(self.shape, self.spacing, camera, self.settings),
                "lut": settings_buffers(self.device, self.settings)["lut"], **buffers}

    def samples(self, camera: Camera, weight: np.ndarray | None = None) -> RaySamples:
        """Every sample of every ray of ``camera`` (none for pixels where ``weight`` is 0)."""
        n = camera.width * camera.height
        counts = empty_buffer(self.device, n, np.uint32)
        extra = {"use_weights": 0}
        if weight is not None:
            extra = {"use_weights": 1, "pixel_weights": upload(self.device, np.asarray(weight, np.float32))}
        size = (camera.width, camera.height, 1)
        self._kernels["ray_sample_counts"](size, params=self._params(camera, counts=counts, **extra))
        host = download(counts, (n,), np.uint32).astype(np.int64)
        total = int(host.sum())
        if 4 * self.config.num_classes * total > MAX_BUFFER_BYTES:
            raise ValueError(f"{total} ray samples need buffers over 2 GiB: use a smaller image or a larger step")
        offsets = upload(self.device, np.cumsum(host) - host, np.uint32)
        positions = empty_buffer(self.device, 3 * total)
        self._kernels["ray_sample_positions"](size, params=self._params(camera, counts=counts, offsets=offsets,
                                                                        positions=positions))
        return RaySamples(counts, offsets, positions, total)

    def _fill(self, samples: RaySamples):
        """Input filler for a range of samples: their positions, copied to a chunk buffer, then gathered."""
        chunk = min(self.chunk, samples.total)
        positions = empty_buffer(self.device, 3 * chunk)
        if self._case_ids is None or self._case_ids[0] < chunk:
            self._case_ids = (chunk, upload(self.device, np.full(chunk, self.case_index, np.uint32), np.uint32))
        case_ids = self._case_ids[1]

        def fill(start, count, coords, patches):
            copy_elements(self.device, positions, samples.positions, 3 * start, 3 * count)
            gather_inputs(self.config, self.vols, positions, case_ids, count, coords, patches)

        return fill

    def probabilities(self, samples: RaySamples) -> spy.Buffer:
        """softmax(INR) at every sample: (num_classes, S) float32 on the device."""
        cfg, dev, total = self.config, self.device, samples.total
        probs = empty_buffer(dev, cfg.num_classes * total)
        chunk = min(self.chunk, total)
        coords, patches = empty_buffer(dev, chunk * 3), empty_buffer(dev, chunk * cfg.patch_dim)
        logits, labels = empty_buffer(dev, chunk * cfg.num_classes), empty_buffer(dev, total, np.uint32)
        ws = forward_workspace(self.inr, chunk)
        softmax = load_kernel(dev, _SEGMENT_FILE, "argmax_labels", {"NUM_CLASSES": cfg.num_classes, "WRITE_PROBS": 1})
        fill = self._fill(samples)
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            fill(start, count, coords, patches)
            self.inr.forward_device(coords, patches, count, logits, ws)
            softmax(count, params={"logits": logits, "labels": labels, "probs": probs, "start": start,
                                   "count": count, "total": total})
        return probs

    def render(self, camera: Camera, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The image (H, W, 3) and transmittance (H, W) of the INR's field seen by ``camera``.

        Pixels of weight 0 are not marched: they show the background.
        """
        samples = self.samples(camera, weight)
        frame = self._composite(camera, samples, self._probabilities_or_none(samples))
        return frame.to_numpy()

    def _probabilities_or_none(self, samples: RaySamples) -> spy.Buffer:
        return self.probabilities(samples) if samples.total else empty_buffer(self.device, self.config.num_classes)

    def _composite(self, camera: Camera, samples: RaySamples, probs: spy.Buffer) -> Frame:
        frame = Frame.allocate(self.device, camera.width, camera.height)
        self._kernels["composite_forward"]((camera.width, camera.height, 1), params=self._params(
            camera, counts=samples.counts, offsets=samples.offsets, probs=probs, image=frame.image,
            transmittance=frame.transmittance, total=max(samples.total, 1)))
        return frame

    def gradients(self, camera: Camera, target: np.ndarray, weight: np.ndarray | None = None,
                  stats: dict | None = None) -> tuple[float, np.ndarray]:
        """Add d(image loss)/d(weights) of one view into the INR's gradient buffer.

        Returns:
            (loss, rendered image (H, W, 3)).
        """
        samples = self.samples(camera, weight)
        probs = self._probabilities_or_none(samples)
        frame = self._composite(camera, samples, probs)
        image = frame.to_numpy()[0]
        loss, grad_image = image_loss(image, target, weight)
        backward = 0
        if samples.total:
            grad_probs = empty_buffer(self.device, self.config.num_classes * samples.total)
            self._kernels["composite_backward"]((camera.width, camera.height, 1), params=self._params(
                camera, counts=samples.counts, offsets=samples.offsets, probs=probs, image=frame.image,
                transmittance=frame.transmittance, grad_image=upload(self.device, grad_image),
                grad_probs=grad_probs, total=samples.total))
            backward = backprop_probabilities(self.inr, grad_probs, samples.total, self._fill(samples), self.chunk)
        if stats is not None:
            stats["forward_points"] = stats.get("forward_points", 0) + samples.total + backward
            stats["backward_points"] = stats.get("backward_points", 0) + backward
        return loss, image


def direct_path_gradients(inr: INR, vols: DeviceVolumes, spacing, cameras: Sequence[Camera],
                          settings: RenderSettings, targets: Sequence[np.ndarray],
                          weights: Sequence[np.ndarray | None] | None = None, case_index: int = 0,
                          chunk_points: int = 1 << 18, stats: dict | None = None) -> tuple[float, list[np.ndarray]]:
    """Path (b) with the signature of :func:`neumours.render.refine_cache.cache_path_gradients`.

    Adds d(image loss)/d(weights), summed over views, into ``inr``'s gradient buffer.

    Returns:
        (loss summed over views, the rendered images).
    """
    renderer = DirectRenderer(inr, vols, spacing, settings, case_index, chunk_points)
    if stats is not None:
        stats.update(forward_points=0, backward_points=0)
    loss, images = 0.0, []
    for k, (camera, target) in enumerate(zip(cameras, targets, strict=True)):
        value, image = renderer.gradients(camera, target, None if weights is None else weights[k], stats)
        loss += value
        images.append(image)
    return loss, images
