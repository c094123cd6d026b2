"""Wrapper of ``slang/tensor_core_kernels.slang``: the bf16 tensor-core matrix product (CUDA only).

``tensor_gemm(device, a, b, out, m, n, k, ...)`` computes ``C = A B^T`` (m x n,
summing k) on the tensor cores, bf16 operands and fp32 accumulation, with the
:class:`~neumours.kernels.epilogue.Epilogue` of :func:`neumours.kernels.gemm.gemm`.
Operands are :class:`Operand` views: bf16 buffers (two values per 32-bit element), float32 buffers (rounded to
bf16 on load) or the Fourier features of a coordinate buffer; each stored with
either its k index contiguous (``K_CONTIGUOUS``) or its row index contiguous
(``ROWS_CONTIGUOUS``), so a layer's forward product, its input gradient and its
weight gradient all read the same buffers without transposed copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require
# The epilogue constants are re-exported: callers name them beside the operand constants.
from neumours.kernels.epilogue import ACCUMULATE, RELU_GRAD, STORE, Epilogue  # noqa: F401

FILE = "tensor_core_kernels.slang"
#: Operand sources.
BF16, F32, FOURIER = 0, 1, 2
#: Operand layouts: value(row, k) = x[offset + row * ld + k], or x[offset + k * ld + row].
K_CONTIGUOUS, ROWS_CONTIGUOUS = 0, 1
#: Block shapes: 128 x 128 (WIDE) or 256 x 16 (NARROW: outputs of at most 16 columns).
WIDE, NARROW = 0, 1
_BLOCK = {WIDE: (128, 128), NARROW: (256, 16)}
#: k per staged slice; split-K chunks are multiples of it.
SLICE_K = 32
THREADS = 256
NO_ONES = 0xFFFFFFFF
#: Order of the kernel's scalar table (``scalars`` in the kernel file); "zero" is always 0.
SCALARS = ("a_offset", "a_ld", "b_offset", "b_ld", "bias_offset", "mask_offset", "mask_ld", "c_offset", "c_ld",
           "ones_column", "bias_out_offset", "colsum_split", "colsum_offset", "colsum_offset_hi", "size_m", "size_n",
           "size_k", "k_chunk", "zero")


@dataclass(frozen=True)
class Operand:
    """One operand: ``buffer`` read as ``source`` values laid out as ``layout`` with row stride ``ld``.

    For ``FOURIER``, ``buffer`` holds (P, 3) float32 coordinates and the operand is
    gamma(p) of docs/method.md: its point is the row (``K_CONTIGUOUS``) or the k
    index (``ROWS_CONTIGUOUS``), its feature the other; ``ld`` and ``offset`` are unused.
    """

    buffer: spy.Buffer
    source: int
    layout: int
    ld: int = 0
    offset: int = 0


def _check_operand(op: Operand, rows: int, k: int, name: str) -> None:
    """Buffer large enough for rows x k, and aligned for the kernel's 16-byte chunk loads."""
    if op.source == FOURIER:
        require(op.buffer, 3 * (rows if op.layout == K_CONTIGUOUS else k), name)
        return
    values_per_chunk = 8 if op.source == BF16 else 4
    if op.offset % values_per_chunk or op.ld % values_per_chunk:
        raise ValueError(f"{name}: offset {op.offset} and ld {op.ld} must be multiples of {values_per_chunk}")
    major, minor = (rows, k) if op.layout == K_CONTIGUOUS else (k, rows)
    if minor > op.ld:
        raise ValueError(f"{name}: ld {op.ld} is shorter than its contiguous extent {minor}")
    end = op.offset + (major - 1) * op.ld + minor if major and minor else 0
    bytes_per_value = 2 if op.source == BF16 else 4
    if op.buffer.size < end * bytes_per_value:
        raise ValueError(f"{name}: buffer of {op.buffer.size} bytes, the product reads {end * bytes_per_value}")


