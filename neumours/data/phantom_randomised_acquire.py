"""Appearance of the randomised phantom family: per-case contrasts and a randomised acquisition.

:func:`draw_appearance` draws one case's appearance from
:class:`~neumours.data.phantom_randomised_ranges.RandomisedRanges` (contrast from one
random stream, acquisition from another, a fixed number of draws each whatever
the ranges, so holding one factor fixed leaves the other's draws as they were);
:func:`render_randomised` turns the lesion maps into four images. Per modality:

1. every appearance code's mean, drawn from its range (SynthSeg's per-label
   Gaussian means), edema and white-matter lesions fading over the tissue under
   them, patchy enhancement and necrosis, a within-tissue spread per code
   (SynthSeg's per-label standard deviation, here a fine smooth field);
2. a gamma curve;
3. resolution: Gaussian blur of ``pv_sigma`` acquired voxels, downsampling to the
   acquired voxel size (thick slices along one axis, coarser in-plane voxels),
   linear upsampling back to the 1 mm grid;
4. k-space: a share of the phase-encoding lines taken after a rigid shift
   (motion), a half-field-of-view ghost along the phase-encoding axis;
5. a smooth multiplicative bias field, an offset, the scanner's scale, Rician
   noise; integers >= 1 inside the brain, 0 outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from neumours.conventions import NUM_MODALITIES
from neumours.data.phantom_acquire import CONTRAST
from neumours.data.phantom_anatomy import CSF, DGM, GM, WM, smooth_field
from neumours.data.phantom_lesions import (ADDITIVE, BLOOD, CAVITY, ED, ET, NCR, NET, NUM_CODES, VESSEL,
                                           WMH)
from neumours.data.phantom_randomised_ranges import RandomisedRanges

_MIN_CONTRAST = 0.02  # no tissue goes black inside the brain

# Mean intensity relative to white matter per modality (rows t1n, t1c, t2w, t2f) and appearance code
# (columns as neumours.data.phantom_acquire.CONTRAST), as (lo, hi): each case draws each entry. The
# ranges keep what identifies a region (enhancing tumour brighter than white matter on t1c, edema
# brighter on t2f and t2w, fluid dark on t1) but let tissues overlap and swap order elsewhere.
_CONTRAST_RANGES = {
    # code: (t1n, t1c, t2w, t2f)
    CSF: ((0.15, 0.5), (0.15, 0.5), (2.2, 4.0), (0.2, 0.6)),
    GM: ((0.55, 0.9), (0.55, 0.9), (1.1, 1.6), (1.05, 1.5)),
    WM: ((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)),
    DGM: ((0.7, 0.98), (0.7, 0.98), (1.0, 1.4), (1.0, 1.3)),
    ED: ((0.6, 0.95), (0.6, 0.98), (1.5, 2.6), (1.4, 2.4)),
    ET: ((0.5, 1.0), (1.25, 2.3), (1.2, 2.0), (1.15, 1.9)),
    NCR: ((0.3, 0.75), (0.25, 0.7), (1.8, 3.2), (0.5, 1.4)),
    NET: ((0.55, 0.95), (0.55, 0.95), (1.3, 2.2), (1.2, 1.9)),
    CAVITY: ((0.15, 0.5), (0.15, 0.5), (2.2, 3.8), (0.25, 1.4)),
    BLOOD: ((1.1, 1.9), (1.1, 1.9), (0.5, 1.5), (0.8, 1.6)),
    VESSEL: ((0.6, 1.1), (1.3, 2.4), (0.3, 0.7), (0.4, 0.9)),
    WMH: ((0.75, 0.98), (0.75, 0.98), (1.3, 2.0), (1.4, 2.1)),
}
#: (4, NUM_CODES, 2) float32: (lo, hi) of every modality's mean per appearance code; background is 0.
CONTRAST_RANGES = np.zeros((4, NUM_CODES, 2), np.float32)
for _code, _per_modality in _CONTRAST_RANGES.items():
    CONTRAST_RANGES[:, _code] = _per_modality
#: FLAIR level of cavity fluid in the fixed table (suppressed water; CONTRAST leaves it to the case).
FIXED_CAVITY_FLAIR = 0.45
#: (4, NUM_CODES) float32: the table a case uses when the contrast factor is fixed (the family's table).
FIXED_CONTRAST = CONTRAST.copy()
FIXED_CONTRAST[3, CAVITY] = FIXED_CAVITY_FLAIR


@dataclass(frozen=True)
class Appearance:
    """One case's appearance (arrays per modality, first axis = t1n, t1c, t2w, t2f)."""

    contrast: np.ndarray      # (4, NUM_CODES) mean relative to white matter
    tissue_sd: np.ndarray     # (4, NUM_CODES) within-tissue spread relative to the mean
    heterogeneity: float      # patchiness of enhancement and necrosis
    gamma: np.ndarray         # (4,)
    spacing: np.ndarray       # (4, 3) acquired voxel size per axis, mm
    slice_axis: np.ndarray    # (4,) the thick-slice axis
    pv_sigma: np.ndarray      # (4,) in acquired voxels
    bias: np.ndarray
    noise: np.ndarray
    ghosting: np.ndarray
    phase_axis: np.ndarray    # (4,) phase-encoding axis (in-plane, not the slice axis)
    motion: np.ndarray        # (4,) share of corrupted k-space lines
    motion_shift: np.ndarray  # (4,) voxels
    wm_level: np.ndarray
    offset: np.ndarray

    def summary(self) -> dict:
        """JSON-friendly values (for ``PhantomCase.params``)."""
        out = {}
        for name, value in vars(self).items():
            out[name] = value.round(4).tolist() if isinstance(value, np.ndarray) else round(float(value), 4)
        return out


