"""Render-loss refinement, path (b): the INR evaluated at the ray samples, no volume cache.

The field and its backward are :class:`neumours.infer.ray_field.DirectRenderer`; here the
image loss (torch, :func:`neumours.refine.image_loss.masked_mse`) joins them through
:func:`neumours.torch.render_inr`. Cost grows with the samples (pixels x steps per ray),
not the voxels, so this path wins for small or masked views and loses for large
ones (``benchmarks/refine_step.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from neumours.infer.cache import MAX_BUFFER_BYTES
from neumours.infer.ray_field import DirectRenderer, DirectView, RaySamples
from neumours.model.inputs import CaseVolumes
from neumours.model.inr import INR
from neumours.render.camera import Camera
from neumours.refine.cache_path import add_to_gradient_buffer, view_tensors
from neumours.refine.image_loss import masked_mse
from neumours.render.transfer import RenderSettings
from neumours.torch import INRModule, render_inr

__all__ = ["DirectRenderer", "DirectView", "RaySamples", "direct_path_gradients", "direct_path_loss"]


def direct_path_loss(net: INRModule, vols: CaseVolumes, spacing, cameras: Sequence[Camera], settings: RenderSettings,
                     targets: Sequence[torch.Tensor], weights: Sequence[torch.Tensor | None], case_index: int = 0,
                     chunk_points: int = 1 << 18, stats: dict | None = None,
                     host_weights: Sequence[np.ndarray | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The image loss summed over views by path (b), as a differentiable torch scalar, and the images.

    ``host_weights`` (the pixel weights as host arrays, default ``weights``) say which rays to march;
    a view whose samples need a buffer over :data:`MAX_BUFFER_BYTES` raises ValueError.
    """
    host_weights = host_weights if host_weights is not None else \
        [None if w is None else w.detach().cpu().numpy() for w in weights]
    images = [render_inr(net, vols, camera, settings, spacing=spacing, case_index=case_index, weight=host_weights[k],
                         chunk_points=chunk_points, stats=stats, max_bytes=MAX_BUFFER_BYTES)
              for k, camera in enumerate(cameras)]
    loss = sum(masked_mse(image, t, w) for image, t, w in zip(images, targets, weights, strict=True))
    return loss, images


def direct_path_gradients(inr: INR, vols: CaseVolumes, spacing, cameras: Sequence[Camera],
                          settings: RenderSettings, targets: Sequence[np.ndarray],
                          weights: Sequence[np.ndarray | None] | None = None, case_index: int = 0,
                          chunk_points: int = 1 << 18, stats: dict | None = None) -> tuple[float, list[np.ndarray]]:
    """Path (b) with the signature of :func:`neumours.refine.cache_path.cache_path_gradients`.

    Adds d(image loss)/d(weights), summed over views, into ``inr``'s gradient buffer.

    Returns:
        (loss summed over views, the rendered images).
    """
    net = INRModule.wrap(inr)
    if stats is not None:
        stats.update(forward_points=0, backward_points=0)
    ts, ws = view_tensors(inr, targets, weights)
    loss, images = direct_path_loss(net, vols, spacing, cameras, settings, ts, ws, case_index, chunk_points, stats,
                                    weights)
    add_to_gradient_buffer(inr, loss, net)
    return float(loss.detach()), [image.detach().cpu().numpy() for image in images]
