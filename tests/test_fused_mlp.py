"""The fused inference kernel: its weight packing (CPU device), its header, and the GPU checks at full size.

The kernel (slang/fused_mlp.cuh, run by slang/fused_mlp_kernels.slang) is CUDA only. Here:
the packing kernels against a numpy reference of the mma.sync B-fragment order, on the CPU
device with poisoned outputs; the header compiled by nvcc to sm_90 PTX with every value it
shares with Python asserted, and the generated prelude up to date; and, marked ``gpu``, the
kernel against the layer-by-layer bf16 products (the same arithmetic), against float64, and in
the volume cache. tests/test_fused_mlp_emulation.py runs the kernel itself on the CPU through
the host emulation of the CUDA primitives.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import torch

from neumours.device import download, empty_buffer, slang_dir, upload
from neumours.kernels import fused_mlp as fm
from neumours.kernels.bf16 import LAYER_WORDS
from neumours.model.config import INRConfig
from neumours.model.fused import FusedInference, fused_layers, fused_problem, packed_sizes
from neumours.model.inr import INR
from neumours.model.reference import fourier_features_np


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """torch's float32 -> bfloat16 rounding (nearest, ties to even), as uint16 bits."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16).numpy() \
        .view(np.uint16)


def bf16(x: np.ndarray) -> np.ndarray:
    """float64 values of x rounded to bf16."""
    return torch.from_numpy(np.asarray(x, np.float32)).to(torch.bfloat16).double().numpy()


def fragments_reference(weight: np.ndarray) -> np.ndarray:
    """The words of one (n, k) weight in B-fragment order: word ((kt * n8 + nt) * 32 + lane) * 2 + half
    holds W[8 nt + g][16 kt + 2t + 8 half] (low) and the next k (high), g = lane / 4, t = lane % 4."""
    n, k = weight.shape
    n8, k16 = -(-n // 8), -(-k // 16)
    bits = np.zeros((n8 * 8, k16 * 16), np.uint32)
    bits[:n, :k] = bf16_bits(weight)
    tiles = bits.reshape(n8, 8, k16, 16)                     # [nt, g, kt, column in the k16 tile]
    words = np.zeros((k16, n8, 8, 4, 2), np.uint32)           # [kt, nt, g, t, half]
    for t in range(4):
        for half in range(2):
            column = 2 * t + 8 * half
            words[:, :, :, t, half] = (tiles[:, :, :, column] | (tiles[:, :, :, column + 1] << 16)).transpose(2, 0, 1)
    return words.reshape(-1)


def network_reference(config: INRConfig, state: dict, coords: np.ndarray, patches: np.ndarray,
                      rounded: bool = True, product=None, gamma=None) -> np.ndarray:
    """Logits in float64; ``rounded``: as the bf16 kernels compute them (inputs, weights and every
    activation rounded to bf16, products exact, biases float32), else the exact network.
    ``product(x, W, b)`` and ``gamma()`` replace the layer's ``x W^T + b`` and the Fourier features
    (tests/test_fused_mlp_emulation.py models the kernel's float32 sums and argument reduction)."""
    keep = bf16 if rounded else (lambda x: np.asarray(x, np.float64))
    product = product or (lambda x, w, b: x @ w.T + np.asarray(b, np.float64))

    def layer(x, name, relu=True):
        w = state[f"{name}.weight"]
        y = product(x, keep(w.reshape(w.shape[0], -1)), state[f"{name}.bias"])
        return keep(np.maximum(y, 0.0)) if relu else y

    gamma = gamma() if gamma else keep(fourier_features_np(coords, config.num_freqs))
    h = np.concatenate([layer(gamma, "spatial"), layer(keep(patches), "modality")], axis=1)
    for index in range(config.hidden_layers):
        h = layer(h, f"mlp.{index}")
    return layer(h, "head", relu=False)


def _state(inr: INR) -> dict:
    return {name: value.numpy() for name, value in inr.state_dict().items()}


ODD = INRConfig(num_freqs=3, spatial_width=24, modality_width=8, hidden_width=32, hidden_layers=3, num_classes=5)


@pytest.mark.parametrize("config", [INRConfig.tiny(), ODD], ids=["tiny", "odd"])
def test_packing_matches_the_fragment_order(cpu_device, config):
    """Every layer's fragments and padded biases, as the numpy reference lays them out (outputs poisoned)."""
    inr = INR(config, cpu_device, seed=3)
    fused = FusedInference(inr)
    fused.weights = upload(cpu_device, np.full(fused.word_count, 0xDEADBEEF, np.uint32), np.uint32)
    fused.biases = upload(cpu_device, np.full(fused.bias_count, np.nan, np.float32))
    words, biases = fused.packed()
    words = download(words, (fused.word_count,), np.uint32)
    biases = download(biases, (fused.bias_count,))
    state = _state(inr)
    for layer in fused.layers:
        w = state[f"{layer.name}.weight"].reshape(layer.n, -1)
        np.testing.assert_array_equal(words[layer.words:layer.words + layer.word_count], fragments_reference(w),
                                      err_msg=layer.name)
        padded = np.zeros(8 * layer.n8, np.float32)
        padded[:layer.n] = state[f"{layer.name}.bias"]
        np.testing.assert_array_equal(biases[layer.bias:layer.bias + 8 * layer.n8], padded, err_msg=layer.name)
    assert (fused.word_count, fused.bias_count) == packed_sizes(fused.layers)


def test_packing_follows_pushed_weights(cpu_device):
    """A push of new master weights marks the copy stale (no dispatch then: a push may be recorded in a
    training block); the next use repacks it, once."""
    inr = INR(INRConfig.tiny(), cpu_device, seed=0)
    fused = FusedInference(inr)
    inr.bridge.add_push_hook(fused.refresh)
    before = download(fused.packed()[0], (fused.word_count,), np.uint32).copy()
    assert not fused.stale
    inr.load_state_dict(INR(INRConfig.tiny(), cpu_device, seed=1).state_dict())
    inr.bridge.push_params()
    assert fused.stale
    after = download(fused.packed()[0], (fused.word_count,), np.uint32)
    assert not fused.stale
    head = fused.layers[-1]
    expected = fragments_reference(_state(inr)["head.weight"])
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after[head.words:head.words + head.word_count], expected)