def draw_appearance(rng_contrast: np.random.Generator, rng_acq: np.random.Generator,
                    r: RandomisedRanges) -> Appearance:
    """Draw one case's appearance (module docstring); a fixed number of draws from each stream."""
    m = NUM_MODALITIES
    lo, hi = CONTRAST_RANGES[..., 0], CONTRAST_RANGES[..., 1]
    w = np.float32(r.contrast_width)
    a, b = FIXED_CONTRAST + w * (lo - FIXED_CONTRAST), FIXED_CONTRAST + w * (hi - FIXED_CONTRAST)
    contrast = (a + rng_contrast.uniform(size=(m, NUM_CODES)).astype(np.float32) * (b - a)).astype(np.float32)
    tissue_sd = rng_contrast.uniform(*r.tissue_sd, (m, NUM_CODES)).astype(np.float32)
    heterogeneity = float(rng_contrast.uniform(*r.heterogeneity))
    gamma = rng_contrast.uniform(*r.gamma, m)

    slice_axis = rng_acq.choice([0, 1, 2, 2, 2], m)  # mostly axial slices (along z)
    spacing = rng_acq.uniform(*r.resolution, (m, 3))
    spacing[np.arange(m), slice_axis] = rng_acq.uniform(*r.slice_thickness, m)
    in_plane = np.array([[a for a in range(3) if a != s] for s in slice_axis])
    phase_axis = in_plane[np.arange(m), rng_acq.integers(0, 2, m)]
    return Appearance(
        contrast=contrast, tissue_sd=tissue_sd, heterogeneity=heterogeneity, gamma=gamma, spacing=spacing,
        slice_axis=slice_axis, pv_sigma=rng_acq.uniform(*r.pv_sigma, m), bias=rng_acq.uniform(*r.bias, m),
        noise=rng_acq.uniform(*r.noise, m), ghosting=rng_acq.uniform(*r.ghosting, m), phase_axis=phase_axis,
        motion=rng_acq.uniform(*r.motion, m), motion_shift=rng_acq.uniform(*r.motion_shift, m),
        wm_level=np.exp(rng_acq.uniform(np.log(r.wm_level[0]), np.log(r.wm_level[1]), m)),
        offset=rng_acq.uniform(*r.offset, m))


