"""Training-time augmentation: its settings (``[augment]``) and the per-case draws.

Every micro-batch, :class:`Augmenter` draws one row per pool slot (the layout of
:mod:`neumours.kernels.augment`): a flip, a coordinate transform, and per
modality an intensity scale, shift, gamma, bias field, noise level and whether
the modality is dropped. The kernel ``augment_inputs`` then changes the gathered
coordinates and patches of the points of that case, on the device, before the
forward pass. Labels never change: every transform keeps the label of the voxel.

What the INR's inputs allow (docs/phantom.md "Augmentation"): a **flip** is exact
(the mirrored case seen at the mirrored voxel: coordinate negated, the 3x3x3 patch
mirrored), because the coordinate is the voxel position scaled to [-1, 1] around
the volume centre. A **rotation, scale, translation or warp** moves only the
coordinate fed to the Fourier encoding, not the patch: it loosens the network's
prior on where tumours are (what the encoding of the coordinate learns), it does
not show it rotated anatomy. Intensity transforms act on the normalised patch values.

All transforms are off by default: the trainer then never dispatches the kernel
and never draws from this generator, so a run without augmentation is the run
before augmentation existed, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neumours.kernels import augment as layout
from neumours.schema import Number, Numbers, setting, validate

_BELOW_ONE = Number(ge=0, lt=1)  # a relative change of a factor drawn in [1 / (1 + v), 1 + v]
_PROBABILITY = Number(ge=0, le=1)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of the training points; 0 switches a transform off (all off by default).

    Attributes:
        flip: probability, per case and micro-batch, of mirroring the case along each of ``flip_axes``.
        flip_axes: array axes that may be mirrored (0 is left-right in BraTS' RAS-like layout).
        rotate_deg: largest rotation of the coordinate about each axis, degrees (uniform in +-).
        scale: largest relative change of the coordinate's scale (a factor log-uniform in
            [1 / (1 + scale), 1 + scale]).
        translate: largest shift of the coordinate per axis, in normalised units (the volume is [-1, 1]).
        warp: largest displacement of the smooth sine warp of the coordinate, normalised units.
        intensity_scale: largest relative change of each modality's contrast (a factor log-uniform in
            [1 / (1 + value), 1 + value]).
        intensity_shift: largest shift of each modality's values, in units of its brain standard deviation.
        gamma: largest relative change of the gamma applied to each modality's [lo, hi] range
            (a gamma log-uniform in [1 / (1 + value), 1 + value]).
        bias: amplitude of the log bias field per modality: a quadratic polynomial of the coordinate
            with linear coefficients in +-bias and square and product coefficients in +-bias / 2.
        noise: largest standard deviation of added Gaussian noise, per modality (uniform in [0, noise]),
            in brain standard deviations.
        dropout: probability that a modality is replaced by zeros (its normalised mean); at least one
            modality is always kept.
    """

    flip: float = setting(0.0, _PROBABILITY)
    flip_axes: tuple[int, ...] = setting((0,), Numbers(Number(ge=0, le=2, integer=True), min_length=0, max_length=3))
    rotate_deg: float = setting(0.0, Number(ge=0, le=180))
    scale: float = setting(0.0, _BELOW_ONE)
    translate: float = setting(0.0, Number(ge=0, le=2))
    warp: float = setting(0.0, Number(ge=0, le=2))
    intensity_scale: float = setting(0.0, _BELOW_ONE)
    intensity_shift: float = setting(0.0, Number(ge=0, le=100))
    gamma: float = setting(0.0, _BELOW_ONE)
    bias: float = setting(0.0, Number(ge=0, le=10))
    noise: float = setting(0.0, Number(ge=0, le=100))
    dropout: float = setting(0.0, _PROBABILITY)

    def __post_init__(self):
        validate(self)

    @property
    def flags(self) -> int:
        """The kernel's ``FLAG_*`` groups this configuration switches on (0: no augmentation)."""
        flags = 0
        if self.flip > 0 and self.flip_axes:
            flags |= layout.FLAG_FLIP
        if self.rotate_deg or self.scale or self.translate or self.warp:
            flags |= layout.FLAG_COORDS
        if self.intensity_scale or self.intensity_shift or self.gamma or self.bias:
            flags |= layout.FLAG_INTENSITY
        if self.noise:
            flags |= layout.FLAG_NOISE
        if self.dropout:
            flags |= layout.FLAG_DROPOUT
        return flags

    @classmethod
    def default_on(cls) -> "AugmentConfig":
        """The settings of ``paper_tables.py``'s augmented runs: every transform on, moderately."""
        return cls(flip=0.5, rotate_deg=10.0, scale=0.1, translate=0.1, warp=0.05, intensity_scale=0.25,
                   intensity_shift=0.2, gamma=0.3, bias=0.3, noise=0.1, dropout=0.1)


