"""Acquisition of the phantom family: appearance codes to four MRI contrasts, with scanner effects.

Per case and modality (t1n, t1c, t2w, t2f): a contrast table (``CONTRAST``,
intensity relative to white matter per appearance code of
:mod:`neumours.data.phantom_lesions`) jittered per case with every sign kept, the
tumour tissues' contrast scaled towards white matter by an overlap factor;
edema and white-matter lesions fade over the tissue under them; patchy
enhancement and necrosis; tissue texture; partial-volume blur; thick slices
(block-averaged along one axis, as a 2-D acquisition resampled to 1 mm); a
smooth multiplicative bias field; a monotone intensity mapping (gamma); an
offset; a white-matter level (scale); Rician noise; integers >= 1 inside the
brain, 0 outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from neumours.conventions import NUM_MODALITIES
from neumours.data.phantom_anatomy import WM, smooth_field
from neumours.data.phantom_lesions import ADDITIVE, CAVITY, ET, NCR, NET, TUMOUR_CODES
from neumours.data.phantom_ranges import PhantomRanges

# Mean intensity relative to white matter; rows t1n, t1c, t2w, t2f; columns the appearance codes
# BG CSF GM WM DGM | ED ET NCR NET | CAVITY BLOOD VESSEL WMH. The first eight are the classic recipe's.
CONTRAST = np.array([
    [0.0, 0.32, 0.72, 1.00, 0.85, 0.82, 0.80, 0.55, 0.75, 0.30, 1.45, 0.85, 0.90],  # t1n: blood bright
    [0.0, 0.34, 0.74, 1.00, 0.86, 0.84, 1.65, 0.48, 0.80, 0.32, 1.50, 1.90, 0.92],  # t1c: ET, vessels enhance
    [0.0, 3.20, 1.35, 1.00, 1.20, 2.10, 1.60, 2.50, 1.90, 3.00, 1.00, 0.45, 1.60],  # t2w: fluid bright, flow void
    [0.0, 0.35, 1.30, 1.00, 1.15, 1.95, 1.50, 0.85, 1.70, 0.60, 1.30, 0.60, 1.75],  # t2f: cavity set per case
], dtype=np.float32)
_T2F = 3
_MIN_CONTRAST = 0.05  # no tissue goes black inside the brain


@dataclass(frozen=True)
class Acquisition:
    """One case's acquisition, drawn from :class:`PhantomRanges` (arrays are per modality)."""

    contrast: np.ndarray       # (4, NUM_CODES)
    texture: np.ndarray        # tissue-texture amplitude
    pv_sigma: np.ndarray       # voxels
    thick_axis: np.ndarray     # -1: isotropic, else the slice axis
    thickness: np.ndarray      # voxels
    bias: np.ndarray           # sd of the log bias field
    gamma: np.ndarray
    offset: np.ndarray         # relative to white matter
    wm_level: np.ndarray
    noise: np.ndarray          # relative to white matter
    heterogeneity: float       # patchiness of enhancement and necrosis

    def summary(self) -> dict:
        """JSON-friendly per-modality values (for ``PhantomCase.params``)."""
        return {"pv_sigma": self.pv_sigma.round(3).tolist(), "thick_axis": self.thick_axis.tolist(),
                "thickness": self.thickness.round(2).tolist(), "bias": self.bias.round(3).tolist(),
                "gamma": self.gamma.round(3).tolist(), "offset": self.offset.round(3).tolist(),
                "wm_level": self.wm_level.round(1).tolist(), "noise": self.noise.round(4).tolist()}


