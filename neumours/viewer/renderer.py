"""The 3-D view's frames: camera, render settings, scene of an overlay, and a render-time budget.

A request's frame is rendered at the size asked for unless its estimated render
time exceeds :data:`RENDER_BUDGET_S`: it is then downscaled (aspect kept) to fit,
and the frame says so (``downscaled``, ``requested``). The estimate is seconds
per ray sample (pixels / step), measured on every render but the first of each
scene kind (that one compiles the kernels) and seeded by a small probe frame when
a case opens, so a slow device (the CPU) never spends a minute
on one frame and blocks every other client behind it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import slangpy as spy

from neumours.conventions import MODALITIES, NUM_CLASSES
from neumours.render import Frame, RenderSettings, fit_distance, orbit, render_device
from neumours.render.box import volume_box
from neumours.render.camera import Camera
from neumours.render.transfer import DEFAULT_LABEL_OPACITIES, LabelLUT, ModalityWindow
from neumours.viewer.encode import encode_jpeg
from neumours.viewer.protocol import View

#: Longest a frame may take to render (seconds, estimated); larger requests are downscaled.
RENDER_BUDGET_S = 1.0
#: Side of the probe frame that seeds the estimate.
PROBE_SIZE = (48, 32)


@dataclass(frozen=True)
class ViewSettings:
    """How the 3-D view is rendered (what the page's controls set).

    Attributes:
        modalities: name -> (enabled, weight).
        window: (lo, hi) percentiles of each modality's brain intensities.
        gamma: of every modality window.
        step: ray-march step in box units.
        label_opacity: factor on the default label extinctions.
        overlay: one of :data:`~neumours.viewer.protocol.OVERLAYS`.
        quality: JPEG quality.
        hidden_labels: classes (1..3) the legend hides.
        threshold: the ``probabilities`` overlay shows tumour where its probability
            (1 - p_background) is at least this (:func:`tumour_above`).
    """

    modalities: dict = field(default_factory=lambda: {m: (True, 1.0 / len(MODALITIES)) for m in MODALITIES})
    window: tuple[float, float] = (50.0, 99.5)
    gamma: float = 1.0
    step: float = 0.02
    label_opacity: float = 1.0
    overlay: str = "inr"
    quality: int = 85
    hidden_labels: tuple[int, ...] = ()
    threshold: float = 0.5


def tumour_above(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(K, X, Y, Z) class probabilities with every voxel whose tumour probability 1 - p_0 is below
    ``threshold`` set to pure background (p_0 = 1): the 3-D probability view shows tumour, not the
    softmax's small tumour share of every voxel of the field (air included), which integrated along
    a ray tints the whole frame. Voxels at or above keep their probabilities (colour by class)."""
    out = np.array(probabilities, np.float32, copy=True)
    below = (1.0 - out[0]) < np.float32(threshold)
    out[1:, below] = 0.0
    out[0, below] = 1.0
    return out


def render_settings(percentiles: np.ndarray, settings: ViewSettings) -> RenderSettings:
    """The raymarcher's settings: modality windows from a case's (modalities, 201) percentile grid."""
    lo_i, hi_i = (int(round(p * 2)) for p in settings.window)
    windows = []
    for m, name in enumerate(MODALITIES):
        enabled, weight = settings.modalities.get(name, (True, 0.25))
        lo, hi = float(percentiles[m, lo_i]), float(percentiles[m, max(hi_i, lo_i + 1)])
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0) * 1e-3
        windows.append(ModalityWindow(lo=lo, hi=hi, gamma=settings.gamma, weight=weight, enabled=enabled))
    opacities = np.array(DEFAULT_LABEL_OPACITIES, np.float32) * np.float32(settings.label_opacity)
    for label in settings.hidden_labels:
        if 0 < label < NUM_CLASSES:
            opacities[label] = 0.0
    return RenderSettings(windows=tuple(windows), lut=LabelLUT(opacities=opacities), step=settings.step)


def camera_for(shape, spacing, view: View) -> Camera:
    """The orbit camera of ``view`` around a case's box."""
    half = volume_box(shape, spacing)
    distance = fit_distance(half, view.fov, view.width / view.height) / view.zoom
    return orbit(view.azimuth, view.elevation, distance, target=view.target, fov_y_deg=view.fov,
                 width=view.width, height=view.height)


class FrameRenderer:
    """Frames of the 3-D view on one device, kept within :data:`RENDER_BUDGET_S`.

    Args:
        device: slangpy device.
        budget_s: longest estimated render time of one frame.
    """

    def __init__(self, device: spy.Device, budget_s: float = RENDER_BUDGET_S):
        self.device = device
        self.budget_s = budget_s
        self.seconds_per_sample: float | None = None
        self._compiled: set = set()
        self._frames: dict[tuple[int, int], Frame] = {}

    def fit(self, view: View, step: float) -> View:
        """``view`` downscaled (aspect kept, sides >= 8) so its estimated render time fits the budget."""
        if self.seconds_per_sample is None:
            return view
        estimate = self.seconds_per_sample * view.width * view.height / step
        if estimate <= self.budget_s:
            return view
        factor = math.sqrt(self.budget_s / estimate)
        return replace(view, width=max(8, int(view.width * factor)), height=max(8, int(view.height * factor)))

    def _frame(self, width: int, height: int) -> Frame:
        frame = self._frames.get((width, height))
        if frame is None:
            if len(self._frames) >= 4:
                self._frames.clear()
            frame = self._frames[(width, height)] = Frame.allocate(self.device, width, height)
        return frame

    def render(self, scene, camera_of, view: View, settings: RenderSettings, quality: int,
               kind: str = "") -> tuple[bytes, dict]:
        """One JPEG of ``scene``: (bytes, meta with size, timings, camera, downscaled, requested).

        ``camera_of(view)`` gives the camera of the (possibly downscaled) view; ``kind``
        names the scene's kernels (its first render compiles them and is not measured).
        """
        fitted = self.fit(view, settings.step)
        camera = camera_of(fitted)
        frame = self._frame(fitted.width, fitted.height)
        t0 = time.perf_counter()
        render_device(scene, camera, settings, frame)
        self.device.wait_for_idle()
        t1 = time.perf_counter()
        observed = (t1 - t0) * settings.step / (fitted.width * fitted.height)
        if kind in self._compiled:
            self.seconds_per_sample = observed if self.seconds_per_sample is None else (
                0.5 * self.seconds_per_sample + 0.5 * observed)
        self._compiled.add(kind)
        data, encoder = encode_jpeg(self.device, frame, quality)
        t2 = time.perf_counter()
        return data, {"width": fitted.width, "height": fitted.height, "render_ms": (t1 - t0) * 1e3,
                      "encode_ms": (t2 - t1) * 1e3, "encoder": encoder, "camera": camera.kernel_vectors(),
                      "downscaled": fitted != view, "requested": [view.width, view.height]}
