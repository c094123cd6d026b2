"""Wrappers of ``slang/ray_sample_kernels.slang``: the raymarcher split around the INR.

For one camera: sample counts per ray, then the samples' voxel positions (ray
after ray), then, once the INR has given class probabilities per sample,
front-to-back compositing and its adjoint (dL/dp per sample). ``params``
carries the view fields of :func:`neumours.render.raymarch.view_params` and
the look-up table; each wrapper adds its own buffers.
"""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require
from neumours.kernels.raymarch import table_constants

FILE = "ray_sample_kernels.slang"


def _dispatch(device: spy.Device, entry: str, params: dict, width: int, height: int) -> None:
    load_kernel(device, FILE, entry, table_constants())((width, height, 1), params=params)


def ray_sample_counts(device: spy.Device, params: dict, counts: spy.Buffer, width: int, height: int,
                      pixel_weights: spy.Buffer | None = None) -> None:
    """counts (H * W,) uint32: samples on each pixel's ray (0 where ``pixel_weights`` (H, W) is 0)."""
    require(counts, width * height, "counts")
    extra = {"use_weights": 0}
    if pixel_weights is not None:
        require(pixel_weights, width * height, "pixel_weights")
        extra = {"use_weights": 1, "pixel_weights": pixel_weights}
    _dispatch(device, "ray_sample_counts", {**params, **extra, "counts": counts}, width, height)


def ray_sample_positions(device: spy.Device, params: dict, counts: spy.Buffer, offsets: spy.Buffer,
                         positions: spy.Buffer, total: int, width: int, height: int) -> None:
    """positions (total, 3) float32: voxel position of every sample, each ray's from ``offsets`` (H * W,) on."""
    require(counts, width * height, "counts")
    require(offsets, width * height, "offsets")
    require(positions, 3 * total, "positions")
    _dispatch(device, "ray_sample_positions", {**params, "counts": counts, "offsets": offsets,
                                               "positions": positions}, width, height)


def composite_forward(device: spy.Device, params: dict, counts: spy.Buffer, offsets: spy.Buffer, probs: spy.Buffer,
                      total: int, image: spy.Buffer, transmittance: spy.Buffer, num_classes: int, width: int,
                      height: int) -> None:
    """image (H, W, 3) and transmittance (H, W) from class probabilities per sample, (num_classes, total)."""
    require(probs, num_classes * max(total, 1), "probs")
    require(image, 3 * width * height, "image")
    require(transmittance, width * height, "transmittance")
    _dispatch(device, "composite_forward", {**params, "counts": counts, "offsets": offsets, "probs": probs,
                                            "image": image, "transmittance": transmittance,
                                            "total": max(int(total), 1)}, width, height)


def composite_backward(device: spy.Device, params: dict, counts: spy.Buffer, offsets: spy.Buffer, probs: spy.Buffer,
                       total: int, image: spy.Buffer, transmittance: spy.Buffer, grad_image: spy.Buffer,
                       grad_probs: spy.Buffer, num_classes: int, width: int, height: int) -> None:
    """grad_probs (num_classes, total) = dL/dp per sample (0 behind where a ray stopped), given dL/dimage."""
    require(probs, num_classes * total, "probs")
    require(grad_image, 3 * width * height, "grad_image")
    require(grad_probs, num_classes * total, "grad_probs")
    _dispatch(device, "composite_backward", {**params, "counts": counts, "offsets": offsets, "probs": probs,
                                             "image": image, "transmittance": transmittance,
                                             "grad_image": grad_image, "grad_probs": grad_probs,
                                             "total": int(total)}, width, height)
