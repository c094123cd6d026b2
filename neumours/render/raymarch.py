"""The differentiable raymarcher: host API and device-resident API over ``slang/raymarch_kernels.slang``.

Host API (numpy in, numpy out; tests, scripts, the CLI):

    image = render(device, volumes, spacing, camera, settings, labels=...)        # (H, W, 3)
    grads = render_backward(device, volumes, spacing, camera, settings, grad_image, probabilities=...)

Device API (buffers stay on the device; the viewer, refinement loops, benchmarks):

    scene = Scene.upload(device, spacing, volumes=..., probabilities=...)
    frame = Frame.allocate(device, camera.width, camera.height)
    render_device(scene, camera, settings, frame)
    grads = Gradients.zeros(scene); render_backward_device(scene, camera, settings, frame, grad_image, grads)

Volumes are uploaded channel-last, (X, Y, Z, C), so the modalities (or class
probabilities) of a voxel share a cache line; channel-first buffers made
elsewhere (e.g. a cached probability volume) are accepted as they are via
:class:`ChannelVolume`. The maths is in ``slang/raymarch.slang`` and
``neumours/render/transfer.py``; the kernels are dispatched by
:mod:`neumours.kernels.raymarch`, which also defines the raymarcher's constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.conventions import NUM_CLASSES, NUM_MODALITIES
from neumours.device import download, upload, zeros_buffer
from neumours.kernels import raymarch as kernels
from neumours.kernels.raymarch import (LABELS_HARD, LABELS_NONE, LABELS_SOFT, LUT_ROW, MIN_TRANSMITTANCE,
                                       MODALITY_ROW)
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import Camera
from neumours.render.skipping import OccupiedBox, clip_bounds, empty_is_transparent, occupied_box
from neumours.render.transfer import RenderSettings

__all__ = ["ChannelVolume", "Frame", "Gradients", "LABELS_HARD", "LABELS_NONE", "LABELS_SOFT", "LUT_ROW",
           "MIN_TRANSMITTANCE", "MODALITY_ROW", "Scene", "render", "render_backward", "render_backward_device",
           "render_device", "settings_buffers", "view_params", "clip_params"]


@dataclass
class ChannelVolume:
    """A multi-channel volume in one flat float32 device buffer.

    Attributes:
        buffer: the values.
        channels: C.
        shape: (X, Y, Z).
        channels_last: True for (X, Y, Z, C) order (what :meth:`upload` makes),
            False for channel-first (C, X, Y, Z), the project's volume layout.
    """

    buffer: spy.Buffer
    channels: int
    shape: tuple[int, int, int]
    channels_last: bool = True

    @classmethod
    def upload(cls, device: spy.Device, array: np.ndarray, channels_last: bool = True) -> ChannelVolume:
        """Copy a (C, X, Y, Z) array to the device, reordered to (X, Y, Z, C) if ``channels_last``."""
        array = np.asarray(array, np.float32)
        data = np.moveaxis(array, 0, -1) if channels_last else array
        return cls(upload(device, data), array.shape[0], tuple(int(s) for s in array.shape[1:]), channels_last)

    @classmethod
    def zeros_like(cls, other: ChannelVolume, device: spy.Device) -> ChannelVolume:
        return cls(zeros_buffer(device, other.channels * int(np.prod(other.shape))), other.channels, other.shape,
                   other.channels_last)

    def layout(self) -> dict[str, int]:
        """Strides of the Slang ``Layout`` struct: value index = voxel * voxel_stride + channel * channel_stride."""
        if self.channels_last:
            return {"voxel_stride": self.channels, "channel_stride": 1}
        return {"voxel_stride": 1, "channel_stride": int(np.prod(self.shape))}

    def to_numpy(self) -> np.ndarray:
        """The values as a (C, X, Y, Z) float32 array."""
        if self.channels_last:
            return np.moveaxis(download(self.buffer, (*self.shape, self.channels)), -1, 0).copy()
        return download(self.buffer, (self.channels, *self.shape))


@dataclass
class Scene:
    """What is rendered, on the device: an MRI volume and/or labels or class probabilities.

    Attributes:
        device: the slangpy device holding the buffers.
        shape: (X, Y, Z) of every volume.
        spacing: voxel size along the three axes (sets the box proportions).
        mri: NUM_MODALITIES channels, or None.
        labels: uint32 (X, Y, Z) buffer of class indices (hard labels), or None.
        probabilities: NUM_CLASSES channels (soft labels), or None; at most one
            of ``labels`` and ``probabilities``.
        occupied: inclusive voxel bounds of every non-empty voxel of the volumes
            (:func:`neumours.render.skipping.occupied_box`), or None (unknown: every
            sample is marched). With a box, rays march only samples that can be
            non-empty (empty-space skipping), which leaves every image exactly as
            it is; the owner of the buffers must keep it up to date (e.g. after a
            new label volume).
    """

    device: spy.Device
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    mri: ChannelVolume | None = None
    labels: spy.Buffer | None = None
    probabilities: ChannelVolume | None = None
    occupied: OccupiedBox | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.spacing = tuple(float(s) for s in self.spacing)
        volume_box(self.shape, self.spacing)  # validates both
        if self.labels is not None and self.probabilities is not None:
            raise ValueError("give labels or probabilities, not both")
        volumes = (("mri", self.mri, NUM_MODALITIES), ("probabilities", self.probabilities, NUM_CLASSES))
        for name, vol, channels in volumes:
            if vol is not None and (vol.shape != self.shape or vol.channels != channels):
                raise ValueError(f"{name} volume is {vol.channels} x {vol.shape}, expected {channels} x {self.shape}")

    @classmethod
    def upload(cls, device: spy.Device, spacing, volumes: np.ndarray | None = None, labels: np.ndarray | None = None,
               probabilities: np.ndarray | None = None, skip_empty: bool = True) -> Scene:
        """Check host arrays and copy them to the device (channel-last).

        Args:
            spacing: (3,) voxel size.
            volumes: (NUM_MODALITIES, X, Y, Z) MRI intensities, or None.
            labels: (X, Y, Z) integer labels 0 .. NUM_CLASSES - 1, or None.
            probabilities: (NUM_CLASSES, X, Y, Z) class probabilities, or None.
            skip_empty: find the occupied box (:attr:`occupied`) so that rays skip
                empty space. The images do not change; the backward pass then
                visits only the marched samples, so leave it off where gradients of
                empty voxels matter (a soft probability volume).

        Raises:
            ValueError: no volume at all, shapes that disagree, wrong channel
                counts, NaN/Inf, or label values out of range.
        """
        shapes = {}
        if volumes is not None:
            volumes = _host_volume("volumes", volumes, NUM_MODALITIES)
            shapes["volumes"] = volumes.shape[1:]
        if probabilities is not None:
            probabilities = _host_volume("probabilities", probabilities, NUM_CLASSES)
            shapes["probabilities"] = probabilities.shape[1:]
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 3 or labels.dtype.kind not in "biu":
                raise ValueError(f"labels must be a 3-D integer array, got {labels.dtype} {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                raise ValueError(f"label values must be 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
            shapes["labels"] = labels.shape
        if not shapes:
            raise ValueError("nothing to render: give volumes, labels or probabilities")
        if len(set(shapes.values())) > 1:
            raise ValueError("volume shapes disagree: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        return cls(
            device, next(iter(shapes.values())), spacing,
            mri=ChannelVolume.upload(device, volumes) if volumes is not None else None,
            labels=upload(device, labels, np.uint32) if labels is not None else None,
            probabilities=ChannelVolume.upload(device, probabilities) if probabilities is not None else None,
            occupied=occupied_box(volumes, labels, probabilities) if skip_empty else None,
        )

    @property
    def label_mode(self) -> int:
        if self.labels is not None:
            return LABELS_HARD
        return LABELS_SOFT if self.probabilities is not None else LABELS_NONE


def _host_volume(name: str, array, channels: int) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if array.ndim != 4 or array.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels}, X, Y, Z), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return array


@dataclass
class Frame:
    """Device outputs of :func:`render_device`, inputs of :func:`render_backward_device`.

    Attributes:
        image: (H, W, 3) float32: C_N + T_N * background.
        transmittance: (H, W) float32: T_N, the light that reached the background.
    """

    image: spy.Buffer
    transmittance: spy.Buffer
    width: int
    height: int

    @classmethod
    def allocate(cls, device: spy.Device, width: int, height: int) -> Frame:
        n = int(width) * int(height)
        return cls(zeros_buffer(device, 3 * n), zeros_buffer(device, n), int(width), int(height))

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3), transmittance (H, W))`` as float32 arrays."""
        return (download(self.image, (self.height, self.width, 3)),
                download(self.transmittance, (self.height, self.width)))


