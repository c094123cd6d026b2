"""Wrappers of ``slang/loss_kernels.slang``: batch sums of the training loss and dL/dlogits.

``phi`` (the per-point signed distances of the boundary term, ``[loss] boundary_weight``) is
optional: without it the kernels are compiled with ``BOUNDARY_LOSS 0`` and are exactly the loss
without the term.
"""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require, uses_groupshared

FILE = "loss_kernels.slang"


def num_stats(num_classes: int, boundary: bool = False) -> int:
    """Floats of batch sums per micro-batch: weight, CE, 3 per class (intersection, sum p, count),
    and with ``boundary`` the sum of the boundary term."""
    return 2 + 3 * int(num_classes) + int(bool(boundary))


def _params(logits, labels, class_weights, stats, grad_logits, stats_offset, count, dice_weight, smooth, scale,
            num_classes, phi, boundary_mu) -> dict:
    require(logits, count * num_classes, "logits")
    require(labels, count, "labels")
    require(class_weights, num_classes, "class_weights")
    require(stats, stats_offset + num_stats(num_classes, phi is not None), "stats")
    params = {"logits": logits, "labels": labels, "class_weights": class_weights, "stats": stats,
              "stats_offset": int(stats_offset), "count": int(count), "lambda": float(dice_weight),
              "smooth": float(smooth), "scale": float(scale)}
    if grad_logits is not None:
        require(grad_logits, count * num_classes, "grad_logits")
        params["grad_logits"] = grad_logits
    if phi is not None:
        require(phi, count * num_classes, "phi")
        params.update(phi=phi, boundary_mu=float(boundary_mu))
    return params


def _constants(device: spy.Device, num_classes: int, boundary: bool) -> dict:
    return {"NUM_CLASSES": int(num_classes), "USE_GROUPSHARED": uses_groupshared(device),
            "BOUNDARY_LOSS": int(bool(boundary))}


def loss_stats(device: spy.Device, logits: spy.Buffer, labels: spy.Buffer, class_weights: spy.Buffer,
               stats: spy.Buffer, stats_offset: int, count: int, num_classes: int, phi: spy.Buffer | None = None
               ) -> None:
    """Add the batch sums of ``count`` points to ``stats[stats_offset:]`` (logits (count, C), labels (count,) uint32;
    phi (count, C) float32: with it, the boundary term's sum sum_i sum_c phi_ic p_ic comes last)."""
    params = _params(logits, labels, class_weights, stats, None, stats_offset, count, 0.0, 0.0, 1.0, num_classes,
                     phi, 0.0)
    load_kernel(device, FILE, "loss_stats", _constants(device, num_classes, phi is not None))(count, params=params)


def loss_grad(device: spy.Device, logits: spy.Buffer, labels: spy.Buffer, class_weights: spy.Buffer,
              stats: spy.Buffer, stats_offset: int, grad_logits: spy.Buffer, count: int, dice_weight: float,
              smooth: float, scale: float, num_classes: int, phi: spy.Buffer | None = None,
              boundary_mu: float = 0.0) -> None:
    """grad_logits (count, C) = ``scale`` x dL/dlogits, from the batch sums :func:`loss_stats` left; with ``phi``
    the loss includes ``boundary_mu`` x sum_i sum_c phi_ic p_ic."""
    params = _params(logits, labels, class_weights, stats, grad_logits, stats_offset, count, dice_weight, smooth,
                     scale, num_classes, phi, boundary_mu)
    load_kernel(device, FILE, "loss_grad", _constants(device, num_classes, phi is not None))(count, params=params)
