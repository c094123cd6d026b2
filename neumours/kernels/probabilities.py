"""Wrappers of ``slang/probability_kernels.slang``: labels and class probabilities of points, and their gradients.

Logits come chunk by chunk, (count, num_classes); labels, probabilities and
their gradients live in whole-volume (or whole-sample-set) buffers of
``total`` points, probabilities channel first (num_classes, total).
"""

from __future__ import annotations

import slangpy as spy

from neumours.conventions import NUM_CLASSES
from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "probability_kernels.slang"


def _constants(num_classes: int, write_probs: bool = False, check_finite: bool = False) -> dict:
    """The file's compile-time constants; every entry point gets all of them (the file compiles as a whole)."""
    return {"NUM_CLASSES": int(num_classes), "WRITE_PROBS": bool(write_probs), "CHECK_FINITE": bool(check_finite)}


def argmax_labels(device: spy.Device, logits: spy.Buffer, labels: spy.Buffer, start: int, count: int, total: int,
                  num_classes: int, probs: spy.Buffer | None = None, nonfinite: spy.Buffer | None = None) -> None:
    """labels[start + i] = argmax(logits[i]) (ties to the lowest class); with ``probs``, also the softmax.

    Args:
        logits: (count, num_classes) float32. labels: (total,) uint32.
        probs: (num_classes, total) float32, or None.
        nonfinite: (1,) uint32, or None: set to 1 when any logit of the chunk is
            NaN or Inf (never cleared here: one flag can watch a whole volume).
    """
    require(logits, count * num_classes, "logits")
    require(labels, total, "labels")
    if start + count > total:
        raise ValueError(f"points {start} .. {start + count} lie beyond the {total} of the output")
    params = {"logits": logits, "labels": labels, "start": int(start), "count": int(count), "total": int(total)}
    if probs is not None:
        require(probs, num_classes * total, "probs")
        params["probs"] = probs
    if nonfinite is not None:
        require(nonfinite, 1, "nonfinite", element_bytes=4)
        params["nonfinite"] = nonfinite
    load_kernel(device, FILE, "argmax_labels", _constants(num_classes, probs is not None, nonfinite is not None))(
        count, params=params)


def softmax_backward(device: spy.Device, logits: spy.Buffer, grad_probs: spy.Buffer, grad_logits: spy.Buffer,
                     start: int, count: int, total: int, num_classes: int) -> None:
    """grad_logits (count, C) = dL/dz through the softmax, given dL/dp (C, total) of points start .. start + count."""
    require(logits, count * num_classes, "logits")
    require(grad_probs, num_classes * total, "grad_probs")
    require(grad_logits, count * num_classes, "grad_logits")
    load_kernel(device, FILE, "softmax_backward", _constants(num_classes))(
        count, params={"logits": logits, "grad_probs": grad_probs, "grad_logits": grad_logits, "start": int(start),
                       "count": int(count), "total": int(total)})


def gradient_blocks(device: spy.Device, grad_probs: spy.Buffer, flags: spy.Buffer, total: int, block: int,
                    num_classes: int) -> int:
    """flags[b] = 1 where points b * block .. (b + 1) * block of dL/dp (C, total) hold any nonzero; returns blocks."""
    blocks = -(-int(total) // int(block))
    require(grad_probs, num_classes * total, "grad_probs")
    require(flags, blocks, "flags")
    load_kernel(device, FILE, "gradient_blocks", _constants(num_classes))(
        blocks, params={"grad_probs": grad_probs, "flags": flags, "total": int(total), "block": int(block),
                        "blocks": blocks})
    return blocks


def pack_labels(device: spy.Device, labels: spy.Buffer, packed: spy.Buffer, total: int,
                fortran_grid: tuple[int, int, int] | None = None) -> None:
    """packed (ceil(total / 4),) uint32 = the ``total`` uint32 labels as bytes, four per word.

    Args:
        fortran_grid: (X, Y, Z) of the C-ordered labels: pack them in Fortran order (a NIfTI
            file's order; X * Y * Z must be ``total``); None: keep their order.
    """
    words = -(-int(total) // 4)
    require(labels, total, "labels")
    require(packed, words, "packed")
    grid = (0, 0, 0)
    if fortran_grid is not None:
        grid = tuple(int(n) for n in fortran_grid)
        if len(grid) != 3 or min(grid) < 1 or grid[0] * grid[1] * grid[2] != int(total):
            raise ValueError(f"fortran_grid {fortran_grid} does not hold {total} labels")
    load_kernel(device, FILE, "pack_labels", _constants(NUM_CLASSES))(
        words, params={"labels": labels, "packed": packed, "total": int(total), "fortran_grid": spy.uint3(*grid)})
