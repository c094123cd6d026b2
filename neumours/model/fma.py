"""The INR's fp32 backend: every product one ``slang/gemm_kernels.slang`` dispatch (FMA, every device).

Views become :class:`~neumours.kernels.gemm.Strided` views of flat float32
buffers (weights and gradients at their offsets in the bridge's flat vectors),
or :class:`~neumours.kernels.gemm.Fourier` features made in the kernel, so the
forward product, the input gradient and the weight gradient of a layer read the
same buffers without transposed copies.
"""

from __future__ import annotations

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

    def _view(self, view: View, tensors: Tensors) -> Strided | Fourier:
        if view.kind == FOURIER:
            return Fourier(tensors[view.tensor], self.inr.config.num_freqs)
        if view.kind in (WEIGHT, GRADIENT):
            bridge = self.inr.bridge
            buffer = bridge.params_buffer if view.kind == WEIGHT else bridge.grads_buffer
            offset = self.inr.layout.offset(view.tensor) + view.column
        else:
            buffer, offset = tensors[view.tensor], view.column
        if view.transposed:
            return Strided(buffer, 1, view.width, offset)
        return Strided(buffer, view.width, 1, offset)

    def dispatch(self, product: Product, tensors: Tensors, count: int) -> None:
        m, n, k = product.shape(count)
        gemm(self.inr.device, self._view(product.a, tensors), self._view(product.b, tensors),
             self._view(product.out, tensors), m, n, k, self.epilogue(product, tensors),
             splits=self.splits(product, count))
