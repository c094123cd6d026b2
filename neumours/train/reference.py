"""float64 torch reference of the training loss (tests; the torch training-loop peer)."""

from __future__ import annotations

import torch

from neumours.torch.boundary import boundary_loss


def seg_loss_torch(logits: torch.Tensor, labels: torch.Tensor, class_weights, dice_weight: float = 0.5,
                   smooth: float = 1.0, boundary_weight: float = 0.0, phi: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict]:
    """(1 - lambda) CE_w + lambda (1 - mean soft Dice) of docs/method.md (+ boundary_weight x the
    boundary loss of :func:`neumours.torch.boundary.boundary_loss` at the points), differentiable.

    Args:
        logits: (N, C). labels: (N,) int64 in [0, C).
        class_weights: C CE weights.
        phi: (N, C) signed distances of the points; needed when ``boundary_weight`` > 0.

    Returns:
        (loss, {"ce": tensor, "dice": (C,) tensor, "boundary": tensor (with the boundary term)}).
    """
    weights = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    ce = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    p = torch.softmax(logits, dim=1)
    y = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    dice = (2 * (p * y).sum(0) + smooth) / (p.sum(0) + y.sum(0) + smooth)
    loss = (1 - dice_weight) * ce + dice_weight * (1 - dice.mean())
    parts = {"ce": ce, "dice": dice}
    if boundary_weight > 0:
        parts["boundary"] = boundary_loss(p.T, phi.T, classes=range(1, logits.shape[1]))
        loss = loss + boundary_weight * parts["boundary"]
    return loss, parts
