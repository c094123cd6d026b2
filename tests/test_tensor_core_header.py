"""slang/tensor_core.cuh on its own: it compiles, and its contract is the Python one.

The bf16 tensor-core product's CUDA C++ lives in ``slang/tensor_core.cuh`` (the Slang
kernel's prelude is generated from it: ``slang/tensor_core_prelude.slang``, checked here to
be up to date), so it can be compiled without Slang or a GPU. The test
writes a small translation unit that includes the header, instantiates its whole
kernel body (``run_kernel`` with the flags as a run-time value, so every operand,
layout, epilogue and block shape is compiled) and ``static_assert``s every value of
the contract against ``neumours.kernels.tensor_gemm`` (operand sources, layouts,
epilogues, block shapes, k slice, threads per group, the order of the scalar table)
and the flag bits against the kernel's ``FLAGS`` in ``tensor_core_kernels.slang``.

The unit is C++14, as Slang asks NVRTC for. With ``nvcc`` (no GPU needed) it is compiled
to sm_90 PTX, which must hold the tensor-core instructions; without it, ``g++
-fsyntax-only`` checks the C++ and the asserts, with the CUDA built-ins declared by a
stub; with neither the test skips.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from neumours.device import slang_dir
from neumours.kernels import tensor_gemm as tg

#: Declarations of the CUDA built-ins the header uses, for a host C++ syntax check only.
_HOST_STUB = r"""
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__
#define __align__(n) alignas(n)
#define __launch_bounds__(n)
#include <cmath>
#include <cstddef>
struct uint3 { unsigned x, y, z; };
extern uint3 blockIdx, threadIdx;
unsigned long long __cvta_generic_to_shared(const void*);
float __uint_as_float(unsigned);
unsigned __float_as_uint(float);
void sincospif(float, float*, float*);
unsigned min(unsigned, unsigned);
float atomicAdd(float*, float);
float __shfl_xor_sync(unsigned, float, int);
void __syncthreads();
"""

_PROBE = r"""
#include "tensor_core.cuh"
struct Scalars
{
    unsigned v[neumours_tc::S_COUNT];
    __device__ unsigned operator[](int i) const { return v[i]; }
};
extern "C" __global__ void __launch_bounds__(neumours_tc::THREADS)
probe(unsigned flags, const void* a, const void* b, const float* bias, const void* mask, void* c, float* colsum,
      Scalars s)
{
    neumours_tc::run_kernel(flags, blockIdx, threadIdx.x, a, b, bias, mask, c, colsum, s);
}
"""


def _flag_bits() -> dict[str, int]:
    """The bit each compile-time constant takes in the Slang kernel's FLAGS."""
    text = (slang_dir() / "tensor_core_kernels.slang").read_text()
    expression = re.search(r"static const uint FLAGS =(.*?);", text, re.S).group(1)
    bits = {name: int(shift or 0) for name, shift in re.findall(r"uint\((\w+)\)(?:\s*<<\s*(\d+))?", expression)}
    assert len(bits) == 10, bits
    return bits


def contract_asserts() -> str:
    """``static_assert``s of every value the header shares with Python and the Slang kernel."""
    pairs = [("SRC_BF16", tg.BF16), ("SRC_F32", tg.F32), ("SRC_FOURIER", tg.FOURIER),
             ("LAYOUT_K", tg.K_CONTIGUOUS), ("LAYOUT_ROWS", tg.ROWS_CONTIGUOUS),
             ("EPI_STORE", tg.STORE), ("EPI_RELU_GRAD", tg.RELU_GRAD), ("EPI_ACCUMULATE", tg.ACCUMULATE),
             ("TILES_WIDE", tg.WIDE), ("TILES_NARROW", tg.NARROW),
             ("WIDE_BM", tg._BLOCK[tg.WIDE][0]), ("WIDE_BN", tg._BLOCK[tg.WIDE][1]),
             ("NARROW_BM", tg._BLOCK[tg.NARROW][0]), ("NARROW_BN", tg._BLOCK[tg.NARROW][1]),
             ("BK", tg.SLICE_K), ("THREADS", tg.THREADS), ("NO_ONES", f"{tg.NO_ONES}u"),
             ("S_COUNT", len(tg.SCALARS))]
    pairs += [(f"S_{name.upper()}", index) for index, name in enumerate(tg.SCALARS)]
    pairs += [(f"FLAG_{name}", bit) for name, bit in _flag_bits().items()]
    return "".join(f'static_assert(neumours_tc::{name} == {value}, "{name} differs from Python");\n'
                   for name, value in pairs)


def test_contract_names_every_value():
    """The asserts cover the whole scalar table and every flag (a renamed entry fails to compile)."""
    text = contract_asserts()
    assert text.count("static_assert") == 18 + len(tg.SCALARS) + 10
    assert "S_ONES_COLUMN == 9" in text and f"S_ZERO == {len(tg.SCALARS) - 1}" in text


def _compile(tmp_path, compiler: str) -> str:
    source = tmp_path / "probe.cu"
    source.write_text((_HOST_STUB if compiler == "g++" else "") + _PROBE + contract_asserts())
    if compiler == "nvcc":
        command = ["nvcc", "-arch=sm_90", "-ptx", "-std=c++14", "-I", str(slang_dir()), str(source),
                   "-o", str(tmp_path / "probe.ptx")]
    else:
        command = ["g++", "-std=c++14", "-fsyntax-only", "-x", "c++", "-I", str(slang_dir()), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return (tmp_path / "probe.ptx").read_text() if compiler == "nvcc" else ""


def test_header_compiles_with_the_python_contract(tmp_path):
    if shutil.which("nvcc"):
        ptx = _compile(tmp_path, "nvcc")
        for instruction in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "ldmatrix.sync.aligned",
                            "cp.async.cg.shared.global", "cvt.rn.bf16x2.f32"):
            assert instruction in ptx, instruction
    elif shutil.which("g++"):
        _compile(tmp_path, "g++")
    else:
        pytest.skip("neither nvcc nor g++ on this machine")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_header_breaks_on_a_contract_change(tmp_path, monkeypatch):
    """The check can fail: a Python table in another order no longer compiles."""
    order = list(tg.SCALARS)
    order[0], order[1] = order[1], order[0]
    monkeypatch.setattr(tg, "SCALARS", tuple(order))
    source = tmp_path / "probe.cu"
    source.write_text(_HOST_STUB + _PROBE + contract_asserts())
    result = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", "-x", "c++", "-I", str(slang_dir()), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "S_A_LD differs from Python" in result.stderr


def test_generated_prelude_is_the_header():
    """slang/tensor_core_prelude.slang is what neumours.kernels.tensor_core_prelude makes of the header
    today (NVRTC gets no include path from slangpy, so the kernel carries the header's text)."""
    from neumours.kernels import tensor_core_prelude

    generated = (slang_dir() / tensor_core_prelude.GENERATED).read_text()
    assert generated == tensor_core_prelude.render(), (
        "slang/tensor_core_prelude.slang is out of date: run python -m neumours.kernels.tensor_core_prelude")
    assert '#include "' not in tensor_core_prelude.inlined_header()  # nothing left for NVRTC to look up
    kernel = (slang_dir() / "tensor_core_kernels.slang").read_text()
    assert '#include "tensor_core_prelude.slang"' in kernel and "tensor_core.cuh\")" not in kernel