def tensor_gemm(device: spy.Device, a: Operand, b: Operand, out: spy.Buffer, m: int, n: int, k: int,
                epilogue: Epilogue = Epilogue(), *, out_offset: int = 0, out_ld: int = 0, out_bf16: bool = False,
                splits: int = 1) -> None:
    """Dispatch ``C = A B^T`` (m x n, summing k) on the tensor cores with an epilogue.

    Args:
        a: A(m, k); b: B(n, k).
        out: C, row-major with row stride ``out_ld`` from ``out_offset``: bf16 pairs
            (``out_bf16``) or float32 (always float32 for ``ACCUMULATE``).
        epilogue: as :func:`neumours.kernels.gemm.gemm`'s (:class:`neumours.kernels.epilogue.Epilogue`);
            here the RELU_GRAD mask is bf16, biases and column sums float32, and
            ``bias_grad`` a float offset of ``out``.
        splits: split the k sum over this many groups (ACCUMULATE only).

    Raises:
        ValueError: a non-CUDA device, a misaligned or too small operand, or an
            option that does not go with the epilogue.
    """
    if device.info.type != spy.DeviceType.cuda:
        raise ValueError("the tensor-core product runs on CUDA devices only (use precision fp32)")
    epilogue.check(splits)
    bias, mask, column_sums = epilogue.bias, epilogue.mask, epilogue.column_sums
    out_bf16 = bool(out_bf16) and epilogue.op != ACCUMULATE
    if out_bf16 and (out_offset % 2 or out_ld % 2):
        raise ValueError("a bf16 output needs an even offset and row stride")
    _check_operand(a, m, k, "A")
    _check_operand(b, n, k, "B")
    require(out, out_offset + (m - 1) * out_ld + n if m and n else 0, "C", element_bytes=2 if out_bf16 else 4)
    plan = launch_plan(a, b, m, n, k, epilogue, out_offset=out_offset, out_ld=out_ld, out_bf16=out_bf16,
                       splits=splits)
    params = {"a": a.buffer, "b": b.buffer, "c": out, "scalars": plan.scalars}
    if bias is not None:
        params["bias"] = bias.buffer
    if mask is not None:
        params["mask"] = mask.buffer
    if column_sums is not None:
        params["colsum"] = column_sums.buffer
    load_kernel(device, FILE, "tensor_gemm", plan.constants)((plan.groups[0] * THREADS, *plan.groups[1:]),
                                                             params=params)


@dataclass(frozen=True)
class LaunchPlan:
    """What one product's dispatch is made of, buffers aside.

    Attributes:
        constants: the kernel's compile-time constants (``TILES``, ``A_SOURCE``, ...).
        scalars: the kernel's scalar table, in the order of :data:`SCALARS`.
        groups: groups along (n blocks, m blocks, k splits): grid x varies fastest.
    """

    constants: dict[str, int]
    scalars: list[int]
    groups: tuple[int, int, int]


def launch_plan(a: Operand, b: Operand, m: int, n: int, k: int, epilogue: Epilogue, *, out_offset: int = 0,
                out_ld: int = 0, out_bf16: bool = False, splits: int = 1) -> LaunchPlan:
    """The constants, scalar table and groups of :func:`tensor_gemm`'s dispatch (its arguments, checked
    there; a host emulation of the kernel body runs the same plan: tests/test_cuda_emulation.py)."""
    bias, mask, bias_grad_offset, column_sums = epilogue.bias, epilogue.mask, epilogue.bias_grad, epilogue.column_sums
    out_bf16 = bool(out_bf16) and epilogue.op != ACCUMULATE
    size_n = n + (1 if bias_grad_offset is not None else 0)
    tiles = NARROW if size_n <= _BLOCK[NARROW][1] else WIDE
    block_m, block_n = _BLOCK[tiles]
    k_chunk = -(-k // max(int(splits), 1))
    k_chunk = max(SLICE_K, -(-k_chunk // SLICE_K) * SLICE_K)
    scalars = {name: 0 for name in SCALARS}
    scalars.update(a_offset=a.offset, a_ld=a.ld, b_offset=b.offset, b_ld=b.ld, c_offset=out_offset, c_ld=out_ld,
                   ones_column=NO_ONES if bias_grad_offset is None else n,
                   bias_out_offset=bias_grad_offset or 0, size_m=m, size_n=size_n, size_k=k, k_chunk=k_chunk)
    if bias is not None:
        scalars["bias_offset"] = bias.offset
    if mask is not None:
        scalars.update(mask_offset=mask.offset, mask_ld=mask.ld)
    if column_sums is not None:
        scalars.update(colsum_split=column_sums.split, colsum_offset=column_sums.offset,
                       colsum_offset_hi=column_sums.offset_hi)
    constants = {"TILES": tiles, "A_SOURCE": a.source, "A_LAYOUT": a.layout, "B_SOURCE": b.source,
                 "B_LAYOUT": b.layout, "EPILOGUE": epilogue.op, "RELU": bool(epilogue.relu),
                 "HAS_BIAS": bias is not None, "C_BF16": out_bf16, "HAS_COLSUM": column_sums is not None}
    # Groups along n vary fastest (grid x), so the groups that share a tile of A run together
    # and read it once from memory; grid y (at most 65,535) counts blocks of rows.
    m_blocks, n_blocks, k_groups = -(-m // block_m), -(-size_n // block_n), -(-k // k_chunk) if k else 1
    if m_blocks > 65535:
        raise ValueError(f"{m} rows need {m_blocks} row blocks, more than one dispatch holds (65,535)")
    return LaunchPlan(constants, [int(scalars[name]) for name in SCALARS], (n_blocks, m_blocks, k_groups))