@dataclass
class Gradients:
    """Device buffers that :func:`render_backward_device` adds gradients into.

    Attributes:
        mri: like ``scene.mri`` (or None: no MRI-volume gradients are computed).
        probabilities: like ``scene.probabilities`` (or None).
        weights: (NUM_MODALITIES,) dL/d modality weight.
        lut: (NUM_CLASSES, LUT_ROW): dL/d (opacity, r, g, b) per class.
    """

    mri: ChannelVolume | None
    probabilities: ChannelVolume | None
    weights: spy.Buffer
    lut: spy.Buffer

    @classmethod
    def zeros(cls, scene: Scene, mri: bool = True, probabilities: bool = True) -> Gradients:
        """Zeroed gradients for ``scene``; ``mri`` / ``probabilities`` False skip those volumes."""
        dev = scene.device
        mri = mri and scene.mri is not None
        probabilities = probabilities and scene.probabilities is not None
        return cls(
            ChannelVolume.zeros_like(scene.mri, dev) if mri else None,
            ChannelVolume.zeros_like(scene.probabilities, dev) if probabilities else None,
            zeros_buffer(dev, NUM_MODALITIES),
            zeros_buffer(dev, NUM_CLASSES * LUT_ROW),
        )

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Named host gradients: ``weights`` (NUM_MODALITIES,), ``lut_opacities`` (NUM_CLASSES,),
        ``lut_colours`` (NUM_CLASSES, 3), and ``volumes`` (NUM_MODALITIES, X, Y, Z) /
        ``probabilities`` (NUM_CLASSES, X, Y, Z) where computed."""
        lut = download(self.lut, (NUM_CLASSES, LUT_ROW))
        out = {"weights": download(self.weights, (NUM_MODALITIES,)), "lut_opacities": lut[:, 0].copy(),
               "lut_colours": lut[:, 1:4].copy()}
        if self.mri is not None:
            out["volumes"] = self.mri.to_numpy()
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities.to_numpy()
        return out


def _settings_tables(settings: RenderSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.zeros((NUM_MODALITIES, MODALITY_ROW), np.float32)
    for m, w in enumerate(settings.windows):
        table[m, :7] = (w.lo, 1.0 / (w.hi - w.lo), w.gamma, float(w.enabled), *w.tint)
    weights = np.array([w.weight for w in settings.windows], np.float32)
    lut = np.zeros((NUM_CLASSES, LUT_ROW), np.float32)
    lut[:, 0] = settings.lut.opacities
    lut[:, 1:4] = settings.lut.colours
    return table, weights, lut


_TABLE_CACHE: dict = {}


def settings_buffers(device: spy.Device, settings: RenderSettings) -> dict[str, spy.Buffer]:
    """The small per-frame tables on the device, uploaded once per distinct value."""
    arrays = _settings_tables(settings)
    key = (id(device), b"".join(a.tobytes() for a in arrays))
    if key not in _TABLE_CACHE:
        if len(_TABLE_CACHE) > 64:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = {name: upload(device, a) for name, a in zip(("modality_table", "weights", "lut"), arrays)}
    return _TABLE_CACHE[key]


def _uses_mri(scene: Scene, settings: RenderSettings) -> bool:
    return scene.mri is not None and any(w.enabled for w in settings.windows)


def clip_params(scene: Scene, settings: RenderSettings) -> dict[str, list[float]]:
    """The ``clip_lo`` / ``clip_hi`` fields: the scene's clip box where skipping is exact, else the whole box."""
    box = scene.occupied
    if box is not None and not empty_is_transparent(settings, _uses_mri(scene, settings), scene.label_mode != 0):
        box = None
    lo, hi = clip_bounds(scene.shape, scene.spacing, box)
    return {"clip_lo": lo, "clip_hi": hi}


