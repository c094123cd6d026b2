"""The differentiable volume raymarcher (docs/method.md "Rendering"): the renderer library only.

``camera`` (look-at and orbit cameras), ``box`` (the volume's box in world
space), ``transfer`` (windows, transfer function, label look-up table),
``raymarch`` (Slang forward/backward, host and device APIs), ``views`` (orbiting
camera sets, label volumes rendered from them), ``reference`` (the same
integrator in torch: tests and benchmark peer), ``io`` (PNG, GIF, MP4 output and the
label colour key).
It depends only on ``device``, ``kernels`` and the shared modules (``conventions``,
``regions``, ``errors``, ``atomic``), never on ``model``, ``infer`` or ``refine``; the
``neumours render`` command lives in :mod:`neumours.cli.render`, render-loss
refinement in :mod:`neumours.refine`.

The names below are imported on first use, so ``neumours --help`` does not
load slangpy and torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "volume_box": "box",
    "Camera": "camera",
    "fit_distance": "camera",
    "orbit": "camera",
    "MIN_TRANSMITTANCE": "raymarch",
    "ChannelVolume": "raymarch",
    "Frame": "raymarch",
    "Gradients": "raymarch",
    "Scene": "raymarch",
    "render": "raymarch",
    "render_backward": "raymarch",
    "render_backward_device": "raymarch",
    "render_device": "raymarch",
    "LabelLUT": "transfer",
    "ModalityWindow": "transfer",
    "RenderSettings": "transfer",
    "TransferFunction": "transfer",
    "auto_windows": "transfer",
    "orbit_cameras": "views",
    "render_label_views": "views",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neumours.render' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"neumours.render.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
