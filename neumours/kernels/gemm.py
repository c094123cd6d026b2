"""Wrapper of ``slang/gemm_kernels.slang``: one tiled matrix product for every
dense layer of the INR, forward and backward.

``gemm(device, a, b, out, ...)`` computes ``C[m, n] = sum_k A(m, k) B(n, k)``
with an epilogue (store with bias/ReLU, ReLU-gradient mask, or accumulate).
Operands are :class:`Strided` views of flat float32 buffers, so ``X W^T``,
``dY W`` and ``dY^T X`` all run without transposed copies, or :class:`Fourier`
encodings of a coordinate buffer, computed inside the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import uses_groupshared

FILE = "gemm_kernels.slang"


@dataclass(frozen=True)
class Strided:
    """Matrix view ``M(row, k) = buffer[offset + row * stride_row + k * stride_k]``."""

    buffer: spy.Buffer
    stride_row: int
    stride_k: int
    offset: int = 0


@dataclass(frozen=True)
class Fourier:
    """The Fourier features of ``coords`` (a (P, 3) float32 buffer), K = ``num_freqs``.

    As operand A: rows are points and k the feature. As operand B: k runs over
    points and rows are features (used for the spatial head's weight gradient).
    """

    coords: spy.Buffer
    num_freqs: int


@dataclass(frozen=True)
class Tiles:
    """Work split of one group: a tile_m x tile_n block of C, thread_m x thread_n per thread."""

    tile_m: int
    tile_n: int
    tile_k: int
    thread_m: int
    thread_n: int

    def __post_init__(self) -> None:
        if self.thread_m % 4 or self.thread_n % 4 or self.tile_m % self.thread_m or self.tile_n % self.thread_n:
            raise ValueError(f"{self}: thread blocks must be multiples of 4 that divide the tile")
        if (self.tile_k * self.tile_m) % self.threads or (self.tile_k * self.tile_n) % self.threads:
            raise ValueError(f"{self}: every thread must stage the same number of values")

    @property
    def threads(self) -> int:
        return (self.tile_m // self.thread_m) * (self.tile_n // self.thread_n)


#: 128 x 128 blocks, 8 x 8 per thread (256 threads): layers with many outputs
#: (the fastest of benchmarks/inr_throughput.py's variants on an H100).
WIDE = Tiles(128, 128, 8, 8, 8)
#: 128 x 4 blocks: layers with few outputs (the 4 logits, bias sums).
NARROW = Tiles(128, 4, 16, 4, 4)

STORE, RELU_GRAD, ACCUMULATE = 0, 1, 2

#: 4 x 128 blocks: products with few rows (the head's weight gradient).
SHORT = Tiles(4, 128, 8, 4, 4)


def tiles_for(m: int, n: int) -> Tiles:
    """The work split ``gemm`` uses for an m x n product."""
    if n <= 8:
        return NARROW
    return SHORT if m <= 8 else WIDE


def _operand(view, prefix: str, params: dict) -> str:
    """Fill the operand's parameters; return its type in gemm_kernels.slang (``StridedA``, ``FourierB``, ...)."""
    side = prefix.upper()
    if isinstance(view, Fourier):
        params[prefix] = view.coords
        params[f"{prefix}_offset"] = 0
        params[f"{prefix}_stride_{'m' if prefix == 'a' else 'n'}"] = 0
        params[f"{prefix}_stride_k"] = 0
        return f"Fourier{side}"
    params[prefix] = view.buffer
    params[f"{prefix}_offset"] = int(view.offset)
    params[f"{prefix}_stride_{'m' if prefix == 'a' else 'n'}"] = int(view.stride_row)
    params[f"{prefix}_stride_k"] = int(view.stride_k)
    return f"Strided{side}"


#: The epilogue types of gemm_kernels.slang.
_EPILOGUES = {STORE: "Store", RELU_GRAD: "ReluGradient", ACCUMULATE: "Accumulate"}


def gemm(
    device: spy.Device,
    a: Strided | Fourier,
    b: Strided | Fourier,
    out: Strided,
    m: int,
    n: int,
    k: int,
    *,
    epilogue: int = STORE,
    bias: Strided | None = None,
    relu: bool = False,
    mask: Strided | None = None,
    bias_grad: Strided | None = None,
    column_sums: tuple[spy.Buffer, int, int, int] | None = None,
    splits: int = 1,
    tiles: Tiles | None = None,
) -> None:
    """Dispatch ``C = A B^T`` (m x n, summing k) with an epilogue.

    Args:
        a: A(m, k) view; b: B(n, k) view; out: C view (``stride_k`` unused; rows
            are ``stride_row`` apart, columns contiguous).
        epilogue: ``STORE`` (C = acc + bias, ReLU optional), ``RELU_GRAD``
            (C = acc where mask > 0 else 0) or ``ACCUMULATE`` (C += acc).
        bias: view of n biases (STORE only). mask: H(m, n) view (RELU_GRAD only).
        bias_grad: (ACCUMULATE only) also accumulate ``sum_k A(m, k)`` at
            ``bias_grad.offset + m``, through a virtual column of ones in B: a
            layer's weight and bias gradients in one dispatch.
        column_sums: (RELU_GRAD only) ``(buffer, split, offset, offset_hi)``:
            also accumulate the column sums of C (the bias gradient of the layer
            whose pre-activation gradient C is) at ``offset + n`` for ``n < split``
            and ``offset_hi + n - split`` beyond.
        splits: split the k sum over this many groups (ACCUMULATE only), so a
            weight gradient over many points fills the GPU and each weight gets
            ``splits`` atomic adds in all.
        tiles: work split; chosen from ``n`` when omitted.
    """
    if splits > 1 and epilogue != ACCUMULATE:
        raise ValueError("split-k needs the ACCUMULATE epilogue")
    if bias_grad is not None and epilogue != ACCUMULATE:
        raise ValueError("bias_grad needs the ACCUMULATE epilogue")
    if column_sums is not None and epilogue != RELU_GRAD:
        raise ValueError("column_sums needs the RELU_GRAD epilogue")
    tiles = tiles or tiles_for(m, n)
    params: dict = {}
    num_freqs = 0
    a_operand = _operand(a, "a", params)
    b_operand = _operand(b, "b", params)
    if bias_grad is not None:
        b_operand = f"WithOnesColumn<{b_operand}>"
    for view in (a, b):
        if isinstance(view, Fourier):
            num_freqs = view.num_freqs
    params["bias"] = bias.buffer if bias is not None else out.buffer
    params["bias_offset"] = int(bias.offset) if bias is not None else 0
    params["mask"] = mask.buffer if mask is not None else out.buffer
    params["mask_offset"] = int(mask.offset) if mask is not None else 0
    params["mask_stride"] = int(mask.stride_row) if mask is not None else 0
    params["c"] = out.buffer
    params["c_offset"] = int(out.offset)
    params["c_stride"] = int(out.stride_row)
    params["ones_column"] = int(n) if bias_grad is not None else 0xFFFFFFFF
    params["bias_out_offset"] = int(bias_grad.offset) if bias_grad is not None else 0
    if bias_grad is not None:
        n += 1
    sums_buffer, split, offset, offset_hi = column_sums or (out.buffer, 0, 0, 0)
    params.update(colsum_out=sums_buffer, colsum_split=int(split), colsum_offset=int(offset),
                  colsum_offset_hi=int(offset_hi))
    k_chunk = -(-k // max(splits, 1))
    k_chunk = -(-k_chunk // tiles.tile_k) * tiles.tile_k
    params.update(size_m=int(m), size_n=int(n), size_k=int(k), k_chunk=int(k_chunk))
    constants = {
        "TILE_M": tiles.tile_m,
        "TILE_N": tiles.tile_n,
        "TILE_K": tiles.tile_k,
        "THREAD_M": tiles.thread_m,
        "THREAD_N": tiles.thread_n,
        "A_OPERAND": a_operand,
        "B_OPERAND": b_operand,
        "EPILOGUE": _EPILOGUES[epilogue],
        "HAS_BIAS": bias is not None,
        "RELU": relu,
        "NUM_FREQS": num_freqs,
        "COLUMN_SUMS": column_sums is not None,
        "ONES_COLUMN": bias_grad is not None,
        "USE_GROUPSHARED": uses_groupshared(device),
    }
    kernel = load_kernel(device, FILE, "gemm", constants)
    groups = (-(-m // tiles.tile_m), -(-n // tiles.tile_n), -(-k // k_chunk) if k else 1)
    kernel((groups[0] * tiles.threads, groups[1], groups[2]), params=params)
