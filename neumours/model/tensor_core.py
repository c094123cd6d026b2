"""The INR's bf16 tensor-core path (CUDA only): the one module of ours that owns it.

The fp32 master weights stay in the bridge's flat buffer, where the torch
optimisers step them; :class:`TensorCorePath` keeps a bf16 copy of every weight
matrix (rows padded to 8 values) in one device buffer, refreshed by one
``pack_bf16`` dispatch whenever the bridge pushes new weights. Every dense layer
is one :func:`neumours.kernels.tensor_gemm.tensor_gemm`: bf16 operands, fp32
accumulation, the bias/ReLU, ReLU-mask and column-sum epilogues, the Fourier
features made on load. Activations (H) and their gradients (delta) are stored in
bf16, as torch's autocast keeps them; logits, gradients of the logits and weight
gradients stay float32. Biases are read as float32 from the master buffer.

Forward:  H0[:, :S] = relu(gamma(x) Ws^T + bs), H0[:, S:] = relu(P Wm^T + bm),
          H{l+1} = relu(Hl Wl^T + bl), logits = HL Wh^T + bh.
Backward: dWh, dbh += dz^T [HL, 1];  delta = (dz Wh) * [HL > 0] (its column sums: db of
          the layer below); per hidden layer dWl += delta^T Hl, delta = (delta Wl) * [Hl > 0];
          dWs += delta[:, :S]^T gamma(x), dWm += delta[:, S:]^T P.
"""

from __future__ import annotations

import math

import numpy as np
import slangpy as spy

from neumours.device import empty_buffer
from neumours.kernels.bf16 import pack_bf16, pack_table, padded
from neumours.kernels.tensor_gemm import (ACCUMULATE, BF16, F32, FOURIER, K_CONTIGUOUS, RELU_GRAD, ROWS_CONTIGUOUS,
                                          Operand, tensor_gemm)

#: About this many groups fill an H100/H200 (132 multiprocessors, two 256-thread groups each).
_TARGET_GROUPS = 264
#: Fewest points a split-K group sums (fewer: more atomic adds than products).
_MIN_POINTS_PER_SPLIT = 256


