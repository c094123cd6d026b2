"""Wrappers of ``slang/loss_kernels.slang``: batch sums of the training loss and dL/dlogits."""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require, uses_groupshared

FILE = "loss_kernels.slang"


def num_stats(num_classes: int) -> int:
    """Floats of batch sums per micro-batch: weight, CE, and 3 per class (intersection, sum p, count)."""
    return 2 + 3 * int(num_classes)


def _params(logits, labels, class_weights, stats, grad_logits, stats_offset, count, dice_weight, smooth, scale,
            num_classes) -> dict:
    require(logits, count * num_classes, "logits")
    require(labels, count, "labels")
    require(class_weights, num_classes, "class_weights")
    require(stats, stats_offset + num_stats(num_classes), "stats")
    params = {"logits": logits, "labels": labels, "class_weights": class_weights, "stats": stats,
              "stats_offset": int(stats_offset), "count": int(count), "lambda": float(dice_weight),
              "smooth": float(smooth), "scale": float(scale)}
    if grad_logits is not None:
        require(grad_logits, count * num_classes, "grad_logits")
        params["grad_logits"] = grad_logits
    return params


def _constants(device: spy.Device, num_classes: int) -> dict:
    return {"NUM_CLASSES": int(num_classes), "USE_GROUPSHARED": uses_groupshared(device)}


def loss_stats(device: spy.Device, logits: spy.Buffer, labels: spy.Buffer, class_weights: spy.Buffer,
               stats: spy.Buffer, stats_offset: int, count: int, num_classes: int) -> None:
    """Add the batch sums of ``count`` points to ``stats[stats_offset:]`` (logits (count, C), labels (count,) uint32)."""
    params = _params(logits, labels, class_weights, stats, None, stats_offset, count, 0.0, 0.0, 1.0, num_classes)
    load_kernel(device, FILE, "loss_stats", _constants(device, num_classes))(count, params=params)


def loss_grad(device: spy.Device, logits: spy.Buffer, labels: spy.Buffer, class_weights: spy.Buffer,
              stats: spy.Buffer, stats_offset: int, grad_logits: spy.Buffer, count: int, dice_weight: float,
              smooth: float, scale: float, num_classes: int) -> None:
    """grad_logits (count, C) = ``scale`` x dL/dlogits, from the batch sums :func:`loss_stats` left."""
    params = _params(logits, labels, class_weights, stats, grad_logits, stats_offset, count, dice_weight, smooth,
                     scale, num_classes)
    load_kernel(device, FILE, "loss_grad", _constants(device, num_classes))(count, params=params)