def view_params(shape, spacing, camera: Camera, settings: RenderSettings) -> dict:
    """The ``camera``, ``grid``, ``dt`` and ``background`` fields that every marching kernel reads."""
    half = volume_box(shape, spacing)
    return {
        "camera": camera.kernel_vectors(),
        "grid": {"dims": [int(s) for s in shape], "half": half.tolist(),
                 "to_voxel": to_voxel_scale(shape, half).tolist()},
        "dt": float(settings.step),
        "background": [float(b) for b in settings.background],
    }


def _params(scene: Scene, camera: Camera, settings: RenderSettings, frame: Frame) -> dict:
    if (frame.width, frame.height) != (camera.width, camera.height):
        raise ValueError(f"frame is {frame.width}x{frame.height}, camera {camera.width}x{camera.height}")
    tf = settings.transfer
    params = {
        **view_params(scene.shape, scene.spacing, camera, settings),
        **clip_params(scene, settings),
        "transfer": {"scale": tf.density_scale, "lo": tf.density_lo,
                     "inv_width": 1.0 / (tf.density_hi - tf.density_lo), "brightness": tf.brightness},
        "image": frame.image,
        "transmittance": frame.transmittance,
        **settings_buffers(scene.device, settings),
    }
    if scene.mri is not None:
        params["mri"] = scene.mri.buffer
        params["mri_layout"] = scene.mri.layout()
    if scene.labels is not None:
        params["labels"] = scene.labels
    if scene.probabilities is not None:
        params["probs"] = scene.probabilities.buffer
        params["probs_layout"] = scene.probabilities.layout()
    return params


