"""The training loss of docs/method.md, computed on the device by ``slang/loss_kernels.slang``.

L = (1 - lambda) * CE_w + lambda * (1 - mean over classes of soft Dice), with
CE_w torch's class-weighted mean cross-entropy and soft Dice
(2 sum p y + s) / (sum p + sum y + s) per class over the micro-batch. With
``boundary_weight`` w > 0, L + w * L_B: L_B is Kervadec et al.'s boundary loss
(:func:`neumours.torch.boundary.boundary_loss`) at the sampled points, the mean
over points and tumour classes of phi_c p_c, phi the signed distance (mm) of
the point to class c's boundary in the reference labels (the sampler gathers
it with the labels); w = 0 (the default) compiles the kernels without it.

Per micro-batch two dispatches: batch sums (``loss_stats``), then dL/dlogits
(``loss_grad``) straight into the buffer the INR backward reads. The sums of
every micro-batch of a step stay in one small buffer, read once per step for
logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.device import download, upload
from neumours.kernels.loss import loss_grad, loss_stats, num_stats
from neumours.schema import Number, Numbers, setting, validate


@dataclass(frozen=True)
class LossConfig:
    """Loss settings (paper Table I defaults, docs/method.md).

    Attributes:
        dice_weight: lambda, the Dice share of the loss.
        class_weights: CE weight per class (bg, NCR, ED, ET): one per class of ``[network] num_classes``.
        dice_smooth: s in the soft Dice; 1.0 keeps a gradient for classes
            absent from a micro-batch (0 would divide 0 by 0 there).
        boundary_weight: w of the boundary term (Kervadec et al.'s boundary loss: mean over the
            points and tumour classes of the class probability times the point's signed distance,
            in mm, to that class's ground-truth boundary; negative inside, positive outside). 0
            (the default) leaves it out, and the run is the one without it, bit for bit;
            `benchmarks/boundary_loss.py` compares 0.01 and 0.1 with 0. Each training case's distance
            maps are computed once when it is loaded (scipy, about a second per 10^6 voxels) and
            held on the host (12 bytes per voxel). docs/method.md "Loss".
    """

    dice_weight: float = setting(0.5, Number(ge=0, le=1))
    class_weights: tuple[float, ...] = setting((2.0, 1.0, 1.0, 1.0),
                                               Numbers(Number(gt=0, le=1e6), min_length=2, max_length=256))
    dice_smooth: float = setting(1.0, Number(gt=0))
    boundary_weight: float = setting(0.0, Number(ge=0, le=10))

    def __post_init__(self) -> None:
        validate(self)


class DeviceLoss:
    """The loss on the device for up to ``slots`` micro-batches per step.

    Args:
        device: slangpy device.
        config: loss settings; ``len(config.class_weights)`` is the class count.
        slots: micro-batches per step (each keeps its sums until :meth:`reset`).
    """

    def __init__(self, device: spy.Device, config: LossConfig, slots: int):
        self.device = device
        self.config = config
        self.num_classes = len(config.class_weights)
        self.slots = int(slots)
        self.boundary = config.boundary_weight > 0
        self.stride = num_stats(self.num_classes, self.boundary)
        self.class_weights = upload(device, np.asarray(config.class_weights, np.float32))
        self.stats = upload(device, np.zeros(self.slots * self.stride, np.float32))

    def reset(self) -> None:
        """Zero the batch sums of every slot (start of a step)."""
        self.stats.copy_from_numpy(np.zeros(self.slots * self.stride, np.float32))

    def backward(self, logits: spy.Buffer, labels: spy.Buffer, count: int, grad_logits: spy.Buffer, slot: int,
                 scale: float = 1.0, phi: spy.Buffer | None = None) -> None:
        """Write dL/dlogits (count, C) of one micro-batch, times ``scale``.

        Args:
            logits: (count, C) float32. labels: (count,) uint32 in [0, C).
            grad_logits: output (count, C) float32.
            slot: which micro-batch of the step (its sums are kept for :meth:`values`).
            scale: 1 / micro-batches, so accumulated gradients are of the mean loss.
            phi: (count, C) float32 signed distances of the points (0 for background), needed
                exactly when ``config.boundary_weight`` > 0.
        """
        if (phi is not None) != self.boundary:
            raise ValueError("phi is needed exactly when boundary_weight > 0")
        offset, cfg = slot * self.stride, self.config
        mu = cfg.boundary_weight / (count * (self.num_classes - 1)) if self.boundary else 0.0
        loss_stats(self.device, logits, labels, self.class_weights, self.stats, offset, count, self.num_classes, phi)
        loss_grad(self.device, logits, labels, self.class_weights, self.stats, offset, grad_logits, count,
                  cfg.dice_weight, cfg.dice_smooth, scale, self.num_classes, phi, mu)

    def values(self, slots: int | None = None, first: int = 0) -> dict[str, float | list[float]]:
        """Loss, CE, soft Dice per class and their mean, averaged over micro-batch slots
        ``first .. first + slots - 1`` (default: every slot; a block of steps keeps each step's
        micro-batches in consecutive slots)."""
        slots = self.slots - first if slots is None else slots
        stats = download(self.stats, (self.slots, self.stride))[first:first + slots].astype(np.float64)
        return values_from_stats(stats, self.config)


def values_from_stats(stats: np.ndarray, config: LossConfig) -> dict[str, float | list[float]]:
    """Loss terms from batch sums (micro-batches, 2 + 3C (+ 1 with the boundary term)), averaged over
    micro-batches; ``boundary`` (L_B, unweighted) only when ``config.boundary_weight`` > 0."""
    c = len(config.class_weights)
    ce = stats[:, 1] / np.maximum(stats[:, 0], 1e-30)
    inter, psum, ysum = stats[:, 2:2 + c], stats[:, 2 + c:2 + 2 * c], stats[:, 2 + 2 * c:2 + 3 * c]
    dice = (2 * inter + config.dice_smooth) / (psum + ysum + config.dice_smooth)
    loss = (1 - config.dice_weight) * ce + config.dice_weight * (1 - dice.mean(axis=1))
    out = {}
    if config.boundary_weight > 0:
        boundary = stats[:, 2 + 3 * c] / np.maximum(ysum.sum(axis=1) * (c - 1), 1e-30)
        loss = loss + config.boundary_weight * boundary
        out["boundary"] = float(boundary.mean())
    return {"loss": float(loss.mean()), "ce": float(ce.mean()), "dice": [float(d) for d in dice.mean(axis=0)],
            "dice_mean": float(dice.mean()), **out}
