"""slang/tensor_core.cuh's kernel body run on the CPU through slang/cuda_emulation.h, against float64.

The emulation (one std::thread per CUDA thread; ldmatrix, mma.sync m16n8k16 bf16,
cvt.rn.bf16x2, cp.async, shuffles, barriers and atomics on the host) lets the
GPU-verified tensor-core product run without a GPU. These tests build
``tests/cuda_emulation/gemm_probe.cpp`` with g++ once, run ``neumours_tc::run_kernel``
with the constants, scalar table and groups that :func:`neumours.kernels.tensor_gemm.launch_plan`
gives for every operand source, layout, epilogue and block shape at small ragged sizes, and
compare with float64 products of the same bf16-rounded operands; element by element, within
fp32 accumulation error (and bf16 rounding where C is bf16). Deliberate faults of the
emulator (a swapped fragment register, a missing transpose) must fail the same check, and a
warp collective that not all lanes reach, or a misaligned ldmatrix row, must abort.
It checks results, not speed.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_tensor_core import _bf16, bf16_bits_reference
from test_tensor_core_header import _flag_bits

from neumours.device import slang_dir
from neumours.kernels import tensor_gemm as tg
from neumours.kernels.epilogue import Bias, ColumnSums, Epilogue, Mask

PROBE = Path(__file__).parent / "cuda_emulation" / "gemm_probe.cpp"
FAULT_MMA_A_SWAP, FAULT_LDMATRIX_NO_TRANS = 1, 2   # neumours_emu::Fault
_PTR = ctypes.c_void_p


def build_probe(tmp_path_factory, probe: Path) -> tuple[ctypes.CDLL, Path]:
    """A probe of tests/cuda_emulation/ built against slang/cuda_emulation.h into a shared library
    (skips without g++); the library loaded with ctypes, and its path."""
    if shutil.which("g++") is None:
        pytest.skip("no g++ on this machine: the CUDA emulation needs it")
    library = tmp_path_factory.mktemp("cuda_emulation") / f"{probe.stem}.so"
    command = ["g++", "-std=c++17", "-O2", "-fno-strict-aliasing", "-pthread", "-shared", "-fPIC",
               "-DNEUMOURS_CUDA_EMULATION", "-I", str(slang_dir()), str(probe), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return ctypes.CDLL(str(library)), library


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """The probe compiled once into a shared library (ctypes)."""
    lib, library = build_probe(tmp_path_factory, PROBE)
    lib.emulated_tensor_gemm.argtypes = [ctypes.c_uint] * 4 + [_PTR] * 7
    lib.emulated_tensor_gemm.restype = None
    lib.emulated_fault.argtypes = [ctypes.c_int]
    lib.emulated_shuffles.argtypes = [ctypes.c_int, ctypes.c_int, _PTR]
    lib.emulated_pack_bf16.argtypes = [_PTR, _PTR, _PTR, ctypes.c_int]
    lib.emulated_sincospif.argtypes = [_PTR, _PTR, _PTR, ctypes.c_int]
    return lib, library


def _aligned(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` at a 64-byte aligned address (the kernel reads 16-byte chunks)."""
    values = np.ascontiguousarray(values)
    raw = np.zeros(values.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def _fourier_bf16(coords: np.ndarray, features: int) -> np.ndarray:
    """(P, features) float64 values of bf16(gamma(p)) as slang/fourier.h computes them: the
    argument reduced in float32 (fourier_reduce), sin/cos of pi times it rounded to float32."""
    from neumours.model.reference import fourier_features_np

    x = coords.astype(np.float32)
    out = np.zeros((len(x), features), np.float32)
    out[:, :min(3, features)] = x[:, :min(3, features)]
    hi = (x.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
    for j in range(3, features):
        block, slot = (j - 3) // 6, (j - 3) % 6
        k = np.float32(block + 1)
        axis = slot % 3
        r = np.fmod(k * hi[:, axis], np.float32(2.0)) + k * (x[:, axis] - hi[:, axis])
        angle = np.pi * r.astype(np.float64)
        out[:, j] = (np.sin(angle) if slot < 3 else np.cos(angle)).astype(np.float32)
    exact = fourier_features_np(coords, -(-max(features - 3, 0) // 6))[:, :features]
    assert np.abs(out - exact).max() < 1e-5   # the reduction keeps fp32 precision
    return _bf16(out)


def _operand(rng, source, layout, rows, k, ld=0, offset=0):
    """(Operand with buffer None, its memory as a numpy array, dense float64 (rows, k) as the kernel sees it)."""
    if source == tg.FOURIER:
        points, features = (rows, k) if layout == tg.K_CONTIGUOUS else (k, rows)
        coords = rng.uniform(-1, 1, (points, 3)).astype(np.float32)
        feats = _fourier_bf16(coords, features)
        return tg.Operand(None, source, layout), _aligned(coords), feats if layout == tg.K_CONTIGUOUS else feats.T
    major, minor = (rows, k) if layout == tg.K_CONTIGUOUS else (k, rows)
    ld = ld or minor
    values = rng.normal(size=(major, minor)).astype(np.float32)
    mem = np.full(offset + major * ld, 1e30, np.float32)   # values outside the operand would show
    mem[offset:].reshape(major, ld)[:, :minor] = values
    if source == tg.BF16:
        mem = bf16_bits_reference(mem)
    dense = _bf16(values)
    return (tg.Operand(None, source, layout, ld=ld, offset=offset), _aligned(mem),
            dense if layout == tg.K_CONTIGUOUS else dense.T)


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


B, F, FO, K, R = tg.BF16, tg.F32, tg.FOURIER, tg.K_CONTIGUOUS, tg.ROWS_CONTIGUOUS
#: (name, m, n, k, A (source, layout, ld, offset), B (...), epilogue, options); 256 x 16 blocks where
#: n (with the column of ones) <= 16, else 128 x 128.
CASES = [
    ("store bf16 bias relu wide", 40, 24, 70, (B, K, 72, 8), (B, K, 80, 0), tg.STORE, {"bf16": True, "bias": True}),
    ("store f32 rows narrow", 40, 12, 70, (F, K, 76, 4), (B, R, 16, 8), tg.STORE, {"bias": True}),
    ("store fourier wide", 40, 24, 70, (FO, K, 0, 0), (B, K, 72, 0), tg.STORE, {"bias": True, "bf16": True}),
    ("store a rows, two row blocks", 300, 5, 40, (B, R, 304, 0), (F, K, 40, 0), tg.STORE, {}),
    ("relu grad wide", 40, 24, 70, (F, K, 72, 0), (B, R, 24, 0), tg.RELU_GRAD, {"bf16": True, "split": 10}),
    ("relu grad narrow", 40, 10, 37, (B, K, 40, 0), (B, R, 16, 0), tg.RELU_GRAD, {"split": 4}),
    ("accumulate split-K + bias grad wide", 40, 24, 150, (F, R, 40, 0), (B, R, 24, 0), tg.ACCUMULATE,
     {"ones": True, "splits": 3}),
    ("accumulate fourier narrow + bias grad", 24, 15, 70, (B, R, 24, 0), (FO, R, 0, 0), tg.ACCUMULATE,
     {"ones": True, "splits": 2}),
    ("accumulate narrow", 40, 5, 70, (F, R, 40, 0), (B, K, 72, 0), tg.ACCUMULATE, {"splits": 2}),
]


def _run_case(lib, case, seed=0):
    """Run one case through the emulated kernel; returns a list of (what, got, reference, tolerance) arrays."""
    name, m, n, k, a_spec, b_spec, op, options = case
    rng = np.random.default_rng(seed)
    a, a_mem, dense_a = _operand(rng, a_spec[0], a_spec[1], m, k, a_spec[2], a_spec[3])
    b, b_mem, dense_b = _operand(rng, b_spec[0], b_spec[1], n, k, b_spec[2], b_spec[3])
    acc = dense_a @ dense_b.T
    scale = np.abs(dense_a) @ np.abs(dense_b).T   # sum |a b|: the size of fp32 accumulation errors
    kwargs, splits = {"op": op}, options.get("splits", 1)
    bias_mem = mask_mem = colsum_mem = None
    checks = []
    if options.get("bias"):
        bias = rng.normal(size=n).astype(np.float32)
        bias_mem = _aligned(np.concatenate([np.zeros(3, np.float32), bias]))
        kwargs.update(bias=Bias(None, 3), relu=True)
        acc = np.maximum(acc + bias, 0.0)
        scale = scale + np.abs(bias)
    if op == tg.RELU_GRAD:
        h_bits = bf16_bits_reference(rng.normal(size=(m, n)).astype(np.float32))
        mask_mem = _aligned(h_bits)
        kwargs["mask"] = Mask(None, n, 0)
        acc = np.where(_bf16_values(h_bits) > 0, acc, 0.0)
        split = options["split"]
        colsum_mem = _aligned(rng.normal(size=n + 20).astype(np.float32))
        before = colsum_mem.astype(np.float64)
        kwargs["column_sums"] = ColumnSums(None, split, 2, split + 12)   # columns >= split land 10 further on
    out_ld = n + 4   # even: a bf16 C is written in pairs
    if op == tg.ACCUMULATE:
        bias_grad = m * out_ld + 8
        out = _aligned(rng.normal(size=bias_grad + m + 5).astype(np.float32))
        if options.get("ones"):
            kwargs["bias_grad"] = bias_grad
        out_offset, out_bf16 = 0, False
    else:
        out_offset, out_bf16 = 4, options.get("bf16", False)
        out = _aligned(np.full(out_offset + m * out_ld + 6, 0x7FC1 if out_bf16 else np.nan,
                               np.uint16 if out_bf16 else np.float32))
    out_before = out.copy()
    epilogue = Epilogue(**kwargs)
    epilogue.check(splits)
    plan = tg.launch_plan(a, b, m, n, k, epilogue, out_offset=out_offset, out_ld=out_ld, out_bf16=out_bf16,
                          splits=splits)
    bits = _flag_bits()
    flags = sum(int(plan.constants[name]) << bit for name, bit in bits.items())
    scalars = np.array(plan.scalars, np.uint32)
    lib.emulated_tensor_gemm(flags, *plan.groups, a_mem.ctypes.data, b_mem.ctypes.data,
                             None if bias_mem is None else bias_mem.ctypes.data,
                             None if mask_mem is None else mask_mem.ctypes.data, out.ctypes.data,
                             None if colsum_mem is None else colsum_mem.ctypes.data, scalars.ctypes.data)
    fp32 = 1e-5 * scale + 1e-30
    inside = np.zeros(out.shape, bool)
    inside[out_offset:out_offset + m * out_ld].reshape(m, out_ld)[:, :n] = True
    if op == tg.ACCUMULATE:
        got = out.astype(np.float64) - out_before
        checks.append(("C += A B^T", got[inside].reshape(m, n), acc, fp32))
        ref_rest = np.zeros(int((~inside).sum()))
        rest_tol = np.zeros_like(ref_rest)
        if options.get("ones"):
            where = np.flatnonzero(~inside)
            is_bias = (where >= bias_grad) & (where < bias_grad + m)
            ref_rest[is_bias] = dense_a.sum(axis=1)
            rest_tol[is_bias] = 1e-5 * np.abs(dense_a).sum(axis=1)
        checks.append(("bias gradient, and nothing else written", got[~inside], ref_rest, rest_tol))
    else:
        if out_bf16:
            got = _bf16_values(out[inside]).reshape(m, n)
            checks.append(("C (bf16)", got, acc, 2.0**-8 * np.abs(acc) + fp32))
        else:
            checks.append(("C", out[inside].astype(np.float64).reshape(m, n), acc, fp32))
        assert out[~inside].tobytes() == out_before[~inside].tobytes(), f"{name}: wrote outside C"
    if op == tg.RELU_GRAD:
        ref = np.zeros(n + 20)
        sums = acc.sum(axis=0)
        ref[2:2 + split], ref[split + 12:n + 12] = sums[:split], sums[split:]
        tol = np.zeros(n + 20)
        tol[2:2 + split], tol[split + 12:n + 12] = fp32.sum(axis=0)[:split], fp32.sum(axis=0)[split:]
        checks.append(("column sums", colsum_mem.astype(np.float64) - before, ref, tol))
    return checks


def _mismatches(checks) -> list[str]:
    return [f"{what}: {int((np.abs(got - ref) > tol).sum())} of {ref.size} values off"
            for what, got, ref, tol in checks if not (np.abs(got - ref) <= tol).all()]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_emulated_tensor_gemm_matches_float64(emulated, case):
    """Every source, layout, epilogue and block shape of the kernel, ragged sizes, split-K, against float64."""
    lib, _ = emulated
    checks = _run_case(lib, case)
    assert not _mismatches(checks), (case[0], _mismatches(checks))
    # The check is not vacuous: the product is not zero and the tolerance far below its size.
    what, got, ref, tol = checks[0]
    assert np.abs(ref).max() > 0.1 and tol.max() < 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("fault, case", [(FAULT_MMA_A_SWAP, CASES[0]), (FAULT_LDMATRIX_NO_TRANS, CASES[1])],
                         ids=["mma A registers swapped", "ldmatrix without transpose"])
def test_a_wrong_fragment_layout_fails_the_check(emulated, fault, case):
    """The same comparison fails when the emulator maps fragments wrongly (so it can catch a layout error)."""
    lib, _ = emulated
    lib.emulated_fault(fault)
    try:
        checks = _run_case(lib, case)
    finally:
        lib.emulated_fault(0)
    assert _mismatches(checks)


def test_pack_bf16_rounds_to_nearest_even_low_half_first(emulated):
    """cvt.rn.bf16x2.f32: torch's rounding (ties to even, infinities kept), lo in the low 16 bits, NaN stays NaN."""
    lib, _ = emulated
    rng = np.random.default_rng(1)
    lo = (rng.normal(size=64) * 10.0 ** rng.integers(-30, 30, size=64)).astype(np.float32)
    lo[:6] = [np.inf, -np.inf, 0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8]   # the last two: ties
    lo[6] = np.float32(3.0e38)   # rounds up to infinity
    hi = rng.normal(size=64).astype(np.float32)
    out = np.zeros(64, np.uint32)
    lib.emulated_pack_bf16(lo.ctypes.data, hi.ctypes.data, out.ctypes.data, 64)
    np.testing.assert_array_equal(out & 0xFFFF, bf16_bits_reference(lo))
    np.testing.assert_array_equal(out >> 16, bf16_bits_reference(hi))
    nan = np.full(2, np.nan, np.float32)
    lib.emulated_pack_bf16(nan.ctypes.data, nan.ctypes.data, out.ctypes.data, 1)
    assert np.isnan(_bf16_values(np.array([out[0] & 0xFFFF, out[0] >> 16]))).all()


def test_sincospif_is_sin_and_cos_of_pi_x(emulated):
    lib, _ = emulated
    x = np.concatenate([np.arange(-8, 9) * 0.5, np.random.default_rng(2).uniform(-3, 3, 200)]).astype(np.float32)
    s, c = np.zeros_like(x), np.zeros_like(x)
    lib.emulated_sincospif(x.ctypes.data, s.ctypes.data, c.ctypes.data, x.size)
    np.testing.assert_allclose(s, np.sin(np.pi * x.astype(np.float64)), rtol=0, atol=1e-7)
    np.testing.assert_allclose(c, np.cos(np.pi * x.astype(np.float64)), rtol=0, atol=1e-7)
    halves = x[:17]
    assert (s[:17][halves == np.round(halves)] == 0).all() and (c[:17][halves != np.round(halves)] == 0).all()


def test_shuffles_exchange_between_lanes(emulated):
    lib, _ = emulated
    out = np.zeros(64, np.float32)
    lib.emulated_shuffles(5, 7, out.ctypes.data)
    lanes = np.arange(32)
    np.testing.assert_array_equal(out[:32], 100.0 + (lanes ^ 5))
    np.testing.assert_array_equal(out[32:], np.full(32, 107.0))


@pytest.mark.parametrize("probe, message", [("emulated_divergent_shuffle", "lanes"),
                                            ("emulated_misaligned_ldmatrix", "not 16-byte aligned")])
def test_broken_warp_code_aborts(emulated, probe, message):
    """Odd lanes skip a shuffle the even lanes call, or a lane gives ldmatrix a misaligned row:
    the emulator aborts and says why (where a GPU would hang or fault)."""
    _, library = emulated
    code = f"import ctypes; ctypes.CDLL({str(library)!r}).{probe}()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "neumours_emu:" in result.stderr and message in result.stderr, result.stderr