def test_which_networks_the_kernel_holds(cpu_device):
    assert fused_problem(INRConfig.paper()) is None and fused_problem(INRConfig.tiny()) is None
    wide = INRConfig(spatial_width=256, modality_width=256, hidden_width=512)
    assert "above 256" in fused_problem(wide)
    assert "multiples of 8" in fused_problem(INRConfig(spatial_width=124, modality_width=132))
    assert "hidden layers" in fused_problem(INRConfig(hidden_layers=9))
    assert "classes" in fused_problem(INRConfig(num_classes=17))
    with pytest.raises(ValueError, match="above 256"):
        FusedInference(INR(dataclasses.replace(wide, num_freqs=2), cpu_device))
    # The CPU device runs fp32: no fused kernel, and the kernel refuses a device other than CUDA.
    inr = INR(INRConfig.tiny(), cpu_device)
    assert inr.fused is None
    fused = FusedInference(inr)
    with pytest.raises(ValueError, match="CUDA devices only"):
        fused.forward(empty_buffer(cpu_device, 3), empty_buffer(cpu_device, 108), 1, empty_buffer(cpu_device, 4))


def test_layer_table_layout():
    """The kernel's table: the count, then each layer's word offsets, then its bias offsets, then 0."""
    layers = fused_layers(INRConfig.paper())
    table = fm.kernel_table([(layer.words, layer.bias) for layer in layers], 1234)
    assert len(table) == fm.TABLE and table[0] == 1234 and table[-1] == 0
    assert table[1:1 + len(layers)] == [layer.words for layer in layers]
    assert table[1 + fm.MAX_LAYERS:1 + fm.MAX_LAYERS + len(layers)] == [layer.bias for layer in layers]
    assert LAYER_WORDS == 8 and len(layers) == 6


# -- the header -------------------------------------------------------------------------------------------

