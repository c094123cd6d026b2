"""Brain anatomy of the synthetic phantom: brain mask and tissue classes.

Two sources:

- ``procedural_brain``: an ellipsoidal, head-shaped brain (flatter underneath,
  narrower in front) whose surface is perturbed by smooth noise; a grey-matter
  ribbon under a thin CSF rim, folded by sulcus-like CSF clefts (the zero set of
  a smooth random field, lined with grey matter) that reach into the white
  matter; an interhemispheric fissure; two arched lateral ventricles and two
  deep grey nuclei near the centre. All sizes scale with the brain, so a small
  volume looks like a downsampled brain.
- ``mni_brain``: nilearn's bundled MNI152 grey/white-matter templates resampled
  to the requested shape (optional: needs ``nilearn``).

Smooth random fields are cubic B-spline sums with random coefficients on a
coarse knot grid, evaluated as three small matrix products (a separable
tensor-product basis): the cost of "low-resolution noise zoomed up", but
C2-smooth and with no interpolation pass over the full volume.

Axes are (x, y, z) = (left→right, posterior→anterior, inferior→superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue codes of ``Brain.tissue`` (uint8). The phantom adds tumour codes after these.
BG, CSF, GM, WM, DGM = 0, 1, 2, 3, 4

# Standard deviation of a cubic B-spline sum with unit-normal coefficients, per axis:
# sqrt of the mean over t of sum_j B(t - j)^2 = 151/315.
_SPLINE_STD_1D = (151.0 / 315.0) ** 0.5
# RMS gradient magnitude (per voxel) of a unit-variance field with knot spacing h is ~1.9 / h
# (measured); |f| / gradient approximates the distance to the field's zero set.
_GRAD_PER_KNOT = 1.9


@dataclass
class Brain:
    """A brain model on a voxel grid.

    Attributes:
        mask: (X, Y, Z) bool, the skull-stripped brain.
        tissue: (X, Y, Z) uint8, one of ``BG, CSF, GM, WM, DGM`` (``BG`` exactly outside ``mask``).
        bbox: three slices enclosing ``mask``; later stages work inside it for speed.
    """

    mask: np.ndarray
    tissue: np.ndarray
    bbox: tuple[slice, slice, slice]


@dataclass(frozen=True)
class BrainParams:
    """Per-case anatomy of the phantom family (``neumours.data.phantom_family``).

    Every factor multiplies the classic recipe's value (all ones: the classic
    shape with a ventricle factor of 1); ``procedural_brain`` without params is
    the classic recipe itself, which draws the ventricle factor from its generator.

    Attributes:
        scale: (3,) brain radii factor per axis (head size and shape).
        surface: amplitude factor of the outer surface perturbation.
        fold: knot-spacing factor of the folding field (below 1: finer, more sulci).
        sulcus_depth: depth factor of the sulci.
        ventricles: ventricle size (the classic recipe draws it in [0.8, 1.35]; atrophy needs up to ~2).
    """

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    surface: float = 1.0
    fold: float = 1.0
    sulcus_depth: float = 1.0
    ventricles: float = 1.0


def _bspline_basis(n: int, spacing: float) -> np.ndarray:
    """(n, m) float32 cubic B-spline basis at n voxels for knots ``spacing`` voxels apart."""
    m = int(np.ceil((n - 1) / spacing)) + 4
    x = np.abs(np.arange(n)[:, None] / spacing + 1.0 - np.arange(m)[None, :])
    b = np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
    return b.astype(np.float32)


def smooth_field(rng: np.random.Generator, shape, spacing: float) -> np.ndarray:
    """A smooth Gaussian random field, zero mean and unit variance.

    Args:
        rng: random source (consumed deterministically).
        shape: (X, Y, Z) output shape.
        spacing: knot spacing in voxels; features are about 1-2 spacings wide.

    Returns:
        (X, Y, Z) float32 C-contiguous array.
    """
    bases = [_bspline_basis(int(n), max(float(spacing), 1.0)) for n in shape]
    coef = rng.standard_normal([b.shape[1] for b in bases], dtype=np.float32)
    coef *= np.float32(1.0 / _SPLINE_STD_1D**3)
    out = np.tensordot(bases[0], coef, axes=(1, 0))  # (X, m1, m2)
    out = np.tensordot(out, bases[1], axes=(1, 1))  # (X, m2, Y)
    out = np.tensordot(out, bases[2], axes=(1, 1))  # (X, Y, Z)
    return np.ascontiguousarray(out, dtype=np.float32)


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def procedural_brain(shape, rng: np.random.Generator, params: BrainParams | None = None) -> Brain:
    """Procedural brain filling most of a volume of ``shape`` (see module docstring).

    Args:
        shape: (X, Y, Z) voxel counts (1 mm voxels; the brain scales with the volume).
        rng: random source; the case's shape, folding and ventricle size come from it.
        params: anatomy factors of the phantom family; None is the classic recipe
            (the same random draws, bit for bit, as before the family existed).
    """
    size = np.asarray(shape, dtype=np.float64)
    centre = (size - 1) / 2 + rng.uniform(-0.015, 0.015, 3) * size
    radii = size * np.array([0.37, 0.43, 0.41]) * rng.uniform(0.95, 1.03, 3)
    if params is not None:
        radii = radii * np.asarray(params.scale, dtype=np.float64)
    rm = float(radii.mean())
    surf_amp = 0.035 if params is None else 0.035 * params.surface
    lo = np.maximum(np.floor(centre - radii * (1 + 5 * surf_amp)).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii * (1 + 5 * surf_amp)).astype(int) + 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = tuple(int(b - a) for a, b in zip(lo, hi))
    f32 = np.float32
    x, y, z = (((np.arange(lo[a], hi[a]) - centre[a]) / radii[a]).astype(f32) for a in range(3))
    z = np.where(z < 0, z / f32(0.85), z)  # flatter underneath
    xy = x[:, None] * (1 + f32(0.08) * y[None, :])  # narrower in front
    rho = np.sqrt(xy[:, :, None] ** 2 + (y * y)[None, :, None] + (z * z)[None, None, :])
    d_surf = (1 + f32(surf_amp) * smooth_field(rng, sub, max(3.0, rm / 2.5)) - rho) * f32(rm)
    mask = d_surf > 0

    # Interhemispheric fissure: a CSF slab at x = 0 above a floor that dips down at the poles.
    half_w = max(0.6, 0.008 * rm)
    floor = (0.22 - 0.7 * _smoothstep(np.abs(y), 0.3, 0.55)).astype(f32)
    d_fiss = np.maximum(np.abs(x * f32(radii[0]))[:, None, None] - f32(half_w),
                        (floor[None, :, None] - z[None, None, :]) * f32(radii[2]))
    depth = np.minimum(d_surf, d_fiss)  # ~distance to the outer CSF, in voxels

    # Cortex: CSF rim, GM ribbon, sulci = zero set of a folding field, lined with GM.
    t_csf, t_gm = max(0.8, 0.012 * rm), max(1.2, 0.03 * rm)
    fold_h = max(3.0, 0.11 * rm * (1.0 if params is None else params.fold))
    dist = np.abs(smooth_field(rng, sub, fold_h)) * f32(fold_h / _GRAD_PER_KNOT)
    depth_factor = 0.17 if params is None else 0.17 * params.sulcus_depth
    sulc_depth = f32(depth_factor * rm) * (1 + f32(0.3) * smooth_field(rng, sub, max(3.0, rm / 3)))
    half_sulc = max(0.5, 0.009 * rm)
    csf = (depth < t_csf) | ((dist < half_sulc) & (depth < sulc_depth))
    gm = (depth < t_csf + t_gm) | ((dist < half_sulc + t_gm) & (depth < sulc_depth + t_gm))

    # Lateral ventricles: arched tubes either side of the midline; deep grey nuclei below them.
    vscale = rng.uniform(0.8, 1.35) if params is None else params.ventricles
    wx, wz = max(0.075 * vscale, 1.2 / radii[0]), max(0.11 * vscale, 1.2 / radii[2])
    yv = (y + f32(0.07)) / f32(0.4)
    zc = f32(0.16) - f32(0.6) * (y + f32(0.05)) ** 2
    vnoise = f32(0.25) * smooth_field(rng, sub, max(2.0, rm / 6))
    vent = np.zeros(sub, dtype=bool)
    deep = np.zeros(sub, dtype=bool)
    for side in (-1.0, 1.0):
        ex = ((x - f32(side * 0.11)) / f32(wx)) ** 2
        vent |= (ex[:, None, None] + (yv**4)[None, :, None]
                 + ((z[None, :] - zc[:, None]) / f32(wz))[None] ** 2) < 1 + vnoise
        ex = ((x - f32(side * 0.2)) / f32(0.13)) ** 2
        deep |= (ex[:, None, None] + (((y + f32(0.08)) / f32(0.2)) ** 2)[None, :, None]
                 + (((z + f32(0.1)) / f32(0.14)) ** 2)[None, None, :]) < 1 + vnoise

    tis = np.full(sub, WM, dtype=np.uint8)
    tis[deep] = DGM
    tis[gm] = GM
    tis[csf | vent] = CSF
    tis[~mask] = BG
    full_mask = np.zeros(shape, dtype=bool)
    full_mask[box] = mask
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[box] = tis
    return Brain(full_mask, tissue, _bbox(full_mask))


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    out = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def mni_brain(shape) -> Brain:
    """MNI152 tissue maps (nilearn's bundled templates) resampled to ``shape``.

    Raises:
        ImportError: when nilearn is not installed (``pip install nilearn``).
    """
    try:
        from nilearn import datasets
    except ImportError as exc:  # optional dependency
        raise ImportError("anatomy='mni' needs nilearn: pip install nilearn "
                          "(or use anatomy='procedural')") from exc
    import nibabel as nib
    from scipy import ndimage

    def load(img):
        data = np.asanyarray(nib.as_closest_canonical(img).dataobj, dtype=np.float32)
        return ndimage.zoom(data, np.asarray(shape) / np.asarray(data.shape), order=1,
                            grid_mode=True, mode="nearest")

    mask = load(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    gm = load(datasets.load_mni152_gm_template(resolution=1))
    wm = load(datasets.load_mni152_wm_template(resolution=1))
    csf = np.clip(1 - gm - wm, 0, 1)
    tissue = np.array([CSF, GM, WM], dtype=np.uint8)[np.argmax(np.stack([csf, gm, wm]), axis=0)]
    tissue[~mask] = BG
    return Brain(mask, tissue, _bbox(mask))