def draw_acquisition(rng: np.random.Generator, r: PhantomRanges, cavity_flair: float) -> Acquisition:
    """The acquisition of one case (see module docstring)."""
    m = NUM_MODALITIES
    base = CONTRAST.copy()
    base[_T2F, CAVITY] = cavity_flair
    contrast = 1 + (base - 1) * np.exp(rng.normal(0.0, r.contrast_jitter, base.shape)).astype(np.float32)
    overlap = rng.uniform(*r.contrast_overlap, m).astype(np.float32)
    codes = list(TUMOUR_CODES)
    contrast[:, codes] = 1 + (contrast[:, codes] - 1) * overlap[:, None]
    contrast = np.maximum(contrast, np.float32(_MIN_CONTRAST))
    contrast[:, 0] = 0
    thick = rng.random(m) < r.thick_slice_share
    axis = np.where(thick, rng.choice([0, 1, 2, 2, 2], m), -1)  # mostly axial slices (along z)
    return Acquisition(
        contrast=contrast.astype(np.float32), texture=rng.uniform(*r.texture, m),
        pv_sigma=rng.uniform(*r.pv_sigma, m), thick_axis=axis.astype(int),
        thickness=np.where(thick, rng.uniform(*r.slice_thickness, m), 1.0), bias=rng.uniform(*r.bias, m),
        gamma=rng.uniform(*r.gamma, m), offset=rng.uniform(*r.offset, m),
        wm_level=np.exp(rng.uniform(np.log(r.wm_level[0]), np.log(r.wm_level[1]), m)),
        noise=rng.uniform(*r.noise, m), heterogeneity=float(rng.uniform(0.06, 0.25)))


def _thick_slices(img: np.ndarray, axis: int, thickness: float) -> np.ndarray:
    """Average blocks of ``round(thickness)`` voxels along ``axis`` and spread them back, then soften the steps."""
    k = max(int(round(thickness)), 1)
    if k == 1:
        return img
    n = img.shape[axis]
    pad = (-n) % k
    moved = np.moveaxis(img, axis, 0)
    if pad:
        moved = np.concatenate([moved, np.repeat(moved[-1:], pad, axis=0)])
    blocks = moved.reshape(-1, k, *moved.shape[1:]).mean(axis=1)
    back = np.repeat(blocks, k, axis=0)[:n]
    back = ndimage.gaussian_filter1d(back, sigma=k / 3.0, axis=0, mode="nearest")
    return np.ascontiguousarray(np.moveaxis(back, 0, axis), dtype=np.float32)


def render(rng: np.random.Generator, acq: Acquisition, tissue: np.ndarray, mask: np.ndarray, code: np.ndarray,
           weight: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Images (4, *box) float32 of one case's brain box: integers >= 1 in ``mask``, 0 outside.

    Args:
        tissue: anatomy codes (under lesions: the tissue they replaced). code, weight,
            texture: the lesion maps (:class:`neumours.data.phantom_lesions.LesionMaps`).
    """
    f32 = np.float32
    sub = tissue.shape
    tissue_tex = smooth_field(rng, sub, 2.5)
    big = max(sub) / 1.5
    additive = np.isin(code, ADDITIVE)
    patchy = np.isin(code, (ET, NCR, NET))
    under = tissue[additive]
    images = np.zeros((NUM_MODALITIES,) + sub, np.float32)
    for m in range(NUM_MODALITIES):
        c = acq.contrast[m]
        img = c[code]
        img[additive] = c[under] + (c[code[additive]] - c[WM]) * weight[additive]
        amp = np.where(code[patchy] == ET, f32(acq.heterogeneity), f32(0.5 * acq.heterogeneity))
        img[patchy] *= 1 + amp * texture[patchy]
        img *= 1 + f32(acq.texture[m]) * tissue_tex
        img = ndimage.gaussian_filter(img, float(acq.pv_sigma[m]), mode="constant")
        if acq.thick_axis[m] >= 0:
            img = _thick_slices(img, int(acq.thick_axis[m]), float(acq.thickness[m]))
        img *= np.exp(f32(acq.bias[m]) * smooth_field(rng, sub, big))
        s = np.maximum(img[mask], 0) ** f32(acq.gamma[m]) + f32(acq.offset[m])
        level = f32(acq.wm_level[m])
        s = s * level
        n = rng.standard_normal((2, s.size), dtype=np.float32) * f32(acq.noise[m] * acq.wm_level[m])
        s = np.sqrt((s + n[0]) ** 2 + n[1] ** 2)
        images[m][mask] = np.clip(np.rint(s), 1, 32767)
    return images

