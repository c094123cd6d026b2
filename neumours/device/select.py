"""Choosing and creating the slangpy device.

``get_device("auto")`` tries CUDA, Vulkan, Metal and the CPU target in that
order and returns the first that can be created; ``NEUMOURS_DEVICE`` overrides
the kind. Devices are created once per process and kind, then reused, because
every device compiles and caches its own kernels.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import slangpy as spy

from neumours.errors import DeviceUnavailableError

#: Kinds ``get_device`` accepts besides ``"auto"``, in the order ``auto`` tries them.
DEVICE_KINDS = ("cuda", "vulkan", "metal", "cpu")

_DEVICES: dict[str, spy.Device] = {}


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence native stdout/stderr while creating devices.

    slangpy's backends print driver-loading failures and shader-model warnings
    straight to file descriptors 1 and 2; when ``auto`` probes CUDA on a
    machine without it those lines are noise. The exception text still
    reaches the caller.
    """
    try:
        fds = [sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, old in zip(fds, saved):
            os.dup2(old, fd)
            os.close(old)
        os.close(devnull)


def _create(kind: str) -> spy.Device:
    from neumours.device.kernels import shader_cache_dir, slang_dir

    dtype = getattr(spy.DeviceType, kind)
    cache = shader_cache_dir(kind)
    if cache is None:
        return spy.create_device(type=dtype, include_paths=[str(slang_dir())], enable_print=False)
    # What create_device builds, with the device's shader cache added (create_device takes no cache path).
    return spy.Device(type=dtype, compiler_options={"include_paths": [spy.SHADER_PATH, str(slang_dir())]},
                      enable_print=False, shader_cache_path=str(cache / "shaders"))


def describe(device: spy.Device) -> str:
    """One line naming the device kind and adapter, e.g. ``cuda (NVIDIA H100 80GB HBM3)``."""
    info = device.info
    kind = str(info.type).rsplit(".", 1)[-1]
    return f"{kind} ({info.adapter_name})"


def get_device(kind: str = "auto", *, announce: bool = True) -> spy.Device:
    """Return a slangpy device with ``slang/`` on its include path.

    Args:
        kind: ``"auto"``, ``"cuda"``, ``"vulkan"``, ``"metal"`` or ``"cpu"``. The
            environment variable ``NEUMOURS_DEVICE`` overrides it when set.
            ``auto`` picks the first kind that works in :data:`DEVICE_KINDS` order.
        announce: print one line to stderr saying which device ``auto`` chose.

    Raises:
        DeviceUnavailableError: the requested kind cannot be created here (or,
            for ``auto``, none can), with the reason.
    """
    kind = os.environ.get("NEUMOURS_DEVICE", "").strip().lower() or kind.lower()
    if kind != "auto" and kind not in DEVICE_KINDS:
        raise DeviceUnavailableError(
            f"device kind {kind!r} is not one of auto, {', '.join(DEVICE_KINDS)}"
            " (check --device or NEUMOURS_DEVICE)"
        )
    if kind in _DEVICES:
        device = _DEVICES[kind]
        # A CUDA context is current only on the thread that made the device; a caller on another
        # thread (a reused Ray Tune trial process runs each trial in a new thread) needs it made
        # current there, or the first copy fails with CUDA_ERROR_INVALID_CONTEXT. No-op elsewhere.
        device.set_cuda_context_current()
        return device
    if kind != "auto":
        try:
            with _quiet_native_output():
                device = _create(kind)
        except Exception as exc:  # slangpy raises RuntimeError with a native message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeviceUnavailableError(
                f"device {kind!r} is not available on this machine ({reason}); "
                "try --device auto or NEUMOURS_DEVICE=cpu"
            ) from None
        _DEVICES[kind] = device
        return device
    for candidate in DEVICE_KINDS:
        try:
            device = get_device(candidate, announce=False)
        except DeviceUnavailableError:
            continue
        if announce:
            print(f"neumours: using device {describe(device)}", file=sys.stderr)
        _DEVICES["auto"] = device
        return device
    raise DeviceUnavailableError("no compute device could be created (tried cuda, vulkan, metal, cpu)")
