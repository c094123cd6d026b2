"""The backward of the volume cache and of the ray-sample field: dL/dp per point -> dL/d(INR weights).

The renderer leaves dL/dp, the gradient of the image loss with respect to the
class probabilities of a set of points (the grid voxels of path (a), the ray
samples of path (b)), channel first in one device buffer. This module finds
the blocks of points that received any gradient (``gradient_blocks`` in
``slang/probability_kernels.slang``), and over those only, chunk by chunk,
recomputes the INR forward pass, turns dL/dp into dL/dlogits through the
softmax (``softmax_backward``) and runs the INR backward pass, which adds into
the weight-gradient buffer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import slangpy as spy

from neumours.device import download, empty_buffer
from neumours.kernels.probabilities import gradient_blocks, softmax_backward
from neumours.model.inr import INR

#: Points per block of the zero-gradient test; blocks with no gradient skip the backward pass.
BLOCK_POINTS = 1024

#: fill(start, count, coords, patches): write the INR inputs of points start .. start + count.
InputFiller = Callable[[int, int, spy.Buffer, spy.Buffer], None]


def active_ranges(device: spy.Device, grad_probs: spy.Buffer, num_classes: int, total: int, chunk: int,
                  block: int = BLOCK_POINTS) -> list[tuple[int, int]]:
    """Ranges ``(start, count)`` of points whose blocks received gradient, each at most ``chunk`` long.

    Args:
        grad_probs: (num_classes, total) float32 dL/dp.
        chunk: longest range.
    """
    flags = empty_buffer(device, -(-total // block), np.uint32)
    blocks = gradient_blocks(device, grad_probs, flags, total, block, num_classes)
    active = download(flags, (blocks,), np.uint32).astype(bool)
    # Runs of consecutive active blocks, as point ranges, cut to at most `chunk` points.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    ranges = []
    for first, last in zip(edges[::2], edges[1::2]):
        begin, end = int(first) * block, min(int(last) * block, total)
        ranges.extend((s, min(chunk, end - s)) for s in range(begin, end, chunk))
    return ranges


def backprop_probabilities(inr: INR, grad_probs: spy.Buffer, total: int, fill_inputs: InputFiller,
                           chunk_points: int = 1 << 18) -> int:
    """Add dL/d(weights) into ``inr``'s gradient buffer, given dL/dp of ``total`` points.

    Args:
        inr: the network; its gradient buffer is added to.
        grad_probs: (num_classes, total) float32 dL/dp on the device.
        fill_inputs: writes the INR inputs (coordinates, patches) of a range of points.
        chunk_points: most points per INR pass (sets the workspace size).

    Returns:
        how many points went through the backward pass (those in blocks with gradient).
    """
    device, cfg = inr.device, inr.config
    chunk = max(1, min(int(chunk_points), total))
    ranges = active_ranges(device, grad_probs, cfg.num_classes, total, chunk)
    if not ranges:
        return 0
    chunk = max(count for _, count in ranges)
    ws = inr.workspace(chunk)
    coords, patches = empty_buffer(device, chunk * 3), empty_buffer(device, chunk * cfg.patch_dim)
    logits, grad_logits = empty_buffer(device, chunk * cfg.num_classes), empty_buffer(device, chunk * cfg.num_classes)
    for start, count in ranges:
        fill_inputs(start, count, coords, patches)
        inr.forward_device(coords, patches, count, logits, ws)
        softmax_backward(device, logits, grad_probs, grad_logits, start, count, total, cfg.num_classes)
        inr.backward_device(coords, patches, count, grad_logits, ws)
    return sum(count for _, count in ranges)
