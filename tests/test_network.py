"""The network description (neumours.model.network), its backends, the shared epilogue and split heuristic.

Numbers are checked elsewhere (tests/test_inr.py: fp32 against torch; the GPU tests of
tests/test_tensor_core.py: bf16). Here: that the schedules follow the chain rule over the
one description, and that both backends dispatch exactly its products (the bf16 backend's
dispatches are recorded on the CPU device, where its weight copy is made but its product
cannot run).
"""

from __future__ import annotations

import dataclasses

import pytest
import slangpy as spy

from neumours.device import DeviceFacts, device_facts, empty_buffer
from neumours.kernels.epilogue import ACCUMULATE, RELU_GRAD, STORE, Bias, ColumnSums, Epilogue, Mask
from neumours.model import fma, tensor_core
from neumours.model.backend import split_k
from neumours.model.config import INRConfig
from neumours.model.inr import INR
from neumours.model.network import ACTIVATION, FLOAT, GRADIENT, Dense, Network, View, backward_products, dense_layers

CONFIGS = [INRConfig.tiny(), INRConfig.paper(),
           INRConfig(num_freqs=2, spatial_width=8, modality_width=24, hidden_width=32, hidden_layers=1)]


@pytest.mark.parametrize("config", CONFIGS, ids=["tiny", "paper", "one-hidden"])
def test_backward_takes_every_gradient_once_from_fresh_deltas(config):
    net = Network(config)
    params = set(config.param_shapes())
    for input_grads in (False, True):
        taken, holds, grad_of = [], {}, {"logits": "grad_logits"}
        for p in net.backward(input_grads):
            layer = next(d for d in net.layers if d.name == p.layer)
            # Every backward product reads the gradient of its layer's output, not yet overwritten.
            assert p.a.tensor == grad_of[layer.output.tensor] and p.a.column == layer.output.column
            assert holds.get(p.a.tensor, "logits") == layer.output.tensor
            assert p.out.tensor not in (p.a.tensor, p.b.tensor)   # no product writes what it reads
            if p.pass_ == "weights":
                taken.append(p.out.tensor)
                assert p.out.kind == GRADIENT and p.op == ACCUMULATE and p.shape(7) == (layer.n, layer.k, 7)
            if p.bias_grad:
                taken.append(p.bias_grad)
            taken.extend(p.column_sums)
            if p.op == RELU_GRAD:
                assert p.mask == layer.input and p.out.kind == ACTIVATION
                grad_of[layer.input.tensor] = p.out.tensor
                holds[p.out.tensor] = layer.input.tensor
        assert sorted(taken) == sorted(params)
        inputs = {p.out.tensor for p in net.backward(input_grads) if p.pass_ == "inputs" and p.op == STORE}
        assert inputs == ({"grad_gamma", "grad_patches"} if input_grads else set())


def test_forward_is_one_product_per_layer():
    config = INRConfig.tiny()
    net = Network(config)
    assert [p.layer for p in net.forward] == [d.name for d in dense_layers(config)]
    assert [p.shape(5) for p in net.forward] == [(5, d.n, d.k) for d in net.layers]
    h0 = [p.out for p in net.forward if p.out.tensor == "hidden.0"]
    assert [v.column for v in h0] == [0, config.spatial_width]   # the two heads side by side
    assert [p.relu for p in net.forward] == [True] * (len(net.layers) - 1) + [False]


def test_descriptions_the_products_cannot_express_are_refused():
    layers = dense_layers(INRConfig.tiny())
    shared = dataclasses.replace(layers[3], input=layers[2].input)         # hidden.1 read twice
    with pytest.raises(ValueError, match="read by two layers"):
        backward_products(layers[:3] + (shared,) + layers[4:])
    linear = dataclasses.replace(layers[2], relu=False)                    # hidden.1 without its ReLU
    with pytest.raises(ValueError, match="without a ReLU"):
        backward_products(layers[:2] + (linear,) + layers[3:])
    part = dataclasses.replace(layers[2], input=View(ACTIVATION, "hidden.0", 16, 8), k=8)
    with pytest.raises(ValueError, match="reads part of it"):
        backward_products(layers[:2] + (part,) + layers[3:])
    heads = (dataclasses.replace(layers[0], n=4),
             dataclasses.replace(layers[1], output=View(ACTIVATION, "hidden.0", 16, 4), n=4),
             Dense("extra", View(FLOAT, "extra", 5), View(ACTIVATION, "hidden.0", 16, 8), 8, 5, True))
    with pytest.raises(ValueError, match="one or two writers"):
        backward_products(heads + layers[2:])


def _record(monkeypatch, module, name):
    calls = []

    def record(device, a, b, out, m, n, k, epilogue=Epilogue(), **options):
        calls.append((a, b, out, (m, n, k), epilogue, options))

    monkeypatch.setattr(module, name, record)
    return calls