def render_device(scene: Scene, camera: Camera, settings: RenderSettings, frame: Frame) -> None:
    """Render one frame into ``frame`` (device buffers; nothing is read back).

    Args:
        scene: volumes on the device.
        camera: its width and height must match ``frame``.
        settings: windows, transfer function, look-up table, step, background.
        frame: from :meth:`Frame.allocate`.
    """
    kernels.render_forward(scene.device, _params(scene, camera, settings, frame), camera.width, camera.height,
                           _uses_mri(scene, settings), scene.label_mode)


def render_backward_device(scene: Scene, camera: Camera, settings: RenderSettings, frame: Frame,
                           grad_image: spy.Buffer, grads: Gradients) -> None:
    """Add the gradients of a loss into ``grads``, given dL/dimage.

    ``frame`` must hold the forward pass of the same scene, camera and
    settings (its colour and transmittance seed the backward march).

    Args:
        grad_image: (H, W, 3) float32 dL/dimage.
        grads: from :meth:`Gradients.zeros`; its ``mri`` / ``probabilities``
            being None switches those volume gradients off (compiled out).
    """
    params = _params(scene, camera, settings, frame)
    params.update(grad_image=grad_image, grad_weights=grads.weights, grad_lut=grads.lut)
    if grads.mri is not None:
        params["grad_mri"] = grads.mri.buffer
    if grads.probabilities is not None:
        params["grad_probs"] = grads.probabilities.buffer
    kernels.render_backward(scene.device, params, camera.width, camera.height, _uses_mri(scene, settings),
                            scene.label_mode, grads.mri is not None, grads.probabilities is not None)


def render(device: spy.Device, volumes: np.ndarray | None, spacing, camera: Camera,
           settings: RenderSettings | None = None, labels: np.ndarray | None = None,
           probabilities: np.ndarray | None = None, skip_empty: bool = True) -> np.ndarray:
    """Render a volume (host arrays in, image out).

    Args:
        device: slangpy device (CPU for small images; CUDA for everything else).
        volumes: (NUM_MODALITIES, X, Y, Z) MRI intensities, or None (labels only).
        spacing: (3,) voxel size.
        camera: view and image size.
        settings: default :class:`RenderSettings`.
        labels: (X, Y, Z) integer labels (hard, nearest-neighbour), or
        probabilities: (NUM_CLASSES, X, Y, Z) class probabilities (soft, trilinear).
        skip_empty: march only the samples that can be non-empty (the same image).

    Returns:
        (height, width, 3) float32 image, row 0 at the top (not clipped to [0, 1]).
    """
    settings = settings or RenderSettings()
    scene = Scene.upload(device, spacing, volumes, labels, probabilities, skip_empty=skip_empty)
    frame = Frame.allocate(device, camera.width, camera.height)
    render_device(scene, camera, settings, frame)
    return frame.to_numpy()[0]


def render_backward(device: spy.Device, volumes: np.ndarray | None, spacing, camera: Camera,
                    settings: RenderSettings | None, grad_image: np.ndarray, labels: np.ndarray | None = None,
                    probabilities: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of a loss L(image) given dL/dimage (forward and backward pass).

    Args:
        grad_image: (height, width, 3) dL/dimage.
        Others: as :func:`render`.

    Returns:
        float32 arrays by name: ``volumes`` (NUM_MODALITIES, X, Y, Z) when
        volumes are given, ``probabilities`` (NUM_CLASSES, X, Y, Z) when
        given, ``weights`` (NUM_MODALITIES,), ``lut_colours`` (NUM_CLASSES, 3),
        ``lut_opacities`` (NUM_CLASSES,).
    """
    settings = settings or RenderSettings()
    grad_image = np.asarray(grad_image, np.float32)
    if grad_image.shape != (camera.height, camera.width, 3):
        raise ValueError(f"grad_image must have shape {(camera.height, camera.width, 3)}, got {grad_image.shape}")
    scene = Scene.upload(device, spacing, volumes, labels, probabilities, skip_empty=False)  # every gradient
    frame = Frame.allocate(device, camera.width, camera.height)
    render_device(scene, camera, settings, frame)
    grads = Gradients.zeros(scene)
    render_backward_device(scene, camera, settings, frame, upload(device, grad_image), grads)
    return grads.to_numpy()