class TensorCorePath:
    """The bf16 weight copy of one INR and its layer products.

    Args:
        inr: the :class:`neumours.model.inr.INR` (its device must be CUDA).
    """

    def __init__(self, inr):
        if inr.device.info.type != spy.DeviceType.cuda:
            raise ValueError("precision bf16 needs a CUDA device (the tensor cores); use fp32 elsewhere")
        self.inr = inr
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
        self.refresh()

    def refresh(self) -> None:
        """Copy the master weights into the bf16 buffer (after every change of the weights)."""
        pack_bf16(self.inr.device, self.inr.bridge.params_buffer, self.table, len(self.weight_names), self.weights,
                  self.pairs)

    # ---------------------------------------------------------------- operands
    def _weight(self, name: str, layout: int = K_CONTIGUOUS) -> Operand:
        """W (out, in) as B(n = out, k = in) (K_CONTIGUOUS) or B(n = in, k = out) (ROWS_CONTIGUOUS)."""
        return Operand(self.weights, BF16, layout, ld=self.row_lengths[name], offset=self.offsets[name])

    def _bias(self, name: str) -> tuple[spy.Buffer, int]:
        return self.inr.bridge.params_buffer, self.inr.layout.offset(name)

    def _splits(self, m: int, n: int, count: int) -> int:
        blocks = -(-m // 128) * -(-(n + 1) // 128)
        return int(max(1, min(-(-_TARGET_GROUPS // blocks), count // _MIN_POINTS_PER_SPLIT)))

    # ---------------------------------------------------------------- passes
    def forward(self, coords: spy.Buffer, patches: spy.Buffer, count: int, logits: spy.Buffer, ws) -> None:
        """Logits (count, C) float32; the bf16 activations H_l stay in ``ws.hidden``."""
        cfg, dev = self.inr.config, self.inr.device
        hid, S, C = cfg.hidden_width, cfg.spatial_width, cfg.num_classes
        h0 = ws.hidden[0]
        tensor_gemm(dev, Operand(coords, FOURIER, K_CONTIGUOUS), self._weight("spatial.weight"), h0, count, S,
                    cfg.fourier_dim, out_ld=hid, out_bf16=True, bias=self._bias("spatial.bias"), relu=True)
        tensor_gemm(dev, Operand(patches, F32, K_CONTIGUOUS, ld=cfg.patch_dim), self._weight("modality.weight"), h0,
                    count, cfg.modality_width, cfg.patch_dim, out_offset=S, out_ld=hid, out_bf16=True,
                    bias=self._bias("modality.bias"), relu=True)
        for layer in range(cfg.hidden_layers):
            tensor_gemm(dev, Operand(ws.hidden[layer], BF16, K_CONTIGUOUS, ld=hid),
                        self._weight(f"mlp.{layer}.weight"), ws.hidden[layer + 1], count, hid, hid, out_ld=hid,
                        out_bf16=True, bias=self._bias(f"mlp.{layer}.bias"), relu=True)
        tensor_gemm(dev, Operand(ws.hidden[-1], BF16, K_CONTIGUOUS, ld=hid), self._weight("head.weight"), logits,
                    count, C, hid, out_ld=C, bias=self._bias("head.bias"))

    def _accumulate(self, name: str, delta: Operand, inputs: Operand, m: int, n: int, count: int,
                    with_bias: bool = False) -> None:
        """dW += delta^T inputs (and db += sum delta) into the gradient buffer."""
        layout = self.inr.layout
        tensor_gemm(self.inr.device, delta, inputs, self.inr.bridge.grads_buffer, m, n, count,
                    out_offset=layout.offset(name + ".weight"), out_ld=n, epilogue=ACCUMULATE,
                    bias_grad_offset=layout.offset(name + ".bias") if with_bias else None,
                    splits=self._splits(m, n, count))

    def backward(self, coords: spy.Buffer, patches: spy.Buffer, count: int, grad_logits: spy.Buffer, ws,
                 bias_sums) -> None:
        """Add dL/dparams into the gradient buffer, given dL/dlogits (count, C) float32.

        ``bias_sums(names, split)`` gives the column-sum target of a ReLU-gradient
        product (the INR's own helper, shared with the fp32 path).
        """
        cfg, dev = self.inr.config, self.inr.device
        hid, S, C, L = cfg.hidden_width, cfg.spatial_width, cfg.num_classes, cfg.hidden_layers
        below_names = [(f"mlp.{layer - 1}",) if layer > 0 else ("spatial", "modality") for layer in range(L + 1)]
        self._accumulate("head", Operand(grad_logits, F32, ROWS_CONTIGUOUS, ld=C),
                         Operand(ws.hidden[-1], BF16, ROWS_CONTIGUOUS, ld=hid), C, hid, count, with_bias=True)
        delta = ws.delta[0]
        tensor_gemm(dev, Operand(grad_logits, F32, K_CONTIGUOUS, ld=C), self._weight("head.weight", ROWS_CONTIGUOUS),
                    delta, count, hid, C, out_ld=hid, out_bf16=True, epilogue=RELU_GRAD,
                    mask=(ws.hidden[-1], 0, hid), column_sums=bias_sums(below_names[L], S if L == 0 else hid))
        for layer in reversed(range(L)):
            self._accumulate(f"mlp.{layer}", Operand(delta, BF16, ROWS_CONTIGUOUS, ld=hid),
                             Operand(ws.hidden[layer], BF16, ROWS_CONTIGUOUS, ld=hid), hid, hid, count)
            below = ws.delta[1] if delta is ws.delta[0] else ws.delta[0]
            tensor_gemm(dev, Operand(delta, BF16, K_CONTIGUOUS, ld=hid),
                        self._weight(f"mlp.{layer}.weight", ROWS_CONTIGUOUS), below, count, hid, hid, out_ld=hid,
                        out_bf16=True, epilogue=RELU_GRAD, mask=(ws.hidden[layer], 0, hid),
                        column_sums=bias_sums(below_names[layer], S if layer == 0 else hid))
            delta = below
        self._accumulate("spatial", Operand(delta, BF16, ROWS_CONTIGUOUS, ld=hid),
                         Operand(coords, FOURIER, ROWS_CONTIGUOUS), S, cfg.fourier_dim, count)
        self._accumulate("modality", Operand(delta, BF16, ROWS_CONTIGUOUS, ld=hid, offset=S),
                         Operand(patches, F32, ROWS_CONTIGUOUS, ld=cfg.patch_dim), cfg.modality_width,
                         cfg.patch_dim, count)