def test_fp32_and_bf16_backends_dispatch_the_same_products(cpu_device, monkeypatch):
    config, count = dataclasses.replace(INRConfig.tiny(), precision="fp32"), 40
    inr = INR(config, cpu_device)
    bf16 = tensor_core.TensorCoreBackend(inr)     # its weight copy packs on any device
    fp32_calls = _record(monkeypatch, fma, "gemm")
    bf16_calls = _record(monkeypatch, tensor_core, "tensor_gemm")
    ws = inr.new_workspace(count)
    buffers = {name: empty_buffer(cpu_device, count * width) for name, width in
               (("gamma", 3), ("patches", config.patch_dim), ("logits", 4), ("grad_logits", 4))}
    tensors = inr.tensors(ws, **buffers)
    for backend in (inr.backend, bf16):
        backend.forward(tensors, count)
        backend.backward(tensors, count)
    products = inr.network.forward + inr.network.backward()
    assert len(fp32_calls) == len(bf16_calls) == len(products)
    for product, (a32, b32, out32, shape32, epi32, opt32), (a16, b16, out16, shape16, epi16, opt16) in zip(
            products, fp32_calls, bf16_calls):
        assert shape32 == shape16 == product.shape(count)
        assert epi32 == epi16 and epi32.op == product.op
        assert opt32["splits"] == opt16["splits"] == 1     # the CPU runs groups in turn
        # Same output, at the same place; same operands except the weights (bf16: the packed copy).
        assert (out32.buffer, out32.offset, out32.stride_row) == (out16, opt16["out_offset"], opt16["out_ld"])
        for view, x32, x16 in ((product.a, a32, a16), (product.b, b32, b16)):
            if view.kind == "weight":
                assert x16.buffer is bf16.weights
            elif view.kind == "fourier":
                assert x32.coords is x16.buffer is tensors[view.tensor]
            else:
                assert x32.buffer is x16.buffer is tensors[view.tensor]
                assert x32.offset == x16.offset == view.column


def test_split_heuristic_one_wave_bounded_by_points():
    gpu = DeviceFacts(multiprocessors=132)
    assert split_k(DeviceFacts(1, concurrent=False), 1, 256, 256, 10**6, 32) == 1
    assert split_k(gpu, 4, 256, 256, 10**6, 32) == 33              # 132 groups over 4 blocks
    assert split_k(gpu, 4, 256, 256, 64 * 10, 32) == 20            # each split sums at least 32 points
    assert split_k(gpu, 1000, 256, 256, 10**6, 32) == 1
    assert split_k(DeviceFacts(multiprocessors=66), 4, 256, 256, 10**6, 32) == 17   # fewer SMs, fewer splits
    assert split_k(gpu, 6, 256, 512, 10**6, 256) == 44             # two groups per SM: 264 groups


def test_device_facts(cpu_device):
    """slangpy's CPU device runs groups in turn; a GPU kind (NEUMOURS_DEVICE) runs them concurrently."""
    facts = device_facts(cpu_device)
    if cpu_device.info.type == spy.DeviceType.cpu:
        assert facts == DeviceFacts(multiprocessors=1, concurrent=False)
    else:
        assert facts.concurrent and facts.multiprocessors >= 1


@pytest.mark.gpu
def test_gpu_device_facts_from_the_device(cuda_device):
    import torch

    expected = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    assert device_facts(cuda_device) == DeviceFacts(multiprocessors=expected, concurrent=True)


def test_one_epilogue_check_for_both_products(cpu_device):
    buf = empty_buffer(cpu_device, 64)
    bad = [
        (Epilogue(RELU_GRAD), 1, "takes a mask"),
        (Epilogue(STORE, mask=Mask(buf, 8)), 1, "takes a mask"),
        (Epilogue(ACCUMULATE, bias=Bias(buf)), 1, "STORE"),
        (Epilogue(RELU_GRAD, mask=Mask(buf, 8), relu=True), 1, "STORE"),
        (Epilogue(STORE, column_sums=ColumnSums(buf, 4, 0, 0)), 1, "RELU_GRAD"),
        (Epilogue(STORE, bias_grad=0), 1, "ACCUMULATE"),
        (Epilogue(STORE), 2, "split-K"),
        (Epilogue(7), 1, "unknown epilogue"),
    ]
    for epilogue, splits, message in bad:
        with pytest.raises(ValueError, match=message):
            epilogue.check(splits)
    Epilogue(ACCUMULATE, bias_grad=3).check(4)
    Epilogue(RELU_GRAD, mask=Mask(buf, 8), column_sums=ColumnSums(buf, 4, 0, 8)).check()
    # Both wrappers check before anything else (the tensor-core one refuses the CPU device first).
    from neumours.kernels.gemm import Strided, gemm

    with pytest.raises(ValueError, match="takes a mask"):
        gemm(cpu_device, Strided(buf, 8, 1), Strided(buf, 8, 1), Strided(buf, 8, 1), 4, 4, 4, Epilogue(RELU_GRAD))
