"""The kernels built for the GPU backends as slangpy builds them, without a GPU: Slang -> CUDA source
-> nvcc sm_90, and Slang -> SPIR-V (Vulkan).

Kernel tests run on the CPU device, so a kernel that Slang cannot compile for CUDA or Vulkan (a
construct the target lacks) would show only on a GPU; so would a mistake in the Slang around the
CUDA-only kernels' C++ preludes (an intrinsic's arguments, a type the prelude does not know).
Here the Slang compiler that slangpy itself loads (its ``libslang-compiler`` and ``slang.h``,
driven by ``tests/codegen/slang_codegen.cpp``) generates the CUDA source and the SPIR-V of every
entry point with the constants its wrapper passes (recorded as tests/test_kernel_params.py records
them), and of every variant of the tensor-core product the paper network dispatches (recorded
from the INR's own backend); nvcc (where installed; no GPU needed) compiles the CUDA-only
kernels for sm_90 and reports registers and spills.

One difference from the GPU: slangpy hands the source to NVRTC, nvcc compiles the prelude's
offline branch, where Slang 2026.12 has a known bug (the one-element bf16 vector helper returns
the scalar; fixed upstream); the test corrects that one helper before compiling.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import slangpy

from neumours.device import empty_buffer, slang_dir
from neumours.device.kernels import _define_value
from neumours.kernels import fused_mlp as fm
from neumours.kernels import tensor_gemm as tg
from neumours.model import tensor_core
from neumours.model.config import INRConfig
from neumours.model.fused import fused_shape
from neumours.model.inr import INR

TOOL = Path(__file__).parent / "codegen" / "slang_codegen.cpp"
_SLANGPY = Path(slangpy.__file__).parent
#: The offline-nvcc branch's one-element bf16 helper in Slang 2026.12's CUDA prelude, and its correction.
_BF16_HELPER = ("__nv_bfloat16 make___nv_bfloat161(__nv_bfloat16 x)\n{\n    return __nv_bfloat16{x};",
                "__nv_bfloat161 make___nv_bfloat161(__nv_bfloat16 x)\n{\n    return __nv_bfloat161{x};")
_NVCC = ["nvcc", "-arch=sm_90", "-std=c++17", "-DSLANG_CUDA_ENABLE_BF16", "-DSLANG_CUDA_ENABLE_HALF"]


#: Kernels whose work is a CUDA C++ prelude: CUDA only.
CUDA_ONLY = (tg.FILE, fm.FILE)


@pytest.fixture(scope="module")
def slang_codegen(tmp_path_factory):
    """The generator, built once against slangpy's own Slang compiler."""
    libraries = sorted(_SLANGPY.glob("libslang-compiler.so*"))
    if shutil.which("g++") is None or not libraries or not (_SLANGPY / "include" / "slang.h").is_file():
        pytest.skip("needs g++ and slangpy's Slang compiler library and header")
    tool = tmp_path_factory.mktemp("codegen") / "slang_codegen"
    result = subprocess.run(["g++", "-std=c++17", "-O1", "-I", str(_SLANGPY / "include"), str(TOOL), "-o",
                             str(tool), str(libraries[0]), f"-Wl,-rpath,{_SLANGPY}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return tool


def generate_all(tool: Path, jobs: list[tuple[str, str, dict, Path]], target: str = "cuda") -> list[str]:
    """The code (``target`` "cuda": CUDA source; "spirv": SPIR-V, returned empty) of (file, entry, constants,
    output) jobs (constants defined as :mod:`neumours.device.kernels` defines them), in one run of the generator."""
    lines = ["\t".join([file, entry, str(out)] + [f"{name}={_define_value(value)}"
                                                  for name, value in sorted(constants.items())])
             for file, entry, constants, out in jobs]
    result = subprocess.run([str(tool), str(slang_dir())] + (["spirv"] if target == "spirv" else []), input="\n".join(lines) + "\n", capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [word for job in jobs for word in ("ok", str(job[3]))]
    return [out.read_text() if target == "cuda" else "" for _, _, _, out in jobs]


def generate(tool: Path, file: str, entry: str, constants: dict, out: Path) -> str:
    """The CUDA source of one entry point compiled with ``constants``."""
    return generate_all(tool, [(file, entry, constants, out)])[0]


def nvcc_cubin(source: str, path: Path) -> str:
    """ptxas's report of the sm_90 build of ``source`` (with the offline-branch bf16 helper corrected)."""
    path.write_text(source.replace(*_BF16_HELPER))
    result = subprocess.run(_NVCC + ["-cubin", "-Xptxas", "-v", str(path), "-o", str(path.with_suffix(".cubin"))],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def tensor_gemm_variants(cpu_device) -> list[dict]:
    """The distinct constant sets of the paper network's bf16 products, forward and backward, as its
    tensor-core backend builds them (recorded on the CPU device, where its weight copy is made)."""
    inr = INR(dataclasses.replace(INRConfig.paper(), precision="fp32"), cpu_device)
    backend = tensor_core.TensorCoreBackend(inr)
    seen: dict[tuple, dict] = {}

    def record(device, a, b, out, m, n, k, epilogue, **options):
        constants = tg.launch_plan(a, b, m, n, k, epilogue, **options).constants
        seen.setdefault(tuple(sorted(constants.items())), constants)

    count, cfg = 4096, inr.config
    buffers = {name: empty_buffer(cpu_device, count * width) for name, width in
               (("gamma", 3), ("patches", cfg.patch_dim), ("logits", 4), ("grad_logits", 4))}
    tensors = inr.tensors(inr.new_workspace(count), **buffers)
    saved, tensor_core.tensor_gemm = tensor_core.tensor_gemm, record
    try:
        backend.forward(tensors, count)
        backend.backward(tensors, count)
    finally:
        tensor_core.tensor_gemm = saved
    return list(seen.values())


def test_the_slang_compiler_is_slangpys(slang_codegen):
    """The generator links the library slangpy loads (same Slang version as at run time)."""
    linked = subprocess.run(["ldd", str(slang_codegen)], capture_output=True, text=True).stdout
    assert str(_SLANGPY) in linked and "libslang-compiler" in linked


def test_fused_kernel_builds_for_sm90(slang_codegen, tmp_path):
    """The fused kernel for the paper's and the tiny network: Slang passes the packed sizes as literals
    to the prelude's run_packed, and the sm_90 build keeps every activation in registers (no spills)."""
    for config in (INRConfig.paper(), INRConfig.tiny()):
        shape = fused_shape(config)
        shape0, shape1, shape2 = shape.packed()
        constants = {"SHAPE0": shape0, "SHAPE1": shape1, "SHAPE2": shape2, "THREADS": fm.THREADS,
                     "TABLE": fm.TABLE}
        source = generate(slang_codegen, fm.FILE, "fused_mlp", constants, tmp_path / "fused.cu")
        call = re.search(r"neumours_fused::run_packed\(\((\d+)U\), \((\d+)U\), \((\d+)U\)", source)
        assert call and tuple(int(v) for v in call.groups()) == (shape0, shape1, shape2)
        if shutil.which("nvcc"):
            report = nvcc_cubin(source, tmp_path / f"fused_{config.hidden_width}.cu")
            assert "Compiling entry function 'fused_mlp' for 'sm_90'" in report
            assert "0 bytes spill stores, 0 bytes spill loads" in report, report[-800:]


def test_tensor_core_products_build_for_sm90(slang_codegen, tmp_path, cpu_device):
    """Every variant of the tensor-core product the paper network dispatches generates CUDA that nvcc
    builds for sm_90 without spills."""
    variants = tensor_gemm_variants(cpu_device)
    assert len(variants) >= 6, variants   # forward heads, hidden, logits; relu-gradient; accumulations

    sources = generate_all(slang_codegen, [(tg.FILE, "tensor_gemm", constants, tmp_path / f"gemm_{index}.cu")
                                           for index, constants in enumerate(variants)])
    assert all("neumours_tc::run_kernel(" in source for source in sources)
    if shutil.which("nvcc") is None:
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda item: nvcc_cubin(item[1], tmp_path / f"gemm_{item[0]}_nvcc.cu"),
                                enumerate(sources)))
    for constants, report in zip(variants, reports):
        assert "0 bytes spill stores, 0 bytes spill loads" in report, (constants, report[-800:])


@pytest.mark.parametrize("target", ["cuda", "spirv"])
def test_every_kernel_entry_point_compiles_for_the_gpu_backends(slang_codegen, tmp_path, cpu_device, target):
    """Every entry point of slang/*_kernels.slang, with the constants its wrapper passes, compiles to CUDA
    source and (but the CUDA-only ones) to SPIR-V for Vulkan."""
    from test_kernel_params import recorded_dispatches

    variants: dict[tuple, tuple[str, str, dict]] = {}
    for file, entry, constants, _ in recorded_dispatches(cpu_device):
        if target == "cuda" or file not in CUDA_ONLY:
            variants.setdefault((file, entry, tuple(sorted(constants.items()))), (file, entry, constants))
    jobs = [(file, entry, constants, tmp_path / f"entry_{index}.{target}")
            for index, (file, entry, constants) in enumerate(variants.values())]
    sources = generate_all(slang_codegen, jobs, target)
    assert len(sources) == len(variants) >= 50
    if target == "cuda":
        assert all("extern \"C\" __global__" in source for source in sources)
    else:
        assert all(out.read_bytes()[:4] == b"\x03\x02\x23\x07" for *_, out in jobs)   # the SPIR-V magic number


def test_a_slang_error_fails_the_generation(slang_codegen, tmp_path):
    """The check can fail: a constant the kernel needs, missing, is a Slang error, not a silent success."""
    with pytest.raises(AssertionError, match="fused_mlp_kernels.slang:fused_mlp"):
        generate(slang_codegen, fm.FILE, "fused_mlp", {"SHAPE0": 1, "THREADS": fm.THREADS, "TABLE": fm.TABLE},
                 tmp_path / "broken.cu")
