"""The differentiable raymarcher as autograd functions: a volume -> an image, and the INR -> an image.

``render`` is :func:`neumours.render.raymarch.render_device` forward and
``render_backward_device`` backward: gradients reach the class-probability
volume, the MRI volume, the label look-up table (colours, opacities) and the
modality weights, whichever are given as tensors that require grad.
``render_inr`` is refinement path (b): the INR evaluated at the ray samples
(:class:`neumours.infer.ray_field.DirectRenderer`), no volume in between.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import torch

from neumours.conventions import NUM_CLASSES, NUM_MODALITIES
from neumours.errors import NeumoursError
from neumours.infer.ray_field import DirectRenderer
from neumours.model.inputs import CaseVolumes
from neumours.render.camera import Camera
from neumours.render.raymarch import (LUT_ROW, ChannelVolume, Frame, Gradients, Scene, render_backward_device,
                                      render_device)
from neumours.render.transfer import LabelLUT, RenderSettings
from neumours.torch import exchange
from neumours.torch.inr import INRModule, param_grads, weight_gradients

__all__ = ["render", "render_inr"]


def _with_tensors(settings: RenderSettings, lut_colours, lut_opacities, modality_weights) -> RenderSettings:
    """``settings`` with the values of the given look-up table / weight tensors."""
    if lut_colours is not None or lut_opacities is not None:
        lut = LabelLUT(
            colours=settings.lut.colours if lut_colours is None else lut_colours.detach().cpu().numpy().astype(np.float32),
            opacities=settings.lut.opacities if lut_opacities is None else
            lut_opacities.detach().cpu().numpy().astype(np.float32))
        settings = dataclasses.replace(settings, lut=lut)
    if modality_weights is not None:
        values = modality_weights.detach().cpu().numpy()
        settings = dataclasses.replace(settings, windows=tuple(dataclasses.replace(w, weight=float(v))
                                                               for w, v in zip(settings.windows, values)))
    return settings


class _RenderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, camera: Camera, settings: RenderSettings, spacing, labels, probs, mri, lut_colours,
                lut_opacities, modality_weights):
        dev = exchange.device_for(probs, mri, labels)
        settings = _with_tensors(settings, lut_colours, lut_opacities, modality_weights)
        shape = tuple((probs if probs is not None else mri if mri is not None else labels[None]).shape[1:])
        scene = Scene(
            dev, shape, tuple(spacing),
            mri=None if mri is None else ChannelVolume(exchange.to_buffer(dev, mri), NUM_MODALITIES, shape, False),
            labels=None if labels is None else exchange.to_buffer(dev, labels, np.uint32),
            probabilities=None if probs is None else ChannelVolume(exchange.to_buffer(dev, probs), NUM_CLASSES,
                                                                   shape, False))
        frame = Frame.allocate(dev, camera.width, camera.height)
        exchange.before_kernels(dev)
        render_device(scene, camera, settings, frame)
        image = exchange.from_buffer(dev, frame.image, (camera.height, camera.width, 3))
        ctx.state = (scene, camera, settings, frame)
        ctx.save_for_backward(image)  # on CUDA the image is the frame the backward march starts from
        return image

    @staticmethod
    @exchange.first_order
    def backward(ctx, grad_image: torch.Tensor):
        ctx.saved_tensors  # noqa: B018 - refuses an image modified in place since the forward
        scene, camera, settings, frame = ctx.state
        dev = scene.device
        want = ctx.needs_input_grad
        n = int(np.prod(scene.shape))

        def volume(vol: ChannelVolume | None, need: bool) -> ChannelVolume | None:
            if vol is None or not need:
                return None
            return ChannelVolume(exchange.zeros(dev, vol.channels * n), vol.channels, vol.shape, vol.channels_last)

        grads = Gradients(volume(scene.mri, want[5]), volume(scene.probabilities, want[4]),
                          exchange.zeros(dev, NUM_MODALITIES), exchange.zeros(dev, NUM_CLASSES * LUT_ROW))
        g = exchange.to_buffer(dev, grad_image.contiguous())
        exchange.before_kernels(dev)
        render_backward_device(scene, camera, settings, frame, g, grads)
        out_probs = None if grads.probabilities is None else \
            exchange.from_buffer(dev, grads.probabilities.buffer, (NUM_CLASSES, *scene.shape))
        out_mri = None if grads.mri is None else exchange.from_buffer(dev, grads.mri.buffer, (NUM_MODALITIES, *scene.shape))
        lut = exchange.from_buffer(dev, grads.lut, (NUM_CLASSES, LUT_ROW)).clone()  # small: sliced below
        weights = exchange.from_buffer(dev, grads.weights, (NUM_MODALITIES,))
        return (None, None, None, None, out_probs, out_mri, lut[:, 1:4] if want[6] else None,
                lut[:, 0] if want[7] else None, weights if want[8] else None)


def render(volume: torch.Tensor | None, camera: Camera, settings: RenderSettings | None = None, *, spacing,
           mri: torch.Tensor | None = None, lut_colours: torch.Tensor | None = None,
           lut_opacities: torch.Tensor | None = None, modality_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Render class probabilities (and/or an MRI volume) from ``camera``, differentiably.

    Args:
        volume: (NUM_CLASSES, X, Y, Z) class probabilities (soft labels, trilinear; e.g. :func:`cache`'s
            output), or (X, Y, Z) integer labels (hard, not differentiable), or None (MRI only).
        camera: view and image size. settings: windows, transfer function, look-up table, step,
            background (default :class:`RenderSettings`).
        spacing: (3,) voxel size (sets the box).
        mri: (NUM_MODALITIES, X, Y, Z) normalised intensities, or None.
        lut_colours: (NUM_CLASSES, 3), lut_opacities: (NUM_CLASSES,), modality_weights:
            (NUM_MODALITIES,): tensors in place of those settings, to take their gradients.

    Every ray marches every sample (no empty-space skipping), so every voxel a ray crosses
    gets its gradient. Tensors live on CUDA for the CUDA device, on the host for the CPU device.

    Returns:
        (H, W, 3) float32 image, row 0 at the top.
    """
    settings = settings or RenderSettings()
    labels = probs = None
    if volume is not None and not volume.dtype.is_floating_point:
        labels = volume
        if labels.ndim != 3:
            raise NeumoursError(f"volume: integer labels must be (X, Y, Z), got {tuple(labels.shape)}")
    elif volume is not None:
        probs = volume
    if probs is None and mri is None and labels is None:
        raise NeumoursError("render: give a volume (probabilities or labels) or mri")
    dev = exchange.device_for(probs, mri, labels)
    shape = None
    for name, t, channels in (("volume", probs, NUM_CLASSES), ("mri", mri, NUM_MODALITIES)):
        if t is not None:
            exchange.check(name, t, dev, (channels, None, None, None))
            if shape is not None and tuple(t.shape[1:]) != shape:
                raise NeumoursError(f"{name}: shape {tuple(t.shape[1:])} differs from the volume's {shape}")
            shape = tuple(t.shape[1:])
    for name, t, want in (("lut_colours", lut_colours, (NUM_CLASSES, 3)), ("lut_opacities", lut_opacities, (NUM_CLASSES,)),
                          ("modality_weights", modality_weights, (NUM_MODALITIES,))):
        if t is not None and tuple(t.shape) != want:
            raise NeumoursError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    inputs = (probs, mri, lut_colours, lut_opacities, modality_weights)
    args = (camera, settings, tuple(float(s) for s in spacing), labels)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _RenderFunction.apply(*args, *inputs)
    with torch.no_grad():
        return _RenderFunction.forward(SimpleNamespace(save_for_backward=lambda *t: None), *args, *inputs)


