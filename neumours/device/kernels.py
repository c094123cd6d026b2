"""Compiling explicit Slang compute entry points, once per device and constants.

Kernels are explicit ``[shader("compute")]`` entry points (the slangpy
functional API fails on the CPU device in slangpy 0.43.1, upstream slangpy
issue #1136; docs/architecture.md), compiled
with compile-time constants passed as preprocessor defines. Sizes are defined
once, in Python, and reach Slang only through these constants.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref
from functools import cache
from pathlib import Path
from typing import Mapping

import slangpy as spy

@cache
def slang_dir() -> Path:
    """Folder holding the project's ``.slang`` modules.

    A source checkout or editable install keeps them at the repository's top
    level ``slang/``; a built wheel ships them as ``neumours/slang``.
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "slang", package.parent / "slang"):
        if (candidate / "encoding.slang").is_file():
            return candidate
    raise FileNotFoundError(f"Slang sources not found next to {package}")


#: Environment variable naming a folder where compiled Slang modules and shaders are kept across
#: processes (the test suite sets it, so that its subprocesses and later runs do not recompile).
SHADER_CACHE_ENV = "NEUMOURS_SHADER_CACHE"


def shader_cache_dir(kind: str) -> Path | None:
    """``$NEUMOURS_SHADER_CACHE/<kind>`` (kind: ``cpu``, ``cuda``, ...), or None when the variable is unset.

    slangpy keeps the Slang modules of every session there, and the device's compiled shaders
    where its backend caches them (CUDA does; the CPU device builds its host code in every process).
    """
    root = os.environ.get(SHADER_CACHE_ENV, "").strip()
    return Path(root) / kind if root else None


def _define_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "0"
    return str(value)


class Kernel:
    """A compiled compute entry point bound to a device.

    Call it with the number of threads and the shader's global parameters by
    name; buffers, scalars and nested dicts (for ``ParameterBlock`` structs)
    are accepted as slangpy accepts them.
    """

    def __init__(self, device: spy.Device, file: str, entry: str, constants: Mapping[str, object]):
        self.device = device
        self.file = file
        self.entry = entry
        self.constants = dict(constants)
        session = _session(device, tuple(sorted((k, _define_value(v)) for k, v in self.constants.items())))
        self.program = session.load_program(file, [entry])
        self._kernel = device.create_compute_kernel(self.program)

    def __call__(self, thread_count: int | tuple[int, int, int], **params) -> None:
        if isinstance(thread_count, int):
            thread_count = (thread_count, 1, 1)
        if min(thread_count) <= 0:
            return
        encoder = _recording.encoders.get(self.device) if hasattr(_recording, "encoders") else None
        if encoder is not None:
            self._kernel.dispatch(thread_count=list(thread_count), vars=params, command_encoder=encoder)
        else:
            self._kernel.dispatch(thread_count=list(thread_count), vars=params)

    def __repr__(self) -> str:
        return f"Kernel({self.file}:{self.entry}, {self.constants})"


_recording = threading.local()


@contextlib.contextmanager
def recording(device: spy.Device):
    """Record the kernels dispatched on ``device`` inside the block into one command buffer,
    submitted once at the end (in dispatch order), instead of one submission per dispatch.

    A training step dispatches ~80 short kernels; submitting each costs host time that the
    GPU spends idle. Inside the block only kernel dispatches may touch the buffers they use:
    uploads, downloads and torch work on those buffers belong before or after it. Nested
    blocks record into the outermost one.
    """
    encoders = _recording.__dict__.setdefault("encoders", {})
    if device in encoders:
        yield
        return
    encoders[device] = device.create_command_encoder()
    try:
        yield
        device.submit_command_buffer(encoders[device].finish())
    finally:
        del encoders[device]


_SESSIONS: "weakref.WeakKeyDictionary[spy.Device, dict]" = weakref.WeakKeyDictionary()
_KERNELS: "weakref.WeakKeyDictionary[spy.Device, dict]" = weakref.WeakKeyDictionary()


def _session(device: spy.Device, defines: tuple[tuple[str, str], ...]) -> spy.SlangSession:
    per_device = _SESSIONS.setdefault(device, {})
    if defines not in per_device:
        options = {"include_paths": [str(slang_dir())], "defines": dict(defines)}
        if device.info.type == spy.DeviceType.cpu:
            # The CPU target's host code at the downstream compiler's highest level: the tiny network's
            # training step ran 2.8x faster and volume caching 4.4x (GPU targets keep their defaults).
            options["optimization"] = spy.SlangOptimizationLevel.maximal
        dump = os.environ.get("NEUMOURS_SLANG_DUMP")
        if dump:  # keep the generated target code (CUDA/PTX/C++) for inspection
            Path(dump).mkdir(parents=True, exist_ok=True)
            options["dump_intermediates"] = True
            options["dump_intermediates_prefix"] = str(Path(dump) / ("_".join(f"{k}{v}" for k, v in defines) + "_"))
        cache = shader_cache_dir(str(device.info.type).rsplit(".", 1)[-1])
        kwargs = {"cache_path": str(cache / "modules")} if cache else {}
        per_device[defines] = device.create_slang_session(spy.SlangCompilerOptions(options), **kwargs)
    return per_device[defines]


def load_kernel(
    device: spy.Device, file: str, entry: str, constants: Mapping[str, object] | None = None
) -> Kernel:
    """Return the compiled kernel ``entry`` of ``slang/<file>`` for ``device``.

    Compiled once per (device, file, entry, constants) and cached, so callers
    can ask for a kernel on every call without recompiling.

    Args:
        device: from :func:`neumours.device.get_device`.
        file: module file name relative to ``slang/``, e.g. ``"encoding.slang"``.
        entry: name of a ``[shader("compute")]`` function in that file.
        constants: compile-time constants (``#define`` name → int/float/bool).
    """
    constants = constants or {}
    per_device = _KERNELS.setdefault(device, {})
    fast_key = (file, entry, tuple(constants.items()))  # this call's order: no sorting on the hot path
    kernel = per_device.get(fast_key)
    if kernel is None:
        key = (file, entry, tuple(sorted((k, _define_value(v)) for k, v in constants.items())))
        kernel = per_device.get(key)
        if kernel is None:
            kernel = per_device[key] = Kernel(device, file, entry, constants)
        per_device[fast_key] = kernel
    return kernel
