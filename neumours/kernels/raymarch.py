"""Wrappers of ``slang/raymarch_kernels.slang`` and the constants of the raymarcher, defined once.

The wrappers take the parameter dict that :mod:`neumours.render.raymarch`
builds from a scene, camera and settings (the fields of ``RenderParams``) and
check the frame buffers against the image size.
"""

from __future__ import annotations

import slangpy as spy

from neumours.conventions import NUM_CLASSES, NUM_MODALITIES
from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "raymarch_kernels.slang"
#: Rays stop once their transmittance falls below this (docs/method.md, eq. 1-3).
MIN_TRANSMITTANCE = 0.01
#: Floats per row of the modality table (lo, 1 / width, gamma, enabled, tint r, g, b, unused)
#: and of the look-up table (sigma, r, g, b).
MODALITY_ROW = 8
LUT_ROW = 4
#: LABEL_MODE of the kernels: no labels, hard labels (nearest voxel), class probabilities (trilinear).
LABELS_NONE, LABELS_HARD, LABELS_SOFT = 0, 1, 2


def table_constants() -> dict[str, object]:
    """The sizes every marching kernel (this file's and ``ray_sample_kernels.slang``) is compiled with."""
    return {"NUM_MODALITIES": NUM_MODALITIES, "NUM_CLASSES": NUM_CLASSES, "MODALITY_ROW": MODALITY_ROW,
            "LUT_ROW": LUT_ROW, "MIN_TRANSMITTANCE": MIN_TRANSMITTANCE}


def _check_frame(params: dict, width: int, height: int) -> None:
    require(params["image"], 3 * width * height, "image")
    require(params["transmittance"], width * height, "transmittance")


def render_forward(device: spy.Device, params: dict, width: int, height: int, use_mri: bool,
                   label_mode: int) -> None:
    """One frame: ``params["image"]`` (H, W, 3) and ``params["transmittance"]`` (H, W), one thread per pixel."""
    _check_frame(params, width, height)
    constants = {**table_constants(), "USE_MRI": bool(use_mri), "LABEL_MODE": int(label_mode),
                 "GRAD_MRI": False, "GRAD_PROBS": False}
    load_kernel(device, FILE, "render_forward", constants)((width, height, 1), params=params)


def render_backward(device: spy.Device, params: dict, width: int, height: int, use_mri: bool, label_mode: int,
                    grad_mri: bool, grad_probs: bool) -> None:
    """Add gradients of an image loss (``params["grad_image"]``, (H, W, 3)) into the ``grad_*`` buffers.

    ``grad_mri`` / ``grad_probs`` switch the volume gradients on (compiled in) or off.
    """
    _check_frame(params, width, height)
    require(params["grad_image"], 3 * width * height, "grad_image")
    constants = {**table_constants(), "USE_MRI": bool(use_mri), "LABEL_MODE": int(label_mode),
                 "GRAD_MRI": bool(grad_mri), "GRAD_PROBS": bool(grad_probs)}
    load_kernel(device, FILE, "render_backward", constants)((width, height, 1), params=params)