def resample(img: np.ndarray, spacing, pv_sigma: float) -> np.ndarray:
    """Blur by ``pv_sigma`` acquired voxels, sample at ``spacing`` (mm per axis), interpolate back to 1 mm.

    Args:
        img: (X, Y, Z) float32 on the 1 mm grid.
        spacing: (3,) acquired voxel size, >= 1.

    Returns:
        (X, Y, Z) float32.
    """
    spacing = np.asarray(spacing, np.float64)
    img = ndimage.gaussian_filter(img, tuple(pv_sigma * spacing), mode="constant")
    low = np.maximum(np.rint(np.asarray(img.shape) / spacing), 2).astype(int)
    if np.array_equal(low, img.shape):
        return img.astype(np.float32)
    small = ndimage.zoom(img, low / np.asarray(img.shape), order=1, grid_mode=True, mode="nearest")
    back = ndimage.zoom(small, np.asarray(img.shape) / np.asarray(small.shape), order=1, grid_mode=True,
                        mode="nearest")
    return np.ascontiguousarray(back[:img.shape[0], :img.shape[1], :img.shape[2]], dtype=np.float32)


def kspace_artefacts(rng: np.random.Generator, img: np.ndarray, phase_axis: int, motion: float, shift: float,
                     ghosting: float) -> np.ndarray:
    """Motion (a ``motion`` share of the phase-encoding lines shifted by ``shift`` voxels along another
    axis, magnitude image) and a half-field-of-view ghost of amplitude ``ghosting``.

    Draws the same numbers whatever ``motion`` is.
    """
    n = img.shape[phase_axis]
    lines = rng.random(n) < motion
    readout = (phase_axis + 1 + int(rng.integers(0, 2))) % 3
    if lines.any() and shift > 0:
        spectrum = scipy.fft.fftn(img)
        k = np.fft.fftfreq(img.shape[readout]).astype(np.float32)
        ramp = np.exp(-2j * np.pi * k * np.float32(shift)).astype(np.complex64)
        view = [1, 1, 1]
        view[readout] = -1
        moved = spectrum * ramp.reshape(view)
        pick = [1, 1, 1]
        pick[phase_axis] = -1
        spectrum = np.where(lines.reshape(pick), moved, spectrum)
        img = np.abs(scipy.fft.ifftn(spectrum)).astype(np.float32)
    if ghosting > 0:
        img = img + np.float32(ghosting) * np.roll(img, n // 2, axis=phase_axis)
    return img


def render_randomised(rng: np.random.Generator, look: Appearance, tissue: np.ndarray, mask: np.ndarray,
                      code: np.ndarray, weight: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Images (4, *box) float32 of one case's brain box: integers >= 1 in ``mask``, 0 outside.

    Args:
        tissue: anatomy codes (under lesions: the tissue they replaced). code, weight,
            texture: the lesion maps (:class:`neumours.data.phantom_lesions.LesionMaps`).
    """
    f32 = np.float32
    sub = tissue.shape
    big = max(sub) / 1.5
    additive = np.isin(code, ADDITIVE)
    patchy = np.isin(code, (ET, NCR, NET))
    amp = np.where(code[patchy] == ET, f32(look.heterogeneity), f32(0.5 * look.heterogeneity))
    under = tissue[additive]
    images = np.zeros((NUM_MODALITIES,) + sub, np.float32)
    for m in range(NUM_MODALITIES):
        c = np.maximum(look.contrast[m], f32(_MIN_CONTRAST))
        img = c[code]
        img[additive] = c[under] + (c[code[additive]] - c[WM]) * weight[additive]
        img[patchy] *= 1 + amp * texture[patchy]
        img *= 1 + look.tissue_sd[m][code] * smooth_field(rng, sub, 1.0)
        img = np.maximum(img, f32(_MIN_CONTRAST)) ** f32(look.gamma[m])
        img = resample(img, look.spacing[m], float(look.pv_sigma[m]))
        img = kspace_artefacts(rng, img, int(look.phase_axis[m]), float(look.motion[m]),
                               float(look.motion_shift[m]), float(look.ghosting[m]))
        img *= np.exp(f32(look.bias[m]) * smooth_field(rng, sub, big))
        level = f32(look.wm_level[m])
        s = (np.maximum(img[mask], 0) + f32(look.offset[m])) * level
        n = rng.standard_normal((2, s.size), dtype=np.float32) * f32(look.noise[m] * look.wm_level[m])
        s = np.sqrt((s + n[0]) ** 2 + n[1] ** 2)
        images[m][mask] = np.clip(np.rint(s), 1, 32767)
    return images
