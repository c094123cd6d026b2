"""Transfer functions of the raymarcher: modality windows, MRI density ramp, label look-up table.

How a sample becomes a medium (``slang/raymarch.slang``; ``reference.py`` is the same in torch):

1. Each enabled modality m is sampled trilinearly (s_m), windowed and
   gamma-corrected: ``y_m = ramp((s_m - lo_m) / (hi_m - lo_m)) ** gamma_m``
   with ``ramp(u) = clip(u, 0, 1)`` (derivative 0 at and beyond both ends).
2. Weighted intensity and colour: ``I = sum_m w_m y_m``, ``c = brightness * sum_m w_m y_m tint_m``
   (weights summing to 1 keep I in [0, 1]).
3. MRI extinction: ``sigma_mri = density_scale * ramp((I - density_lo) / (density_hi - density_lo))``,
   per unit length of box space (the longest box axis spans 2).
4. Labels: class probabilities p_k (one-hot from hard labels, nearest voxel;
   or sampled trilinearly from a probability volume) give
   ``sigma_lab = sum_k p_k opacity_k`` and colour ``sum_k p_k opacity_k colour_k / sigma_lab``.
5. The two media add: ``sigma = sigma_mri + sigma_lab``, and the colour is the
   density-weighted mean ``(sigma_mri c + sum_k p_k opacity_k colour_k) / sigma``;
   then eq. 1-3 of docs/method.md composite front to back with step ``step``.

Label "opacities" are therefore extinction coefficients (sigma of eq. 1): a
sample of class k absorbs ``1 - exp(-opacity_k * step)`` of the light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from neumours.conventions import MODALITIES, NUM_CLASSES, NUM_MODALITIES
from neumours.regions import LABEL_COLOURS

#: Default label extinctions (background, NCR, ED, ET): edema as a light veil
#: around a dense core.
DEFAULT_LABEL_OPACITIES = (0.0, 40.0, 6.0, 40.0)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class ModalityWindow:
    """Window, gamma, weight and tint of one MRI modality.

    Attributes:
        lo, hi: intensities mapped to 0 and 1 (hi > lo), in the volume's units.
        gamma: > 0; y = windowed ** gamma.
        weight: w_m of the weighted intensity (any finite value; differentiable).
        enabled: False drops the modality (not sampled, no gradient).
        tint: RGB colour of the modality in the MRI colour.
    """

    lo: float = 0.0
    hi: float = 1.0
    gamma: float = 1.0
    weight: float = 0.25
    enabled: bool = True
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not _finite("hi", self.hi) > _finite("lo", self.lo):
            raise ValueError(f"window needs hi > lo, got lo={self.lo}, hi={self.hi}")
        if not _finite("gamma", self.gamma) > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        _finite("weight", self.weight)
        if len(self.tint) != 3:
            raise ValueError(f"tint must be RGB, got {self.tint}")

    @classmethod
    def from_level_width(cls, level: float, width: float, **kwargs) -> ModalityWindow:
        """The window [level - width / 2, level + width / 2] (radiology convention)."""
        return cls(lo=level - width / 2, hi=level + width / 2, **kwargs)

    @property
    def level(self) -> float:
        return (self.lo + self.hi) / 2

    @property
    def width(self) -> float:
        return self.hi - self.lo


@dataclass(frozen=True)
class TransferFunction:
    """MRI extinction from the weighted intensity I (step 3 of the module docstring).

    Attributes:
        density_scale: extinction at I >= density_hi, per unit of box length.
        density_lo, density_hi: I below density_lo is transparent; the ramp is
            linear up to density_hi.
        brightness: gain of the MRI colour (emission-absorption darkens thin
            media, so a gain > 1 keeps a translucent brain visible).
    """

    density_scale: float = 8.0
    density_lo: float = 0.05
    density_hi: float = 0.6
    brightness: float = 2.0

    def __post_init__(self) -> None:
        if not _finite("density_scale", self.density_scale) >= 0:
            raise ValueError(f"density_scale must be >= 0, got {self.density_scale}")
        if not _finite("density_hi", self.density_hi) > _finite("density_lo", self.density_lo):
            raise ValueError(f"density ramp needs density_hi > density_lo, got {self.density_lo}, {self.density_hi}")
        if not _finite("brightness", self.brightness) >= 0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness}")


def _default_colours() -> np.ndarray:
    colours = np.zeros((NUM_CLASSES, 3), np.float32)
    for k, rgb in LABEL_COLOURS.items():
        colours[k] = rgb
    return colours


@dataclass(frozen=True, eq=False)
class LabelLUT:
    """Colour and extinction of every label class (step 4 of the module docstring).

    Attributes:
        colours: (NUM_CLASSES, 3) RGB in [0, 1], class order of
            :data:`neumours.conventions.CLASS_NAMES`; default from ``LABEL_COLOURS``.
        opacities: (NUM_CLASSES,) extinction coefficients >= 0 (sigma of eq. 1,
            per unit of box length); background 0 by default.
    """

    colours: np.ndarray = field(default_factory=_default_colours)
    opacities: np.ndarray = field(default_factory=lambda: np.array(DEFAULT_LABEL_OPACITIES, np.float32))

    def __post_init__(self) -> None:
        colours = np.asarray(self.colours, np.float32)
        opacities = np.asarray(self.opacities, np.float32)
        if colours.shape != (NUM_CLASSES, 3) or opacities.shape != (NUM_CLASSES,):
            raise ValueError(f"LUT needs colours ({NUM_CLASSES}, 3) and opacities ({NUM_CLASSES},), "
                             f"got {colours.shape} and {opacities.shape}")
        if not (np.isfinite(colours).all() and np.isfinite(opacities).all()) or (opacities < 0).any():
            raise ValueError("LUT colours must be finite and opacities finite and >= 0")
        object.__setattr__(self, "colours", colours)
        object.__setattr__(self, "opacities", opacities)


#: MRI extinction of :func:`labels_visible`: a thinner brain, so labels inside it show through.
OVERLAY_DENSITY_SCALE = 3.0


def labels_visible(settings: RenderSettings, density_scale: float = OVERLAY_DENSITY_SCALE) -> RenderSettings:
    """``settings`` with a thinner MRI medium (``density_scale``, default 3 instead of 8) for pictures of labels.

    At the default density the brain in front of a tumour absorbs most of its
    colour (a render of a case with its labels showed little but a grey brain);
    at 3 the tumour classes read clearly through it while the brain keeps its shape.
    Refinement and the viewer keep their own settings: only pictures use this.
    """
    return replace(settings, transfer=replace(settings.transfer, density_scale=float(density_scale)))


def default_windows() -> tuple[ModalityWindow, ...]:
    """Identity windows [0, 1], all modalities enabled with weight 1 / NUM_MODALITIES."""
    return tuple(ModalityWindow(weight=1.0 / NUM_MODALITIES) for _ in range(NUM_MODALITIES))


@dataclass(frozen=True)
class RenderSettings:
    """Everything about a frame except the camera and the volumes.

    Attributes:
        windows: one :class:`ModalityWindow` per modality, in ``MODALITIES`` order.
        transfer: MRI density ramp and brightness.
        lut: label colours and extinctions.
        step: ray-march step dt in box space (> 0; the longest axis spans 2).
        background: RGB composited behind the volume with the remaining transmittance.
    """

    windows: tuple[ModalityWindow, ...] = field(default_factory=default_windows)
    transfer: TransferFunction = field(default_factory=TransferFunction)
    lut: LabelLUT = field(default_factory=LabelLUT)
    step: float = 0.02
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.windows) != NUM_MODALITIES:
            raise ValueError(f"need {NUM_MODALITIES} modality windows, got {len(self.windows)}")
        if not _finite("step", self.step) > 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if len(self.background) != 3 or not all(math.isfinite(float(b)) for b in self.background):
            raise ValueError(f"background must be a finite RGB triple, got {self.background}")

    @property
    def weights(self) -> np.ndarray:
        """(NUM_MODALITIES,) float32 modality weights (0 where disabled)."""
        return np.array([w.weight if w.enabled else 0.0 for w in self.windows], np.float32)

    def with_modalities(self, weights: Mapping[str, float]) -> RenderSettings:
        """Enable exactly the named modalities (``MODALITIES`` names) with these weights.

        Raises:
            ValueError: an unknown modality name.
        """
        unknown = sorted(set(weights) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modality {', '.join(unknown)} (expected {', '.join(MODALITIES)})")
        windows = tuple(replace(w, enabled=name in weights, weight=float(weights.get(name, w.weight)))
                        for name, w in zip(MODALITIES, self.windows))
        return replace(self, windows=windows)


def auto_windows(volumes: np.ndarray, lo_percentile: float = 50.0, hi_percentile: float = 99.5,
                 **kwargs) -> tuple[ModalityWindow, ...]:
    """Windows from intensity percentiles over each modality's nonzero (brain) voxels.

    The default keeps the darker half of the brain transparent and maps the
    brightest 0.5% to 1, so bright structures (tumour in FLAIR, enhancement in
    T1c) stand out; raw or z-scored volumes both work, since only nonzero
    voxels count.

    Args:
        volumes: (NUM_MODALITIES, X, Y, Z) intensities.
        lo_percentile, hi_percentile: 0 <= lo < hi <= 100.
        kwargs: further :class:`ModalityWindow` fields (gamma, weight, tint, enabled).

    Returns:
        One window per modality.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim != 4 or volumes.shape[0] != NUM_MODALITIES:
        raise ValueError(f"volumes must have shape ({NUM_MODALITIES}, X, Y, Z), got {volumes.shape}")
    if not 0 <= lo_percentile < hi_percentile <= 100:
        raise ValueError(f"need 0 <= lo_percentile < hi_percentile <= 100, got {lo_percentile}, {hi_percentile}")
    kwargs.setdefault("weight", 1.0 / NUM_MODALITIES)
    windows = []
    for channel in volumes:
        values = channel[channel != 0]
        if values.size == 0:
            values = channel.reshape(-1)
        lo, hi = (float(v) for v in np.percentile(values, [lo_percentile, hi_percentile]))
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0) * 1e-3
        windows.append(ModalityWindow(lo=lo, hi=hi, **kwargs))
    return tuple(windows)
