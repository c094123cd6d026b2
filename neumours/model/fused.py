"""The INR's inference as one fused kernel (bf16 tensor cores, CUDA): :class:`FusedInference`.

Inference needs only the logits, so the whole forward can run in one launch whose activations
never leave the registers (``slang/fused_mlp.cuh`` says how); the layer-by-layer products of
:mod:`neumours.model.tensor_core` remain for training, which stores every activation for its
backward, and as the reference the fused kernel is tested against. :class:`FusedInference`
keeps the kernel's copy of the weights (bf16 in mma.sync fragment order, and the biases padded
to whole 8-column tiles) in two device buffers, repacked on the device when the master weights
have changed since the last pack, at the next inference (training pushes new weights every
step and needs no inference copy until it validates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.device import empty_buffer, upload
from neumours.kernels.bf16 import pack_fragments, pack_padded_biases
from neumours.kernels.fused_mlp import WORDS_PER_TILE, FusedShape, fused_forward
from neumours.model.config import INRConfig
from neumours.model.network import dense_layers


@dataclass(frozen=True)
class FusedLayer:
    """One dense layer of the network as the fused kernel reads it.

    Attributes:
        name: the parameters' prefix (``spatial``, ``modality``, ``mlp.l``, ``head``).
        n, k: the weight's outputs and inputs. words: its first fragment word in the packed buffer.
        bias: its first value in the padded bias buffer.
    """

    name: str
    n: int
    k: int
    words: int
    bias: int

    @property
    def n8(self) -> int:
        """8-column output tiles."""
        return -(-self.n // 8)

    @property
    def k16(self) -> int:
        """16-deep input tiles."""
        return -(-self.k // 16)

    @property
    def word_count(self) -> int:
        """Fragment words of the whole weight: one B fragment per (k16, n8) tile."""
        return self.n8 * self.k16 * WORDS_PER_TILE


def fused_shape(config: INRConfig) -> FusedShape:
    """The sizes the fused kernel is compiled for."""
    return FusedShape(config.fourier_dim, config.patch_dim, config.spatial_width, config.modality_width,
                      config.hidden_width, config.hidden_layers, config.num_classes)


def fused_problem(config: INRConfig) -> str | None:
    """Why the fused kernel cannot run ``config``'s network, or None (the layer-by-layer products run any)."""
    return fused_shape(config).problem()


def fused_layers(config: INRConfig) -> tuple[FusedLayer, ...]:
    """The network's dense layers (:func:`neumours.model.network.dense_layers`: spatial, modality,
    hidden, head) with their offsets in the packed buffers."""
    layers, words, bias = [], 0, 0
    for dense in dense_layers(config):
        layer = FusedLayer(dense.name, dense.n, dense.k, words, bias)
        layers.append(layer)
        words += layer.word_count
        bias += 8 * layer.n8
    return tuple(layers)


def packed_sizes(layers: tuple[FusedLayer, ...]) -> tuple[int, int]:
    """(fragment words, padded bias values) of the packed buffers."""
    last = layers[-1]
    return last.words + last.word_count, last.bias + 8 * last.n8


def layer_entries(layers: tuple[FusedLayer, ...], offset) -> np.ndarray:
    """The packing kernels' table (layers, 8) uint32; ``offset(name)``: a tensor's flat parameter offset."""
    return np.array([(offset(f"{layer.name}.weight"), layer.n, layer.k, layer.words, layer.n8, layer.k16,
                      offset(f"{layer.name}.bias"), layer.bias) for layer in layers], np.uint32)


class FusedInference:
    """One INR's weights as the fused kernel reads them, and its forward.

    Args:
        inr: the :class:`neumours.model.inr.INR`. The copy is made on any device (the packing
            kernels run everywhere and are tested on the CPU); :meth:`forward` runs on CUDA only.

    Raises:
        ValueError: a network the kernel cannot hold (:func:`fused_problem`).
    """

    def __init__(self, inr):
        problem = fused_problem(inr.config)
        if problem:
            raise ValueError(f"the fused inference kernel cannot run this network: {problem}")
        self.inr = inr
        self.shape = fused_shape(inr.config)
        self.layers = fused_layers(inr.config)
        self.offsets = [(layer.words, layer.bias) for layer in self.layers]
        self.word_count, self.bias_count = packed_sizes(self.layers)
        self._table = upload(inr.device, layer_entries(self.layers, inr.layout.offset), np.uint32)
        self.weights = empty_buffer(inr.device, self.word_count, np.uint32)
        self.biases = empty_buffer(inr.device, self.bias_count)
        self.stale = True

    def refresh(self) -> None:
        """The master weights changed (the bridge's push hook): repack before the next inference."""
        self.stale = True

    def packed(self) -> tuple[spy.Buffer, spy.Buffer]:
        """(fragment words, padded biases) of the current master weights, repacked first if they changed."""
        if self.stale:
            device, source, count = self.inr.device, self.inr.bridge.params_buffer, len(self.layers)
            pack_fragments(device, source, self._table, count, self.weights, self.word_count)
            pack_padded_biases(device, source, self._table, count, self.biases, self.bias_count)
            self.stale = False
        return self.weights, self.biases

    def forward(self, coords: spy.Buffer, patches: spy.Buffer, count: int, logits: spy.Buffer) -> None:
        """logits (count, num_classes) float32 of coords (count, 3) and patches (count, patch_dim), on the device."""
        weights, biases = self.packed()
        fused_forward(self.inr.device, self.shape, self.offsets, coords, patches, weights, biases, logits, count)
