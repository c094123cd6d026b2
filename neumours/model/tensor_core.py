"""The INR's bf16 tensor-core backend (CUDA only): the one module of ours that owns it.

The fp32 master weights stay in the bridge's flat buffer, where the torch
optimisers step them; :class:`TensorCoreBackend` keeps a bf16 copy of every
weight matrix (rows padded to 8 values) in one device buffer, refreshed by one
``pack_bf16`` dispatch whenever the bridge pushes new weights. Every product of
the network (:mod:`neumours.model.network`) is one
:func:`neumours.kernels.tensor_gemm.tensor_gemm`: bf16 operands, fp32
accumulation, the epilogue of :mod:`neumours.model.backend`, the Fourier
features made on load. Activations (H) and their gradients (delta) are stored in
bf16, as torch's autocast keeps them; inputs, logits, gradients of the logits
and weight gradients stay float32. Biases are read as float32 from the master buffer.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from neumours.device import empty_buffer
from neumours.kernels.bf16 import pack_bf16, pack_table, padded
from neumours.kernels.tensor_gemm import (_BLOCK, BF16, F32, FOURIER, K_CONTIGUOUS, ROWS_CONTIGUOUS, THREADS, WIDE,
                                          Operand, tensor_gemm)
from neumours.model import network as net
from neumours.model.backend import LayerBackend, Tensors


class TensorCoreBackend(LayerBackend):
    """The bf16 weight copy of one INR and its products on the tensor cores.

    Args:
        inr: the :class:`neumours.model.inr.INR`. Its products run on CUDA only
            (:func:`~neumours.kernels.tensor_gemm.tensor_gemm` refuses other devices);
            the weight copy is made on any device.

    Weight-gradient sums split to about two 256-thread groups per multiprocessor,
    each group summing at least 256 points (fewer: more atomic adds than products).
    """

    precision = "bf16"
    input_grads = False
    RESIDENT_THREADS = 2 * THREADS
    MIN_POINTS_PER_SPLIT = 256

    def __init__(self, inr):
        layout = inr.layout
        self.weight_names = [n for n in layout.names if n.endswith(".weight")]
        entries, self.offsets, self.row_lengths, offset = [], {}, {}, 0
        for name in self.weight_names:
            shape = layout.shape(name)
            rows, cols = shape[0], math.prod(shape[1:])
            entries.append((layout.offset(name), rows, cols, offset))
            self.offsets[name], self.row_lengths[name] = offset, padded(cols)
            offset += rows * padded(cols)
        self.table, self.pairs = pack_table(inr.device, entries)
        self.weights = empty_buffer(inr.device, self.pairs, np.uint32)
        super().__init__(inr)   # prepares the products, which read the bf16 copy
        self.refresh()

    def refresh(self) -> None:
        """Copy the master weights into the bf16 buffer (after every change of the weights)."""
        pack_bf16(self.inr.device, self.inr.bridge.params_buffer, self.table, len(self.weight_names), self.weights,
                  self.pairs)

    def split_blocks(self, m: int, n: int) -> tuple[int, int]:
        """WIDE blocks over m x (n + 1): the estimate counts the ones column of a bias gradient on every product."""
        block_m, block_n = _BLOCK[WIDE]
        return -(-m // block_m) * -(-(n + 1) // block_n), THREADS

    def _operand(self, view: net.View) -> Callable[[Tensors], Operand]:
        """The kernel operand of ``view``: fixed for weights (the bf16 copy), bound per call otherwise."""
        layout, name = (ROWS_CONTIGUOUS if view.transposed else K_CONTIGUOUS), view.tensor
        if view.kind == net.FOURIER:
            return lambda tensors: Operand(tensors[name], FOURIER, layout)
        if view.kind == net.WEIGHT:
            fixed = Operand(self.weights, BF16, layout, ld=self.row_lengths[name],
                            offset=self.offsets[name] + view.column)
            return lambda tensors: fixed
        source, ld, column = (BF16 if view.kind == net.ACTIVATION else F32), view.width, view.column
        return lambda tensors: Operand(tensors[name], source, layout, ld=ld, offset=column)

    def prepare(self, product: net.Product) -> Callable[[Tensors, int], None]:
        a, b, out = self._operand(product.a), self._operand(product.b), product.out
        epilogue, splits, shape, device = self.epilogue(product), self.splits(product), product.shape, self.inr.device
        name, out_ld, out_bf16 = out.tensor, out.width, out.kind == net.ACTIVATION
        if out.kind == net.GRADIENT:
            grads, out_offset = self.inr.bridge.grads_buffer, self.inr.layout.offset(name) + out.column
            target = lambda tensors: grads  # noqa: E731
        else:
            out_offset = out.column
            target = lambda tensors: tensors[name]  # noqa: E731

        def run(tensors: Tensors, count: int) -> None:
            m, n, k = shape(count)
            tensor_gemm(device, a(tensors), b(tensors), target(tensors), m, n, k, epilogue(tensors),
                        out_offset=out_offset, out_ld=out_ld, out_bf16=out_bf16, splits=splits(count))

        return run
