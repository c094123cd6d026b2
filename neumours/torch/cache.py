"""Volume caching as an autograd function: the INR over a case's grid -> class probabilities.

Forward is :class:`neumours.infer.cache.VolumeCache` (``keep_probs``); backward is
gradient path (a)'s last stage, :func:`neumours.infer.backprop.backprop_probabilities`
(the softmax and the INR backward over the voxel blocks that received gradient).
"""

from __future__ import annotations

from typing import Sequence

from types import SimpleNamespace

import numpy as np
import torch

from neumours.infer.cache import VolumeCache
from neumours.model.inputs import CaseVolumes, grid_inputs
from neumours.infer.backprop import backprop_probabilities
from neumours.torch import exchange
from neumours.torch.inr import INRModule, param_grads, weight_gradients

__all__ = ["cache"]


class _CacheFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module: INRModule, vols: CaseVolumes, case_index: int, grid_shape, chunk_points: int,
                stats, *params: torch.Tensor):
        module.push()
        exchange.before_kernels(module.device)
        vc = VolumeCache(module.inr, vols, case_index=case_index, grid_shape=grid_shape, keep_probs=True)
        ctx.state = (module, vols, case_index, vc.shape, chunk_points, stats)
        if stats is not None:
            stats["forward_points"] = stats.get("forward_points", 0) + vc.total
        return exchange.from_buffer(module.device, vc.probs_buffer, (module.config.num_classes, *vc.shape))

    @staticmethod
    @exchange.first_order
    def backward(ctx, grad_probs: torch.Tensor):
        module, vols, case_index, shape, chunk_points, stats = ctx.state
        dev, cfg = module.device, module.config
        g = exchange.to_buffer(dev, grad_probs.contiguous())
        exchange.before_kernels(dev)
        total = int(np.prod(shape))

        def fill(start, count, coords, patches):
            grid_inputs(cfg, vols, case_index, shape, start, count, coords, patches)

        count = []
        flat = weight_gradients(module.inr,
                                lambda: count.append(backprop_probabilities(module.inr, g, total, fill, chunk_points)))
        if stats is not None:
            stats["forward_points"] = stats.get("forward_points", 0) + count[0]
            stats["backward_points"] = stats.get("backward_points", 0) + count[0]
        return (None,) * 6 + param_grads(module, flat, ctx.needs_input_grad[6:])


def cache(inr: INRModule, volumes: CaseVolumes | np.ndarray, case_index: int = 0,
          grid_shape: Sequence[int] | None = None, chunk_points: int = 1 << 18,
          stats: dict | None = None) -> torch.Tensor:
    """softmax(INR) at every voxel of one case, differentiable w.r.t. the INR's parameters.

    Args:
        inr: the network.
        volumes: normalised volumes on the device (:meth:`CaseVolumes.upload`), or one case's
            (modalities, X, Y, Z) array.
        case_index: which case of ``volumes``.
        grid_shape: output grid (default the case's; finer grids sample the same field of view).
        chunk_points: grid points per INR pass of the backward.
        stats: if given, ``forward_points`` / ``backward_points`` (INR evaluations) are added to it.

    Returns:
        (num_classes, G0, G1, G2) float32 probabilities, channel first, on ``inr.torch_device``
        (on CUDA the cache's own device buffer).
    """
    if not isinstance(volumes, CaseVolumes):
        volumes = CaseVolumes.upload(inr.device, [np.asarray(volumes, np.float32)])
    params = inr.ordered_parameters()
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _CacheFunction.apply(inr, volumes, int(case_index), grid_shape, int(chunk_points), stats, *params)
    with torch.no_grad():
        return _CacheFunction.forward(SimpleNamespace(), inr, volumes, int(case_index), grid_shape, int(chunk_points), stats)
