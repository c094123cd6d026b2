"""Optimisers and learning-rate schedule of docs/method.md, over the bridge's parameters.

``adamw``: torch.optim.AdamW on every tensor. ``muon``: torch.optim.Muon on the
2-D weight matrices (it takes only 2-D parameters) and AdamW on the biases and
the Conv3d kernel, as the paper does. Muon's update is scaled to match AdamW's
RMS (``adjust_lr_fn="match_rms_adamw"``) so one learning rate serves both.

:func:`apply_gradients` is the one optimiser step over gradients the kernels
accumulated (pull, clip, step, push) that training, refinement and the viewer take.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from neumours.model.bridge import TorchBridge
from neumours.errors import NeumoursError


def build_optimizers(bridge: TorchBridge, config) -> list[torch.optim.Optimizer]:
    """Optimisers stepping the bridge's flat parameter buffer in place.

    Args:
        config: an OptimizerConfig (name, lr, weight_decay, betas).
    """
    params = bridge.named_torch_parameters()
    adamw = dict(lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    if config.name == "adamw":
        return [torch.optim.AdamW(list(params.values()), **adamw)]
    if config.name == "muon":
        matrices = [p for p in params.values() if p.ndim == 2]
        others = [p for p in params.values() if p.ndim != 2]
        return [
            torch.optim.Muon(matrices, lr=config.lr, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(others, **adamw),
        ]
    raise NeumoursError(f"unknown optimizer {config.name!r} (choose adamw or muon)")


def apply_gradients(bridge: TorchBridge, optimizers: Sequence[torch.optim.Optimizer], clip_norm: float,
                    params: Sequence[torch.nn.Parameter] | None = None, pull: bool = True) -> torch.Tensor:
    """One optimiser step over the weights of ``bridge``: pull the gradients, clip, step, push.

    Args:
        optimizers: stepped in order (Muon and AdamW for training, one AdamW for refinement).
        clip_norm: the total gradient norm is clipped to this (``clip_grad_norm_``).
        params: the parameters whose ``.grad`` is clipped; default the bridge's own
            (:meth:`TorchBridge.torch_parameters`, whose ``.grad`` is the gradient buffer).
            A :class:`neumours.torch.INRModule`'s parameters carry autograd's gradients instead.
        pull: copy the gradient buffer the kernels accumulated into torch first (the
            bridge's own parameters); False where ``.grad`` is already complete.

    Returns:
        The total gradient norm before clipping, a 0-d tensor on the parameters' device
        (not read back, so a CUDA step does not wait for it).
    """
    if pull:
        bridge.pull_grads()
    if params is None:
        params = bridge.torch_parameters()
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    for optimizer in optimizers:
        optimizer.step()
    bridge.push_params()
    return norm


def learning_rate(step: int, total_steps: int, config) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay from lr to lr_final at ``total_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, total_steps - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * t))


def set_learning_rate(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
