"""2-D mask targets for refinement: tumour / not tumour / don't care per pixel.

A mask drawn on a view is compared with the rendered tumour silhouette, the
opacity 1 - T_N that the tumour classes give each ray. Rendering the label
medium with :func:`silhouette_settings` (background class transparent, tumour
classes white, black background) makes the soft-mode image exactly 1 - T_N in
every channel (emission = sum_k p_k sigma_k * 1 = sigma, so C_N = sum_i T_i alpha_i),
so a mask becomes an ordinary image target: its value in every channel, weight 0
where it says "don't care". Both gradient paths and the image loss apply unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from neumours.conventions import NUM_CLASSES
from neumours.render.camera import Camera
from neumours.render.transfer import LabelLUT, RenderSettings
from neumours.render.views import render_label_views

#: Mask values.
NOT_TUMOUR, TUMOUR, DONT_CARE = 0, 1, 255


def silhouette_settings(settings: RenderSettings) -> RenderSettings:
    """``settings`` with the look-up table and background that render 1 - T_N of the tumour classes."""
    colours = np.ones((NUM_CLASSES, 3), np.float32)
    colours[0] = 0.0
    opacities = np.array(settings.lut.opacities, np.float32)
    opacities[0] = 0.0
    return dataclasses.replace(settings, lut=LabelLUT(colours=colours, opacities=opacities), background=(0.0, 0.0, 0.0))


def mask_targets(masks: Sequence[np.ndarray] | np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Image targets and pixel weights of masks.

    Args:
        masks: (V, H, W) or a list of (H, W) integer masks with values NOT_TUMOUR,
            TUMOUR or DONT_CARE.

    Returns:
        (images (H, W, 3) float32: 1 on tumour, 0 elsewhere; weights (H, W) float32: 0 on don't care).

    Raises:
        ValueError: a mask that is not 2-D integers, or a value outside {0, 1, 255}.
    """
    images, weights = [], []
    for k, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype.kind not in "biu":
            raise ValueError(f"mask {k} must be a 2-D integer array, got {mask.dtype} {mask.shape}")
        bad = ~np.isin(mask, (NOT_TUMOUR, TUMOUR, DONT_CARE))
        if bad.any():
            raise ValueError(f"mask {k} has value {int(mask[bad][0])}; allowed: {NOT_TUMOUR} not tumour, "
                             f"{TUMOUR} tumour, {DONT_CARE} don't care")
        images.append(np.repeat((mask == TUMOUR).astype(np.float32)[..., None], 3, axis=-1))
        weights.append((mask != DONT_CARE).astype(np.float32))
    return images, weights


def render_label_masks(device, labels: np.ndarray, spacing, cameras: Sequence[Camera], settings: RenderSettings,
                       threshold: float = 0.5) -> list[np.ndarray]:
    """Masks of a (corrected) label volume: TUMOUR where its silhouette 1 - T_N reaches ``threshold``."""
    images = render_label_views(device, labels, spacing, cameras, silhouette_settings(settings))
    return [np.where(image[..., 0] >= threshold, TUMOUR, NOT_TUMOUR).astype(np.uint8) for image in images]
