"""The INR's fp32 backend: every product one ``slang/gemm_kernels.slang`` dispatch (FMA, every device).

Views become :class:`~neumours.kernels.gemm.Strided` views of flat float32
buffers (weights and gradients at their offsets in the bridge's flat vectors),
or :class:`~neumours.kernels.gemm.Fourier` features made in the kernel, so the
forward product, the input gradient and the weight gradient of a layer read the
same buffers without transposed copies.
"""

from __future__ import annotations

from typing import Callable

from neumours.kernels.gemm import Fourier, Strided, gemm, tiles_for
from neumours.model.backend import LayerBackend, Tensors
from neumours.model.network import FOURIER, GRADIENT, WEIGHT, Product, View


class FMABackend(LayerBackend):
    """fp32 products of one INR (:mod:`neumours.kernels.gemm`).

    Weight-gradient sums split to about one 256-thread group per multiprocessor,
    each group summing at least 32 points.
    """

    precision = "fp32"
    input_grads = True
    RESIDENT_THREADS = 256
    MIN_POINTS_PER_SPLIT = 32

    def split_blocks(self, m: int, n: int) -> tuple[int, int]:
        tiles = tiles_for(m, n)
        return -(-m // tiles.tile_m) * -(-n // tiles.tile_n), tiles.threads

    def _view(self, view: View) -> Callable[[Tensors], Strided | Fourier]:
        """The kernel operand of ``view``: fixed for weights and gradients, bound per call otherwise."""
        name = view.tensor
        if view.kind == FOURIER:
            num_freqs = self.inr.config.num_freqs
            return lambda tensors: Fourier(tensors[name], num_freqs)
        rows, k = (1, view.width) if view.transposed else (view.width, 1)
        if view.kind in (WEIGHT, GRADIENT):
            bridge = self.inr.bridge
            buffer = bridge.params_buffer if view.kind == WEIGHT else bridge.grads_buffer
            fixed = Strided(buffer, rows, k, self.inr.layout.offset(name) + view.column)
            return lambda tensors: fixed
        column = view.column
        return lambda tensors: Strided(tensors[name], rows, k, column)

    def prepare(self, product: Product) -> Callable[[Tensors, int], None]:
        a, b, out = self._view(product.a), self._view(product.b), self._view(product.out)
        epilogue, splits, shape, device = self.epilogue(product), self.splits(product), product.shape, self.inr.device

        def run(tensors: Tensors, count: int) -> None:
            m, n, k = shape(count)
            gemm(device, a(tensors), b(tensors), out(tensors), m, n, k, epilogue(tensors), splits=splits(count))

        return run
