"""The INR over a set of points, chunk by chunk: labels (and softmax) into whole-set device buffers.

The one forward evaluator of the volume cache (grid points,
:class:`neumours.infer.cache.VolumeCache`) and of the ray-sample field
(:class:`neumours.infer.ray_field.DirectRenderer`): per chunk, the caller's
input filler writes coordinates and patches, the INR's inference runs (the fused
kernel, or the forward products with a ping-pong workspace), and ``argmax_labels`` writes the chunk's labels (and
probabilities) at its offset. :func:`neumours.infer.backprop.backprop_probabilities`
is its backward.
"""

from __future__ import annotations

import time

import slangpy as spy

from neumours.device import ScratchBuffers, empty_buffer
from neumours.infer.backprop import InputFiller
from neumours.kernels.probabilities import argmax_labels
from neumours.model.inr import INR, Workspace


def forward_workspace(inr: INR, count: int, scratch: ScratchBuffers | None = None) -> Workspace:
    """Forward-only workspace: the hidden activations ping-pong between two buffers.

    ``forward_device`` reads H_l and writes H_{l+1}, so two (count, hidden)
    buffers suffice when no backward pass needs every H_l (half the memory of
    :meth:`INR.workspace` for the paper's network, and no gradient buffers).
    Taken from ``scratch`` when given (reused between calls).
    """
    width = inr.config.hidden_width
    if scratch is not None:
        pair = [scratch.get(f"forward.hidden{i}", count * width) for i in range(2)]
    else:
        pair = [empty_buffer(inr.device, count * width) for _ in range(2)]
    hidden = [pair[layer % 2] for layer in range(inr.config.hidden_layers + 1)]
    return Workspace(count, hidden, [])


def classify_points(inr: INR, total: int, fill_inputs: InputFiller, chunk: int, labels: spy.Buffer,
                    probs: spy.Buffer | None = None, nonfinite: spy.Buffer | None = None,
                    scratch: ScratchBuffers | None = None, timer=None) -> None:
    """Arg-max labels (and softmax probabilities) of the INR at ``total`` points, ``chunk`` at a time.

    Args:
        fill_inputs: ``fill(start, count, coords, patches)`` writes the inputs of points start .. start + count.
        chunk: most points per INR pass (sets the working buffers' size).
        labels: (total,) uint32 device buffer written. probs: optional (num_classes, total) float32.
        nonfinite: optional (1,) uint32 flag the arg-max sets where a logit is NaN or Inf.
        scratch: working buffers reused between calls (new ones when None).
        timer: optional :class:`neumours.infer.cache.StageTimer`; adds ``"inference"``
            (inputs + forward) and ``"argmax"`` seconds.
    """
    cfg, dev = inr.config, inr.device

    def buffer(name: str, count: int) -> spy.Buffer:
        return scratch.get(f"points.{name}", count) if scratch is not None else empty_buffer(dev, count)

    coords = buffer("coords", chunk * 3)
    patches = buffer("patches", chunk * cfg.patch_dim)
    logits = buffer("logits", chunk * cfg.num_classes)
    ws = None if inr.fused is not None else forward_workspace(inr, chunk, scratch)
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        t0 = time.perf_counter()
        fill_inputs(start, count, coords, patches)
        inr.infer_device(coords, patches, count, logits, ws)
        if timer is not None:
            t0 = timer.add("inference", t0)
        argmax_labels(dev, logits, labels, start, count, total, cfg.num_classes, probs=probs, nonfinite=nonfinite)
        if timer is not None:
            timer.add("argmax", t0)


__all__ = ["classify_points", "forward_workspace"]