def _rotations(angles: np.ndarray) -> np.ndarray:
    """(S, 3, 3) rotations about axes 0, 1, 2 by ``angles`` (S, 3) radians, applied in that order."""
    matrix = np.broadcast_to(np.eye(3), (len(angles), 3, 3)).copy()
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        cos, sin = np.cos(angles[:, axis]), np.sin(angles[:, axis])
        r = np.broadcast_to(np.eye(3), matrix.shape).copy()
        r[:, i, i] = r[:, j, j] = cos
        r[:, i, j], r[:, j, i] = -sin, sin
        matrix = r @ matrix
    return matrix


class Augmenter:
    """Draws the augmentation table of every micro-batch from its own generator.

    Args:
        config: the ``[augment]`` settings.
        num_modalities: channels per case.
        seed: seed of this generator (separate from the point sampler's, so the
            points drawn do not depend on the augmentation).
    """

    def __init__(self, config: AugmentConfig, num_modalities: int, seed: int = 0):
        self.config = config
        self.num_modalities = int(num_modalities)
        self.stride = layout.slot_stride(self.num_modalities)
        self.rng = np.random.default_rng([int(seed), 0xA6])

    @property
    def flags(self) -> int:
        return self.config.flags

    def table(self, value_ranges: list[np.ndarray]) -> np.ndarray:
        """One row per slot: (slots, stride) float32, every slot drawn at once (a few
        vector draws per micro-batch, not a loop over cases on the training thread).

        Args:
            value_ranges: per slot, (num_modalities, 2) lowest and highest nonzero
                normalised value of each modality (the range gamma acts on).
        """
        cfg, rng, c = self.config, self.rng, self.num_modalities
        s = len(value_ranges)
        table = np.zeros((s, self.stride), np.float64)
        axes = np.array(cfg.flip_axes, np.int64)
        table[:, layout.FLIP + axes] = rng.random((s, len(axes))) < cfg.flip
        angles = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, (s, 3)))
        zoom = np.exp(rng.uniform(-np.log1p(cfg.scale), np.log1p(cfg.scale), s))
        table[:, layout.AFFINE:layout.AFFINE + 9] = (zoom[:, None, None] * _rotations(angles)).reshape(s, 9)
        table[:, layout.AFFINE + 9:layout.AFFINE + 12] = rng.uniform(-cfg.translate, cfg.translate, (s, 3))
        warp = table[:, layout.WARP:layout.WARP + layout.WARP_TERMS * layout.WARP_STRIDE].reshape(
            s, layout.WARP_TERMS, layout.WARP_STRIDE)
        direction = rng.normal(size=(s, layout.WARP_TERMS, 3))
        direction /= np.maximum(np.linalg.norm(direction, axis=2, keepdims=True), 1e-12)
        frequency = np.pi * rng.uniform(1.0, 2.0, (s, layout.WARP_TERMS, 1))  # one to two half waves over [-1, 1]
        warp[..., 0:3] = direction * frequency
        warp[..., 3] = rng.uniform(0.0, 2 * np.pi, (s, layout.WARP_TERMS))
        warp[..., 4:7] = rng.uniform(-cfg.warp, cfg.warp, (s, layout.WARP_TERMS, 3))
        table[:, layout.WARP:layout.WARP + warp[0].size] = warp.reshape(s, -1)
        keep = rng.random((s, c)) >= cfg.dropout
        none_kept = ~keep.any(axis=1)
        keep[none_kept, rng.integers(c, size=int(none_kept.sum()))] = True
        mods = table[:, layout.SLOT_HEAD:].reshape(s, c, layout.MODALITY_STRIDE)
        log_scale, log_gamma = np.log1p(cfg.intensity_scale), np.log1p(cfg.gamma)
        mods[..., layout.MOD_SCALE] = np.exp(rng.uniform(-log_scale, log_scale, (s, c)))
        mods[..., layout.MOD_SHIFT] = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift, (s, c))
        mods[..., layout.MOD_GAMMA] = np.exp(rng.uniform(-log_gamma, log_gamma, (s, c)))
        ranges = np.asarray(value_ranges, np.float64).reshape(s, c, 2)
        mods[..., layout.MOD_LO], mods[..., layout.MOD_HI] = ranges[..., 0], ranges[..., 1]
        mods[..., layout.MOD_KEEP] = keep
        mods[..., layout.MOD_NOISE] = rng.uniform(0.0, cfg.noise, (s, c))
        bias = mods[..., layout.MOD_BIAS:layout.MOD_BIAS + layout.BIAS_TERMS]
        bias[..., :3] = rng.uniform(-cfg.bias, cfg.bias, (s, c, 3))
        bias[..., 3:] = rng.uniform(-cfg.bias / 2, cfg.bias / 2, (s, c, 6))
        table[:, layout.SLOT_HEAD:] = mods.reshape(s, -1)
        return table.astype(np.float32)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def value_range(images: np.ndarray) -> np.ndarray:
    """(C, 2) lowest and highest nonzero value per modality of normalised (C, X, Y, Z) images ((0, 1) if none)."""
    out = np.tile(np.array([0.0, 1.0], np.float32), (images.shape[0], 1))
    for m, channel in enumerate(images):
        values = channel[channel != 0]
        if values.size:
            out[m] = values.min(), values.max()
    return out
