"""The fused inference kernel (slang/fused_mlp.cuh) run on the CPU through slang/cuda_emulation.h.

No GPU here, so the kernel body itself runs on the host emulation of the CUDA primitives (one
std::thread per CUDA thread; mma.sync m16n8k16 bf16, cvt.rn.bf16x2, shuffles), which
tests/test_cuda_emulation.py proves faithful on the GPU-verified layer-by-layer product. The
weights and biases are packed by the real Slang packing kernels on the CPU device; the logits
(poisoned first) are compared with a float64 model of the bf16 arithmetic (inputs, weights and
every activation rounded to bf16) for the tiny, an odd-sized and the paper's network, on counts
that leave warps and groups partly filled. A deliberate fault of the emulator must fail the check.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from test_cuda_emulation import _fourier_bf16, build_probe
from test_fused_mlp import ODD, _state, network_reference

from neumours.device import download
from neumours.kernels import fused_mlp as fm
from neumours.model.config import INRConfig
from neumours.model.fused import FusedInference
from neumours.model.inr import INR

PROBE = Path(__file__).parent / "cuda_emulation" / "fused_probe.cpp"
FAULT_MMA_A_SWAP = 1   # neumours_emu::Fault
_PTR = ctypes.c_void_p


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The probe compiled once into a shared library (ctypes)."""
    lib, _ = build_probe(tmp_path_factory, PROBE)
    lib.emulated_fused_mlp.argtypes = [ctypes.c_uint] * 4 + [_PTR] * 6
    lib.emulated_fused_mlp.restype = None
    lib.emulated_fault.argtypes = [ctypes.c_int]
    return lib


def _layer_fp32(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float32 ``x W^T + b`` as the kernel sums it: per 16-deep k tile an exact (float64) partial sum added
    to the float32 accumulator with one rounding (as mma.sync does, up to its internal order), then the
    float32 bias. x and W hold bf16 values (float64)."""
    acc = np.zeros((len(x), len(weight)), np.float32)
    for k0 in range(0, x.shape[1], 16):
        acc = (acc.astype(np.float64) + x[:, k0:k0 + 16] @ weight[:, k0:k0 + 16].T).astype(np.float32)
    return acc + np.asarray(bias, np.float32)


def modelled_logits(config: INRConfig, state: dict, coords: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """The bf16 arithmetic in numpy (:func:`test_fused_mlp.network_reference`), with gamma as
    slang/fourier.h reduces it and float32 accumulation per k16 tile."""
    return network_reference(config, state, coords, patches, product=_layer_fp32,
                             gamma=lambda: _fourier_bf16(coords, config.fourier_dim))


def emulate(lib, cpu_device, config: INRConfig, count: int, seed: int):
    """(emulated logits, modelled logits) of a fresh random INR on ``count`` fresh random points."""
    rng = np.random.default_rng(seed)
    inr = INR(config, cpu_device, seed=seed)
    fused = FusedInference(inr)
    packed_words, packed_biases = fused.packed()
    words = np.ascontiguousarray(download(packed_words, (fused.word_count,), np.uint32))
    biases = np.ascontiguousarray(download(packed_biases, (fused.bias_count,)))
    coords = rng.uniform(-1, 1, (count, 3)).astype(np.float32)
    patches = rng.normal(size=(count, config.patch_dim)).astype(np.float32)
    logits = np.full((count, config.num_classes), np.nan, np.float32)   # poisoned
    table = np.array(fm.kernel_table(fused.offsets, count), np.uint32)
    groups = -(-count // fm.POINTS)
    lib.emulated_fused_mlp(*fused.shape.packed(), groups, coords.ctypes.data, patches.ctypes.data,
                           words.ctypes.data, biases.ctypes.data, logits.ctypes.data, table.ctypes.data)
    return logits, modelled_logits(config, _state(inr), coords, patches)


@pytest.mark.parametrize("config, count", [(INRConfig.tiny(), 150), (ODD, 77), (INRConfig.paper(), 40)],
                         ids=["tiny", "odd", "paper"])
def test_fused_kernel_matches_the_bf16_model(emulated, cpu_device, config, count):
    """Every logit written and equal to the model's, to the last bits of float32 (the model sums each
    k tile's products in another order)."""
    logits, expected = emulate(emulated, cpu_device, config, count, seed=count)
    assert np.isfinite(logits).all()
    scale = np.abs(expected).max()
    print(f"max |emulated - model| = {np.abs(logits - expected).max() / scale:.1e} of the largest logit, "
          f"{np.mean(logits == expected):.1%} bit-equal")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6 * scale)


def test_a_wrong_fragment_fails_the_check(emulated, cpu_device):
    """The comparison can fail: with the emulator's A-fragment registers swapped the logits are wrong."""
    emulated.emulated_fault(FAULT_MMA_A_SWAP)
    try:
        logits, expected = emulate(emulated, cpu_device, INRConfig.tiny(), 64, seed=1)
    finally:
        emulated.emulated_fault(0)
    assert np.abs(logits - expected).max() > 0.05 * np.abs(expected).max()