class _DirectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module: INRModule, renderer: DirectRenderer, camera: Camera, weight, stats, *params):
        module.push()
        exchange.before_kernels(module.device)
        view = renderer.view(camera, weight)
        if stats is not None:
            stats["forward_points"] = stats.get("forward_points", 0) + view.samples.total
        ctx.state = (module, renderer, view, stats)
        image = exchange.from_buffer(module.device, view.frame.image, (camera.height, camera.width, 3))
        ctx.save_for_backward(image)
        return image

    @staticmethod
    @exchange.first_order
    def backward(ctx, grad_image: torch.Tensor):
        ctx.saved_tensors  # noqa: B018 - refuses an image modified in place since the forward
        module, renderer, view, stats = ctx.state
        g = exchange.to_buffer(module.device, grad_image.contiguous())
        exchange.before_kernels(module.device)
        count = []
        flat = weight_gradients(module.inr, lambda: count.append(renderer.backward(view, g)))
        if stats is not None:
            stats["forward_points"] = stats.get("forward_points", 0) + count[0]
            stats["backward_points"] = stats.get("backward_points", 0) + count[0]
        return (None,) * 5 + param_grads(module, flat, ctx.needs_input_grad[5:])


def render_inr(inr: INRModule, volumes: CaseVolumes, camera: Camera, settings: RenderSettings | None = None, *,
               spacing, case_index: int = 0, weight: np.ndarray | None = None, chunk_points: int = 1 << 18,
               stats: dict | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """The INR's class probabilities rendered straight from the network at every ray sample (path (b)).

    Args:
        inr: the network; volumes: normalised volumes on the device; case_index: which case.
        camera, settings, spacing: as :func:`render` (the label medium only: no MRI).
        weight: optional (H, W) pixel weights; pixels of weight 0 are not marched (background).
        chunk_points: most samples per INR pass.
        stats: if given, ``forward_points`` / ``backward_points`` (INR evaluations) are added to it.
        max_bytes: largest device buffer the samples may need (default the cache's limit).

    Returns:
        (H, W, 3) float32 image, differentiable w.r.t. the INR's parameters.

    Raises:
        ValueError: the view's samples need a buffer over ``max_bytes``.
    """
    settings = settings or RenderSettings()
    limit = {} if max_bytes is None else {"max_bytes": max_bytes}
    renderer = DirectRenderer(inr.inr, volumes, spacing, settings, case_index, chunk_points, **limit)
    params = inr.ordered_parameters()
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _DirectFunction.apply(inr, renderer, camera, weight, stats, *params)
    with torch.no_grad():
        return _DirectFunction.forward(SimpleNamespace(save_for_backward=lambda *t: None), inr, renderer, camera,
                                       weight, stats)
