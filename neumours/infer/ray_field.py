"""The INR's field rendered at the ray samples themselves (no volume cache), forward and backward.

Per view (``slang/ray_sample_kernels.slang``, dispatched by :mod:`neumours.kernels.ray_samples`):

1. ``ray_sample_counts``: how many samples each pixel's ray takes in the box
   (none for pixels of weight 0, which the loss ignores);
   a prefix sum on the host gives each ray's first sample.
2. ``ray_sample_positions``: the voxel position of every sample, ray after ray.
3. The INR (the Slang kernels of training, chunk by chunk) and a softmax give
   the class probabilities of every sample.
4. ``composite_forward`` / ``composite_backward``: eq. 1-3 over each ray's
   samples and its adjoint, giving dL/dp per sample.
5. :func:`neumours.infer.backprop.backprop_probabilities` carries dL/dp
   through the softmax and the INR into the weight-gradient buffer.

The samples are those of the cached renderer (same t, same stopping rule);
what differs from the cache is the field: here p = softmax(INR(v)) at the
sample's own position, there the trilinear mix of softmax(INR) at the 8
surrounding voxels. Refinement path (b) (:mod:`neumours.refine.direct_path`)
and :func:`neumours.torch.render_inr` run on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.device import copy_elements, download, empty_buffer, upload
from neumours.infer.backprop import backprop_probabilities
from neumours.infer.cache import MAX_BUFFER_BYTES
from neumours.infer.points import classify_points
from neumours.kernels import ray_samples
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.model.inr import INR
from neumours.render.camera import Camera
from neumours.render.raymarch import Frame, settings_buffers, view_params
from neumours.render.transfer import RenderSettings


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
        max_bytes: largest device buffer the samples may need (default :data:`MAX_BUFFER_BYTES`).
    """

    def __init__(self, inr: INR, vols: CaseVolumes, spacing, settings: RenderSettings, case_index: int = 0,
                 chunk_points: int = 1 << 18, max_bytes: int = MAX_BUFFER_BYTES):
        self.inr, self.vols, self.settings = inr, vols, settings
        self.device, self.config = inr.device, inr.config
        self.case_index = int(case_index)
        self.shape = tuple(vols.shapes[self.case_index])
        self.spacing = tuple(float(s) for s in spacing)
        self.chunk = int(chunk_points)
        self.max_bytes = int(max_bytes)
        self._case_ids = None

    def _params(self, camera: Camera) -> dict:
        return {**view_params(self.shape, self.spacing, camera, self.settings),
                "lut": settings_buffers(self.device, self.settings)["lut"]}

    def samples(self, camera: Camera, weight: np.ndarray | None = None) -> RaySamples:
        """Every sample of every ray of ``camera`` (none for pixels where ``weight`` is 0)."""
        n = camera.width * camera.height
        counts = empty_buffer(self.device, n, np.uint32)
        pixel_weights = None if weight is None else upload(self.device, np.asarray(weight, np.float32))
        params, size = self._params(camera), (camera.width, camera.height)
        ray_samples.ray_sample_counts(self.device, params, counts, *size, pixel_weights=pixel_weights)
        host = download(counts, (n,), np.uint32).astype(np.int64)
        total = int(host.sum())
        if 4 * self.config.num_classes * total > self.max_bytes:
            raise ValueError(f"{total} ray samples need buffers over 2 GiB: use a smaller image or a larger step")
        offsets = upload(self.device, np.cumsum(host) - host, np.uint32)
        positions = empty_buffer(self.device, 3 * total)
        ray_samples.ray_sample_positions(self.device, params, counts, offsets, positions, total, *size)
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
        labels = empty_buffer(dev, total, np.uint32)
        classify_points(self.inr, total, self._fill(samples), min(self.chunk, total), labels, probs)
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
        ray_samples.composite_forward(self.device, self._params(camera), samples.counts, samples.offsets, probs,
                                      samples.total, frame.image, frame.transmittance, self.config.num_classes,
                                      camera.width, camera.height)
        return frame

    def view(self, camera: Camera, weight: np.ndarray | None = None) -> "DirectView":
        """Forward pass of one view, kept for :meth:`backward`: samples, their probabilities, the frame."""
        samples = self.samples(camera, weight)
        probs = self._probabilities_or_none(samples)
        return DirectView(camera, samples, probs, self._composite(camera, samples, probs))

    def backward(self, view: "DirectView", grad_image: spy.Buffer) -> int:
        """Add d(loss)/d(weights) into the INR's gradient buffer, given dL/dimage (H, W, 3) of ``view``.

        Returns:
            how many samples went through the INR backward pass.
        """
        samples, camera = view.samples, view.camera
        if not samples.total:
            return 0
        grad_probs = empty_buffer(self.device, self.config.num_classes * samples.total)
        ray_samples.composite_backward(self.device, self._params(camera), samples.counts, samples.offsets,
                                       view.probs, samples.total, view.frame.image, view.frame.transmittance,
                                       grad_image, grad_probs, self.config.num_classes, camera.width,
                                       camera.height)
        return backprop_probabilities(self.inr, grad_probs, samples.total, self._fill(samples), self.chunk)


@dataclass
class DirectView:
    """One view's forward pass of :class:`DirectRenderer` (what its backward needs)."""

    camera: Camera
    samples: RaySamples
    probs: spy.Buffer
    frame: Frame