_PROBE = r"""
#include "fused_mlp.cuh"
struct Table
{
    unsigned v[neumours_fused::T_SIZE];
    __device__ unsigned operator[](int i) const { return v[i]; }
};
extern "C" __global__ void __launch_bounds__(neumours_fused::THREADS)
probe(unsigned shape0, unsigned shape1, unsigned shape2, const float* coords, const float* patches,
      const unsigned* weights, const float* biases, float* logits, Table table)
{
    neumours_fused::run_packed(shape0, shape1, shape2, blockIdx.x * neumours_fused::THREADS + threadIdx.x, coords,
                               patches, weights, biases, logits, table);
}
// The paper's network with its sizes as literals, as the generated code passes them.
extern "C" __global__ void __launch_bounds__(neumours_fused::THREADS)
paper(const float* coords, const float* patches, const unsigned* weights, const float* biases, float* logits,
      Table table)
{
    neumours_fused::run_packed(387u | (108u << 16), 128u | (128u << 16), 256u | (3u << 16) | (4u << 24),
                               blockIdx.x * neumours_fused::THREADS + threadIdx.x, coords, patches, weights, biases,
                               logits, table);
}
"""


def contract_asserts() -> str:
    """``static_assert``s of every value the header shares with neumours.kernels.fused_mlp."""
    pairs = [("WARPS", fm.WARPS), ("ROWS", fm.ROWS), ("THREADS", fm.THREADS), ("POINTS", fm.POINTS),
             ("MAX_HIDDEN", fm.MAX_HIDDEN), ("MAX_HIDDEN_LAYERS", fm.MAX_HIDDEN_LAYERS),
             ("MAX_CLASSES", fm.MAX_CLASSES), ("WORDS_PER_TILE", fm.WORDS_PER_TILE), ("T_COUNT", 0),
             ("T_WEIGHTS", 1), ("T_BIASES", 1 + fm.MAX_LAYERS), ("T_ZERO", fm.TABLE - 1), ("T_SIZE", fm.TABLE)]
    return "".join(f'static_assert(neumours_fused::{name} == {value}, "{name} differs from Python");\n'
                   for name, value in pairs)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on this machine")
