"""What a matrix product does with its sums: the epilogue both GEMM wrappers take.

``C = A B^T`` is finished by one of three epilogues (the ``EPILOGUE`` constant of
``gemm_kernels.slang`` and ``tensor_core_kernels.slang`` alike):

- ``STORE``: C = acc (+ bias), ReLU optional (a forward layer, an input gradient);
- ``RELU_GRAD``: C = acc where the mask H > 0, else 0 (dL/d pre-activation of the
  layer below), optionally adding the column sums of C into that layer's bias gradient;
- ``ACCUMULATE``: C += acc (a weight gradient), optionally with the bias gradient
  sum_k A(m, k) riding along as a virtual column of ones in B, and the k sum split
  over groups.

:func:`neumours.kernels.gemm.gemm` (fp32) and
:func:`neumours.kernels.tensor_gemm.tensor_gemm` (bf16 tensor cores) take the
same :class:`Epilogue` and check it with the same :meth:`Epilogue.check`.
"""

from __future__ import annotations

from dataclasses import dataclass

import slangpy as spy

STORE, RELU_GRAD, ACCUMULATE = 0, 1, 2


@dataclass(frozen=True)
class Bias:
    """n float32 biases at ``buffer[offset:]``."""

    buffer: spy.Buffer
    offset: int = 0


@dataclass(frozen=True)
class Mask:
    """H(m, n) at ``buffer[offset + row * ld + col]``, stored as the product's output is (float32 or bf16)."""

    buffer: spy.Buffer
    ld: int
    offset: int = 0


@dataclass(frozen=True)
class ColumnSums:
    """Float32 targets of C's column sums: column j adds at ``offset + j`` (j < split), else ``offset_hi + j - split``.

    Two offsets because the layer below may be two layers side by side (the INR's
    spatial and modality heads), each with its own bias gradient.
    """

    buffer: spy.Buffer
    split: int
    offset: int
    offset_hi: int


@dataclass(frozen=True)
class Epilogue:
    """One product's epilogue.

    Attributes:
        op: ``STORE``, ``RELU_GRAD`` or ``ACCUMULATE``.
        bias: STORE only: added to every row.
        relu: STORE only: max(0, .) after the bias.
        mask: RELU_GRAD only (and required there).
        column_sums: RELU_GRAD only.
        bias_grad: ACCUMULATE only: float offset in the output buffer where sum_k A(m, k) is added.
    """

    op: int = STORE
    bias: Bias | None = None
    relu: bool = False
    mask: Mask | None = None
    column_sums: ColumnSums | None = None
    bias_grad: int | None = None

    def check(self, splits: int = 1) -> None:
        """Raise ValueError for an option that does not go with ``op`` (or ``splits`` > 1 without ACCUMULATE)."""
        if self.op not in (STORE, RELU_GRAD, ACCUMULATE):
            raise ValueError(f"unknown epilogue {self.op}")
        if splits < 1 or (splits > 1 and self.op != ACCUMULATE):
            raise ValueError(f"split-K ({splits} splits) needs the ACCUMULATE epilogue and at least one split")
        if (self.bias is not None or self.relu) and self.op != STORE:
            raise ValueError("bias and ReLU go with the STORE epilogue")
        if (self.mask is None) != (self.op != RELU_GRAD):
            raise ValueError("the RELU_GRAD epilogue, and only it, takes a mask")
        if self.column_sums is not None and self.op != RELU_GRAD:
            raise ValueError("column_sums needs the RELU_GRAD epilogue")
        if self.bias_grad is not None and self.op != ACCUMULATE:
            raise ValueError("bias_grad needs the ACCUMULATE epilogue")
