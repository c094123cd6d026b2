"""Wrapper of ``slang/fused_mlp_kernels.slang``: the INR's whole forward in one kernel (CUDA, bf16).

The kernel (its CUDA C++ is ``slang/fused_mlp.cuh``) keeps each warp's 16 points' activations
in registers from the inputs to the logits; it reads the weights as bf16 pairs in mma.sync
B-fragment order and the biases padded to whole 8-column tiles, both packed on the device from
the flat float32 parameters (:func:`neumours.kernels.bf16.pack_fragments`). This module holds the
sizes the header and the packing share (checked against the header by tests/test_fused_mlp.py),
the kernel's layer table, and the dispatch; :mod:`neumours.model.fused` lays the layers out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "fused_mlp_kernels.slang"
#: Warps per group, points per warp (an mma.sync m16 tile) and per group.
WARPS, ROWS = 4, 16
THREADS, POINTS = 32 * WARPS, WARPS * ROWS
#: Bounds of the network the kernel's register arrays hold.
MAX_HIDDEN, MAX_HIDDEN_LAYERS, MAX_CLASSES = 256, 8, 16
#: uint32 words of one B fragment of a (k16, n8) tile: 32 lanes x 2.
WORDS_PER_TILE = 64
#: Entries of the kernel's layer table: the point count, the weight word offset and the bias
#: offset of each of the MAX_HIDDEN_LAYERS + 3 layers, and a 0 (fused_mlp_kernels.slang).
MAX_LAYERS = MAX_HIDDEN_LAYERS + 3
TABLE = 1 + 2 * MAX_LAYERS + 1


@dataclass(frozen=True)
class FusedShape:
    """The network's sizes (docs/method.md): ``fourier`` = 3 + 6K features, ``patch`` values, heads of
    ``spatial`` and ``modality`` columns, ``layers`` hidden layers of ``hidden`` columns, ``classes`` logits."""

    fourier: int
    patch: int
    spatial: int
    modality: int
    hidden: int
    layers: int
    classes: int

    def problem(self) -> str | None:
        """Why the kernel cannot hold this network, or None."""
        checks = (
            (self.hidden <= MAX_HIDDEN, f"hidden_width {self.hidden} is above {MAX_HIDDEN}"),
            (self.hidden % 16 == 0, f"hidden_width {self.hidden} is not a multiple of 16"),
            (self.spatial % 8 == 0 and self.modality % 8 == 0,
             f"the heads' widths {self.spatial} and {self.modality} are not multiples of 8"),
            (self.spatial + self.modality == self.hidden, "the heads' widths do not add up to hidden_width"),
            (self.layers <= MAX_HIDDEN_LAYERS, f"{self.layers} hidden layers, more than {MAX_HIDDEN_LAYERS}"),
            (self.classes <= MAX_CLASSES, f"{self.classes} classes, more than {MAX_CLASSES}"),
            (self.fourier < 1 << 16 and self.patch < 1 << 16, "more than 65,535 inputs"),
        )
        return next((why for ok, why in checks if not ok), None)

    def packed(self) -> tuple[int, int, int]:
        """The sizes as the kernel takes them (Slang passes ten arguments at most; fused_mlp.cuh's
        run_packed unpacks them): fourier | patch << 16, spatial | modality << 16,
        hidden | layers << 16 | classes << 24."""
        return (self.fourier | self.patch << 16, self.spatial | self.modality << 16,
                self.hidden | self.layers << 16 | self.classes << 24)


def kernel_table(offsets: Sequence[tuple[int, int]], count: int) -> list[int]:
    """The forward kernel's table (:data:`TABLE` entries) for ``count`` points and each layer's
    (first fragment word, first padded bias value), in the network's order."""
    if len(offsets) > MAX_LAYERS:
        raise ValueError(f"{len(offsets)} layers, the table holds {MAX_LAYERS}")
    table = [0] * TABLE
    table[0] = int(count)
    for index, (words, bias) in enumerate(offsets):
        table[1 + index] = int(words)
        table[1 + MAX_LAYERS + index] = int(bias)
    return table


def fused_forward(device: spy.Device, shape: FusedShape, offsets: Sequence[tuple[int, int]], coords: spy.Buffer,
                  patches: spy.Buffer, weights: spy.Buffer, biases: spy.Buffer, logits: spy.Buffer,
                  count: int) -> None:
    """logits (count, classes) of the points (coords (count, 3), patches (count, patch)).

    Args:
        offsets: per layer, its first fragment word in ``weights`` and first value in ``biases``
            (from :func:`neumours.kernels.bf16.pack_fragments` / ``pack_padded_biases``).

    Raises:
        ValueError: a device other than CUDA, a network the kernel cannot hold
            (:meth:`FusedShape.problem`), or a buffer too small.
    """
    if device.info.type != spy.DeviceType.cuda:
        raise ValueError("the fused inference kernel runs on CUDA devices only")
    problem = shape.problem()
    if problem:
        raise ValueError(f"the fused inference kernel cannot run this network: {problem}")
    if len(offsets) != shape.layers + 3:
        raise ValueError(f"{len(offsets)} layer offsets for a network of {shape.layers + 3} layers")
    require(coords, 3 * count, "coords")
    require(patches, shape.patch * count, "patches")
    require(logits, shape.classes * count, "logits")
    if count <= 0:
        return
    groups = -(-int(count) // POINTS)
    shape0, shape1, shape2 = shape.packed()
    constants = {"SHAPE0": shape0, "SHAPE1": shape1, "SHAPE2": shape2, "THREADS": THREADS, "TABLE": TABLE}
    load_kernel(device, FILE, "fused_mlp", constants)(
        groups * THREADS, params={"coords": coords, "patches": patches, "weights": weights, "biases": biases,
                                  "logits": logits, "table": kernel_table(offsets, count)})