def test_header_compiles_to_tensor_core_code_without_spills(tmp_path):
    """nvcc (no GPU needed) compiles the header with the Python contract to sm_90 code; with the sizes as
    literals, every activation stays in registers (no local memory, no spills) and the paper's network
    is 560 mma.sync instructions (16 per k step of each head, 512 per hidden layer, 16 for the logits)."""
    source = tmp_path / "probe.cu"
    source.write_text(_PROBE + contract_asserts())
    ptx = tmp_path / "probe.ptx"
    result = subprocess.run(["nvcc", "-arch=sm_90", "-ptx", "-std=c++14", "-I", str(slang_dir()), str(source),
                             "-o", str(ptx)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    text = ptx.read_text()
    paper = text[text.index(".entry paper"):]
    assert paper.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 560
    assert "cvt.rn.bf16x2.f32" in paper
    if shutil.which("ptxas"):
        result = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(ptx), "-o", str(tmp_path / "probe.cubin")],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        info = result.stderr[result.stderr.index("Function properties for paper"):]
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in info, info[:400]


def test_contract_breaks_on_a_change(tmp_path, monkeypatch):
    """The asserts can fail: another warp count in Python no longer compiles."""
    compiler = "nvcc" if shutil.which("nvcc") else "g++" if shutil.which("g++") else None
    if compiler is None:
        pytest.skip("neither nvcc nor g++ on this machine")
    monkeypatch.setattr(fm, "WARPS", 8)
    source = tmp_path / "probe.cu"
    source.write_text('#include "fused_mlp.cuh"\n' + contract_asserts())
    command = (["nvcc", "-arch=sm_90", "-ptx", "-std=c++14", "-o", str(tmp_path / "p.ptx")] if compiler == "nvcc"
               else ["g++", "-std=c++17", "-fsyntax-only", "-x", "c++", "-DNEUMOURS_CUDA_EMULATION",
                     "-include", "cuda_emulation.h"])
    result = subprocess.run(command + ["-I", str(slang_dir()), str(source)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0 and "WARPS differs from Python" in result.stderr + result.stdout


def test_generated_prelude_is_the_header():
    """slang/fused_mlp_prelude.slang is what neumours.kernels.tensor_core_prelude makes of the headers today."""
    from neumours.kernels import tensor_core_prelude as tcp

    generated = (slang_dir() / tcp.FUSED.generated).read_text()
    assert generated == tcp.render(prelude=tcp.FUSED), (
        "slang/fused_mlp_prelude.slang is out of date: run python -m neumours.kernels.tensor_core_prelude")
    code = tcp.inlined_header(header=tcp.FUSED.header)
    assert '#include "' not in code and code.count("namespace neumours_tc {") == 1
    assert "namespace neumours_fused {" in code
    kernel = (slang_dir() / fm.FILE).read_text()
    assert '#include "fused_mlp_prelude.slang"' in kernel


# -- GPU: the kernel at full size -------------------------------------------------------------------------

def _inputs(rng, config: INRConfig, n: int):
    coords = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    patches = rng.normal(size=(n, config.patch_dim)).astype(np.float32)
    return coords, patches


def _fused_logits(inr: INR, coords: np.ndarray, patches: np.ndarray) -> np.ndarray:
    device, n, c = inr.device, len(coords), inr.config.num_classes
    logits = upload(device, np.full(n * c, np.nan, np.float32))   # poisoned
    inr.fused.forward(upload(device, coords), upload(device, patches), n, logits)
    return download(logits, (n, c))


def _layer_logits(inr: INR, coords: np.ndarray, patches: np.ndarray) -> np.ndarray:
    device, n, c = inr.device, len(coords), inr.config.num_classes
    logits = upload(device, np.full(n * c, np.nan, np.float32))
    inr.forward_device(upload(device, coords), upload(device, patches), n, logits)
    return download(logits, (n, c))


@pytest.mark.gpu
@pytest.mark.parametrize("config, n", [(INRConfig(precision="bf16"), 100_003),
                                       (dataclasses.replace(INRConfig.tiny(), precision="bf16"), 1_001),
                                       (dataclasses.replace(ODD, precision="bf16"), 4_097)],
                         ids=["paper", "tiny", "odd"])
def test_gpu_fused_matches_the_layer_products_and_float64(cuda_device, rng, config, n):
    """Fresh random weights and points (a count that is not a multiple of the group's 64): the fused
    logits equal the layer-by-layer bf16 products' (the same bf16 roundings, fp32 accumulation in the
    same k order) to fp32 level, match the float64 model of that bf16 arithmetic, and stay within
    bf16's error of the float64 network (outputs poisoned first)."""
    inr = INR(config, cuda_device, seed=int(rng.integers(1 << 30)))
    assert inr.fused is not None
    coords, patches = _inputs(rng, config, n)
    inr.bridge.push_params()
    fused, layers = _fused_logits(inr, coords, patches), _layer_logits(inr, coords, patches)
    assert np.isfinite(fused).all()
    scale = np.abs(layers).max()
    print(f"fused vs layer products: max |diff| {np.abs(fused - layers).max() / scale:.2e} of the largest logit, "
          f"{np.mean(fused == layers):.4%} bit-equal")
    np.testing.assert_allclose(fused, layers, rtol=0, atol=1e-3 * scale)
    state = _state(inr)
    modelled = network_reference(config, state, coords, patches)
    assert np.linalg.norm(fused - modelled) <= 2e-3 * np.linalg.norm(modelled)
    exact = network_reference(config, state, coords, patches, rounded=False)
    assert np.linalg.norm(fused - exact) <= 1e-2 * np.linalg.norm(exact)


@pytest.mark.gpu
def test_gpu_cache_runs_the_fused_kernel_with_the_same_labels(cuda_device, rng):
    """The volume cache of a bf16 INR runs the fused kernel; its labels agree with the layer products'
    on all but a handful of near-tie voxels."""
    from neumours.infer.cache import VolumeCache
    from neumours.model.inputs import CaseVolumes

    inr = INR(INRConfig(precision="bf16"), cuda_device, seed=5)
    volume = rng.normal(size=(4, 48, 40, 32)).astype(np.float32)
    volumes = CaseVolumes.upload(cuda_device, [volume])
    fused = VolumeCache(inr, volumes).labels()
    kept, inr.fused = inr.fused, None
    try:
        layers = VolumeCache(inr, volumes).labels()
    finally:
        inr.fused = kept
    agreement = float(np.mean(fused == layers))
    print(f"labels: fused vs layer products agree on {agreement:.5%} of voxels")
    assert agreement >= 0.9999
