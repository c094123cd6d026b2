"""Wrapper of ``slang/gemm_kernels.slang``: one tiled matrix product for every
dense layer of the INR, forward and backward.

``gemm(device, a, b, out, ...)`` computes ``C[m, n] = sum_k A(m, k) B(n, k)``
with an :class:`~neumours.kernels.epilogue.Epilogue` (store with bias/ReLU,
ReLU-gradient mask, or accumulate), the same one the tensor-core product takes.
Operands are :class:`Strided` views of flat float32 buffers, so ``X W^T``,
``dY W`` and ``dY^T X`` all run without transposed copies, or :class:`Fourier`
encodings of a coordinate buffer, computed inside the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import uses_groupshared
from neumours.kernels.epilogue import ACCUMULATE, RELU_GRAD, STORE, ColumnSums, Epilogue

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

#: 4 x 128 blocks: products with few rows (the head's weight gradient).
SHORT = Tiles(4, 128, 8, 4, 4)


#: The CPU target runs a dispatch's threads one after another and each thread sums every k of
#: its block, inside C or not: small blocks there, so a 16-wide layer does not compute a
#: 128 x 128 tile (the tiny network's step ran 3-4x slower with the GPU tiles).
SERIAL = Tiles(16, 16, 8, 4, 4)
SERIAL_NARROW = Tiles(16, 4, 16, 4, 4)


def tiles_for(m: int, n: int, serial: bool = False) -> Tiles:
    """The work split ``gemm`` uses for an m x n product (``serial``: on a device that runs
    threads in turn, the CPU target)."""
    if serial:
        return SERIAL_NARROW if n <= 4 else SERIAL
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
    epilogue: Epilogue = Epilogue(),
    *,
    splits: int = 1,
    tiles: Tiles | None = None,
) -> None:
    """Dispatch ``C = A B^T`` (m x n, summing k) with an epilogue.

    Args:
        a: A(m, k) view; b: B(n, k) view; out: C view (``stride_k`` unused; rows
            are ``stride_row`` apart, columns contiguous).
        epilogue: what is done with the sums (:class:`neumours.kernels.epilogue.Epilogue`):
            bias and ReLU, ReLU-gradient mask with column sums, or accumulation,
            with the bias gradient (``bias_grad``, an offset in ``out.buffer``)
            through a virtual column of ones in B.
        splits: split the k sum over this many groups (ACCUMULATE only), so a
            weight gradient over many points fills the GPU and each weight gets
            ``splits`` atomic adds in all.
        tiles: work split; chosen from ``n`` when omitted.
    """
    epilogue.check(splits)
    bias, mask, bias_grad, column_sums = epilogue.bias, epilogue.mask, epilogue.bias_grad, epilogue.column_sums
    tiles = tiles or tiles_for(m, n, serial=not uses_groupshared(device))
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
    params["mask_stride"] = int(mask.ld) if mask is not None else 0
    params["c"] = out.buffer
    params["c_offset"] = int(out.offset)
    params["c_stride"] = int(out.stride_row)
    params["ones_column"] = int(n) if bias_grad is not None else 0xFFFFFFFF
    params["bias_out_offset"] = int(bias_grad) if bias_grad is not None else 0
    if bias_grad is not None:
        n += 1
    sums = column_sums or ColumnSums(out.buffer, 0, 0, 0)
    params.update(colsum_out=sums.buffer, colsum_split=int(sums.split), colsum_offset=int(sums.offset),
                  colsum_offset_hi=int(sums.offset_hi))
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
        "EPILOGUE": _EPILOGUES[epilogue.op],
        "HAS_BIAS": bias is not None,
        "RELU": epilogue.relu,
        "NUM_FREQS": num_freqs,
        "COLUMN_SUMS": column_sums is not None,
        "ONES_COLUMN": bias_grad is not None,
        "USE_GROUPSHARED": uses_groupshared(device),
    }
    kernel = load_kernel(device, FILE, "gemm", constants)
    groups = (-(-m // tiles.tile_m), -(-n // tiles.tile_n), -(-k // k_chunk) if k else 1)
    kernel((groups[0] * tiles.threads, groups[1], groups[2]), params=params)
