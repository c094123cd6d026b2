"""Every parameter dict the kernel wrappers dispatch matches the shader's ``params`` struct (Slang reflection).

The wrappers of :mod:`neumours.kernels` fill each kernel's ``ParameterBlock``
from a Python dict; slangpy binds the keys by name and does not complain about a
key that names no field (a typo binds nothing, the field keeps whatever it held).
Here every wrapper is called, at tiny sizes on the CPU device, with its dispatch
recorded instead of run; each recorded dict is compared with the reflection of
the kernel file compiled with the same constants: every key must be a field of
``params`` (nested dicts: of the nested struct) and of a matching kind (a buffer
for a resource, a number for a scalar, an integer for an integer, a sequence of
the right length for a vector or array, a dict for a struct). The tensor-core
kernel is CUDA only; its struct is reflected from the declaration in its file.
The test also fails when a kernel entry point of ``slang/`` is not exercised here.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import slangpy as spy

import neumours.kernels as kernels_package
from neumours.device import empty_buffer, slang_dir
from neumours.device.kernels import _define_value
from neumours.kernels import (accumulate, augment, bf16, denoise, encoding, fused_mlp, gemm, loss, normalise, optim,
                              patch, probabilities, ray_samples, raymarch, sampler, tensor_gemm)
from neumours.kernels.epilogue import ACCUMULATE, RELU_GRAD, STORE, Bias, ColumnSums, Epilogue, Mask

_Kind = spy.TypeReflection.Kind
_SLANG_VECTORS = tuple(getattr(spy, f"{t}{n}") for t in ("int", "uint", "float", "bool") for n in (2, 3, 4))
_SHAPE = (6, 5, 4)
_BIG = 1 << 18   # values in the stand-in buffers: more than any wrapper below asks for


def _entry_points() -> set[tuple[str, str]]:
    """Every compute entry point of slang/*_kernels.slang."""
    found = set()
    for path in slang_dir().glob("*_kernels.slang"):
        for entry in re.findall(r'\[shader\("compute"\)\]\s*(?:\[[^\]]*\]\s*)*\w+\s+(\w+)\s*\(', path.read_text()):
            found.add((path.name, entry))
    return found


class Recorder:
    """Stands in for ``load_kernel`` in the wrapper modules: records (file, entry, constants, params)."""

    def __init__(self):
        self.calls = []

    def __call__(self, device, file, entry, constants=None):
        def dispatch(thread_count, **params):
            self.calls.append((file, entry, dict(constants or {}), params["params"]))
        return dispatch


@pytest.fixture(scope="module")
def recorded(cpu_device):
    """Call every wrapper once per variant it builds a different dict for; return the recorded dispatches."""
    return recorded_dispatches(cpu_device)


def recorded_dispatches(cpu_device) -> list:
    """(file, entry, constants, params) of every wrapper's dispatch, each called once per variant
    (also read by tests/test_codegen.py)."""
    recorder = Recorder()
    modules = (accumulate, augment, bf16, denoise, encoding, fused_mlp, gemm, loss, normalise, optim, patch,
               probabilities, ray_samples, raymarch, sampler, tensor_gemm)
    saved = {module: module.load_kernel for module in modules}
    for module in modules:
        module.load_kernel = recorder
    try:
        _call_every_wrapper(cpu_device)
    finally:
        for module, original in saved.items():
            module.load_kernel = original
    return recorder.calls


def _call_every_wrapper(dev):
    f32 = empty_buffer(dev, _BIG)
    u32 = empty_buffer(dev, _BIG, np.uint32)
    accumulate.scatter_add(dev, f32, u32, f32, 8)
    augment.augment_inputs(dev, f32, f32, u32, f32, 4, f32, f32, 8, 1, 3, 4, 3)
    bf16.pack_bf16(dev, f32, u32, 1, u32, 8)
    bf16.pack_fragments(dev, f32, u32, 3, u32, 64)
    bf16.pack_padded_biases(dev, f32, u32, 3, f32, 24)
    encoding.encode_forward(dev, f32, f32, 8, 4)
    encoding.encode_backward(dev, f32, f32, f32, 8, 4)
    loss.loss_stats(dev, f32, u32, f32, f32, 0, 8, 4)
    loss.loss_grad(dev, f32, u32, f32, f32, 0, f32, 8, 0.5, 1.0, 1.0, 4)
    normalise.brain_partials(dev, f32, u32, 0, f32, 8, 4)
    normalise.apply_zscore(dev, f32, u32, 0, f32, 8, 4)
    patch.gather_inputs(dev, f32, u32, u32, u32, f32, f32, 8, 4, 3)
    patch.grid_inputs(dev, f32, u32, 0, _SHAPE, (0.1, 0.1, 0.1), 0, 8, f32, f32, 4, 3)
    probabilities.argmax_labels(dev, f32, u32, 0, 8, 8, 4)
    probabilities.argmax_labels(dev, f32, u32, 0, 8, 8, 4, probs=f32, nonfinite=u32)
    probabilities.softmax_backward(dev, f32, f32, f32, 0, 8, 8, 4)
    probabilities.gradient_blocks(dev, f32, u32, 8, 4, 4)
    probabilities.pack_labels(dev, u32, u32, 8)
    denoise.fill(dev, u32, 8, 0)
    denoise.cc_init(dev, u32, u32, u32, _SHAPE, 0)
    denoise.cc_merge(dev, u32, u32, _SHAPE, 0, 6)
    denoise.cc_merge(dev, u32, u32, _SHAPE, 0, 26, planar=True)
    denoise.cc_compress(dev, u32, _SHAPE)
    denoise.component_sizes(dev, u32, u32, _SHAPE)
    denoise.largest_size(dev, u32, u32, u32, _SHAPE)
    denoise.largest_root(dev, u32, u32, u32, _SHAPE)
    denoise.keep_components(dev, u32, u32, u32, u32, u32, _SHAPE, 2)
    denoise.island_targets(dev, u32, u32, u32, u32, u32, _SHAPE, 2)
    denoise.hole_seeds(dev, u32, u32, u32, _SHAPE, False)
    denoise.hole_targets(dev, u32, u32, u32, _SHAPE)
    denoise.edt_init(dev, u32, u32, u32, _SHAPE)
    denoise.edt_pass(dev, u32, u32, u32, u32, _SHAPE, 0)
    denoise.fill_targets(dev, u32, u32, u32, _SHAPE)
    table = sampler.PointTable(u32, u32, u32, 2, distances=f32, distance_columns=3, distance_stride=40)
    sampler.sample_points(dev, table, 7, 3, 0, 8, 2, 1, f32, u32, u32)
    sampler.sample_points(dev, table, 7, 3, 0, 8, 2, 1, f32, u32, u32, phi=f32)
    sampler.random_words(dev, 7, (0, 1, 2, 3), 8, u32)
    optim.grad_partials(dev, f32, 8, f32)
    optim.finish_step(dev, f32, u32, 0, 3, 1.0, 1e-3, (0.9, 0.999))
    optim.finish_step(dev, f32, u32, 1, 3, 1.0, 1e-3, (0.9, 0.999), stats=f32, stats_offset=4, stats_count=4)
    optim.adamw_step(dev, f32, f32, f32, f32, u32, 8, 0.99, 0.1, 0.999, 0.001, 1e-8)
    optim.clear_skips(dev, u32)
    optim.fill(dev, f32, 8, 0.0)
    _gemm_variants(dev, f32)
    _tensor_gemm_variants(f32, u32)
    _fused_variants(f32, u32)
    _render_variants(dev, f32)


def _gemm_variants(dev, f32):
    view = gemm.Strided(f32, 16, 1)
    fourier = gemm.Fourier(f32, 2)
    gemm.gemm(dev, fourier, view, view, 8, 8, 15, Epilogue(STORE, bias=Bias(f32), relu=True))
    gemm.gemm(dev, view, view, view, 8, 4, 8, Epilogue(RELU_GRAD, mask=Mask(f32, 16), column_sums=ColumnSums(f32, 2, 0, 8)))
    gemm.gemm(dev, view, fourier, view, 8, 15, 8, Epilogue(ACCUMULATE, bias_grad=0), splits=2)


def _fused_variants(f32, u32):
    cuda = SimpleNamespace(info=SimpleNamespace(type=spy.DeviceType.cuda))   # the wrapper refuses other devices
    shape = fused_mlp.FusedShape(27, 108, 8, 8, 16, 2, 4)
    fused_mlp.fused_forward(cuda, shape, [(0, 0)] * 5, f32, f32, u32, f32, f32, 100)


def _tensor_gemm_variants(f32, u32):
    cuda = SimpleNamespace(info=SimpleNamespace(type=spy.DeviceType.cuda))   # the wrapper refuses other devices
    bf = tensor_gemm.Operand(u32, tensor_gemm.BF16, tensor_gemm.K_CONTIGUOUS, ld=16)
    tensor_gemm.tensor_gemm(cuda, tensor_gemm.Operand(f32, tensor_gemm.FOURIER, tensor_gemm.K_CONTIGUOUS), bf, u32,
                            8, 16, 15, Epilogue(STORE, bias=Bias(f32), relu=True), out_ld=16, out_bf16=True)
    tensor_gemm.tensor_gemm(cuda, bf, bf, u32, 8, 16, 16,
                            Epilogue(RELU_GRAD, mask=Mask(u32, 16), column_sums=ColumnSums(f32, 8, 0, 16)),
                            out_ld=16, out_bf16=True)
    tensor_gemm.tensor_gemm(cuda, bf, bf, f32, 8, 16, 16, Epilogue(ACCUMULATE, bias_grad=0), out_ld=16, splits=2)


def _render_variants(dev, f32):
    from neumours.infer.ray_field import DirectRenderer
    from neumours.render import Camera, RenderSettings, orbit
    from neumours.render.raymarch import Frame, Gradients, Scene, render_backward_device, render_device

    camera: Camera = orbit(30.0, 20.0, 3.0, fov_y_deg=40.0, width=4, height=3)
    settings = RenderSettings()
    frame = Frame.allocate(dev, 4, 3)
    volumes = np.zeros((4, *_SHAPE), np.float32)
    probs = np.full((4, *_SHAPE), 0.25, np.float32)
    for scene in (Scene.upload(dev, (1.0, 1.0, 1.0), volumes, labels=np.zeros(_SHAPE, np.uint8)),
                  Scene.upload(dev, (1.0, 1.0, 1.0), volumes, probabilities=probs)):
        render_device(scene, camera, settings, frame)
        render_backward_device(scene, camera, settings, frame, f32, Gradients.zeros(scene))
    field = SimpleNamespace(shape=_SHAPE, spacing=(1.0, 1.0, 1.0), settings=settings, device=dev)
    params = DirectRenderer._params(field, camera)
    ray_samples.ray_sample_counts(dev, params, f32, 4, 3)
    ray_samples.ray_sample_counts(dev, params, f32, 4, 3, pixel_weights=f32)
    ray_samples.ray_sample_positions(dev, params, f32, f32, f32, 8, 4, 3)
    ray_samples.composite_forward(dev, params, f32, f32, f32, 8, f32, f32, 4, 4, 3)
    ray_samples.composite_backward(dev, params, f32, f32, f32, 8, f32, f32, f32, f32, 4, 4, 3)


# ---------------------------------------------------------------- reflection

_STRUCTS: dict = {}
#: Kernels the CPU target cannot compile (a CUDA prelude): where their parameter declarations begin and
#: the line that ends them.
_CUDA_ONLY = {tensor_gemm.FILE: ("static const int SCALARS", "ParameterBlock<TensorGemmParams> params"),
              fused_mlp.FILE: ("struct FusedParams", "ParameterBlock<FusedParams> params")}


def params_struct(device: spy.Device, file: str, constants: dict):
    """The type layout of ``params``'s struct in ``file`` compiled with ``constants`` (cached)."""
    defines = {k: _define_value(v) for k, v in constants.items()}
    key = (file, tuple(sorted(defines.items())))
    if key not in _STRUCTS:
        session = device.create_slang_session(spy.SlangCompilerOptions({"include_paths": [str(slang_dir())],
                                                                         "defines": defines}))
        if file in _CUDA_ONLY:   # reflect its parameter declarations alone
            text = (slang_dir() / file).read_text()
            first, block = _CUDA_ONLY[file]
            start = text.index(first)
            end = text.index(";", text.index(block)) + 1
            module = session.load_module_from_source(file.removesuffix(".slang") + "_params", text[start:end])
        else:
            module = session.load_module(file.removesuffix(".slang"))
        (block,) = [p for p in module.layout.parameters if p.name == "params"]
        _STRUCTS[key] = block.type_layout.element_type_layout
    return _STRUCTS[key]


def mismatches(struct, values: dict, where: str = "params") -> list[str]:
    """What in ``values`` does not fit ``struct`` (a TypeLayoutReflection of a struct)."""
    fields = {f.name: f.type_layout for f in struct.fields}
    problems = [f"{where}.{key}: no such field" for key in values if key not in fields]
    for name, layout in fields.items():
        kind, here = layout.type.kind, f"{where}.{name}"
        if name not in values:   # one struct often serves several entry points, each reading some fields
            continue
        value = values[name]
        if kind == _Kind.resource:
            if not isinstance(value, spy.Buffer):
                problems.append(f"{here}: a buffer expected, got {type(value).__name__}")
        elif kind == _Kind.scalar:
            scalar = layout.type.scalar_type
            integral = scalar in (spy.TypeReflection.ScalarType.uint32, spy.TypeReflection.ScalarType.int32)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                if not (isinstance(value, (bool, np.bool_)) and scalar == spy.TypeReflection.ScalarType.bool):
                    problems.append(f"{here}: a number expected, got {type(value).__name__}")
            elif integral and not float(value).is_integer():
                problems.append(f"{here}: an integer expected, got {value!r}")
            elif scalar == spy.TypeReflection.ScalarType.uint32 and value < 0:
                problems.append(f"{here}: a uint, got {value!r}")
        elif kind in (_Kind.vector, _Kind.array):
            count = layout.type.col_count if kind == _Kind.vector else layout.type.element_count
            # Sequences, or slangpy's own vectors (spy.uint3, ...).
            if not isinstance(value, (list, tuple, np.ndarray, *_SLANG_VECTORS)) or len(value) != count:
                problems.append(f"{here}: a sequence of {count} expected, got {value!r}")
        elif kind == _Kind.struct:
            if not isinstance(value, dict):
                problems.append(f"{here}: a dict expected, got {type(value).__name__}")
            else:
                problems += mismatches(layout, value, here)
    return problems


def test_every_kernel_entry_point_is_exercised(recorded):
    assert {(file, entry) for file, entry, _, _ in recorded} == _entry_points()


def test_parameter_dicts_match_the_shader_structs(recorded, cpu_device):
    problems = []
    for file, entry, constants, params in recorded:
        problems += [f"{file}:{entry}: {p}" for p in mismatches(params_struct(cpu_device, file, constants), params)]
    assert not problems, "\n".join(problems)


def test_a_wrong_key_or_kind_is_found(recorded, cpu_device):
    """The check can fail: a misspelt key, a scalar given as a buffer, a fraction for an integer."""
    file, _, constants, params = next(call for call in recorded if call[1] == "scatter_add")
    struct = params_struct(cpu_device, file, constants)
    assert not mismatches(struct, params)
    bad = dict(params)
    count_field = next(f.name for f in struct.fields if f.type_layout.type.kind == _Kind.scalar)
    bad["valuez"] = bad.pop("values")
    assert mismatches(struct, bad) == ["params.valuez: no such field"]
    bad = dict(params, **{count_field: params["values"]})
    assert mismatches(struct, bad) == [f"params.{count_field}: a number expected, got Buffer"]
    bad = dict(params, **{count_field: 2.5})
    assert mismatches(struct, bad) == [f"params.{count_field}: an integer expected, got 2.5"]


def test_the_wrappers_are_all_covered():
    """A new wrapper module of neumours.kernels must be added to the recorder above."""
    covered = {"accumulate", "augment", "bf16", "denoise", "encoding", "fused_mlp", "gemm", "loss", "normalise",
               "optim", "patch", "probabilities", "ray_samples", "raymarch", "sampler", "tensor_gemm"}
    folder = Path(kernels_package.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")
               if re.search(r"^from neumours\.device import .*\bload_kernel\b", p.read_text(), re.M)}
    assert modules <= covered, modules - covered
