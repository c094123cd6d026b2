"""Lesions of the phantom family: gliomas, resection sites and look-alikes, as labels and appearance codes.

Everything here works inside the brain's bounding box (``Brain.bbox``) on three
maps that :mod:`neumours.data.phantom_acquire` renders into images:

* ``label`` (uint8): BraTS labels 0 background, 1 NCR (necrosis or non-enhancing
  tumour core), 2 ED (edema, infiltration, post-treatment FLAIR change), 3 ET;
* ``code`` (uint8): what each voxel looks like: the anatomy codes of
  :mod:`neumours.data.phantom_anatomy`, then :data:`ED` ... :data:`WMH`;
* ``weight`` (float32 in [0, 1]): how strongly an additive code (edema, white-matter
  hyperintensity) shows over the tissue under it; ``texture`` (float32, unit
  variance) makes enhancement and necrosis patchy.

A glioma (:func:`grow_lesion`) is an edema envelope that spreads through white
matter, spares CSF and is held back by cortex, around a tumour core; the core is
an enhancing rim around necrosis (the rim closed or open on one side), solid
enhancement, or non-enhancing tumour (label 1 as in BraTS since 2021). A
post-operative site (:func:`resect`) replaces the core by a fluid-filled cavity
(label 0), often joined to the brain surface by a surgical corridor, with blood
products on its wall, residual enhancement on part of the wall, rarely a
necrotic residual nodule, and FLAIR change (label 2) around it. Look-alikes
(:func:`add_vessels`, :func:`add_wm_lesions`, :func:`add_treatment_change`) are
label 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from neumours.data.phantom_anatomy import CSF, GM, WM, smooth_field

# Appearance codes after the anatomy codes (BG, CSF, GM, WM, DGM = 0..4).
ED, ET, NCR, NET, CAVITY, BLOOD, VESSEL, WMH = 5, 6, 7, 8, 9, 10, 11, 12
#: Number of appearance codes (columns of the contrast table).
NUM_CODES = 13
#: Codes whose contrast adds to the tissue under them, scaled by ``weight``.
ADDITIVE = (ED, WMH)
#: Codes of tumour tissue (their contrast to white matter is scaled by the case's overlap factor).
TUMOUR_CODES = (ED, ET, NCR, NET)


@dataclass
class LesionMaps:
    """The maps of one case inside the brain box (see module docstring); all share one shape."""

    label: np.ndarray
    code: np.ndarray
    weight: np.ndarray
    texture: np.ndarray
    cavity: np.ndarray  # bool, resection cavity and corridor (label 0)

    @classmethod
    def healthy(cls, tissue: np.ndarray) -> "LesionMaps":
        shape = tissue.shape
        return cls(np.zeros(shape, np.uint8), tissue.copy(), np.ones(shape, np.float32),
                   np.zeros(shape, np.float32), np.zeros(shape, bool))


@dataclass(frozen=True)
class LesionShape:
    """How one glioma is drawn (sizes in voxels; see PhantomRanges for the meaning of each)."""

    r_wt: float
    r_tc: float
    elongation: float
    roughness: float
    lobulation: float
    necrotic: bool
    enhancing: bool
    rim: float
    open_rim: bool
    solid_label1: float


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q


def _box(centre, half: int, limit: tuple[slice, slice, slice] | tuple[int, int, int]):
    """Three slices of half-width ``half`` about ``centre``, clipped to ``limit`` (a shape)."""
    return tuple(slice(max(int(round(c)) - half, 0), min(int(round(c)) + half + 1, n)) for c, n in zip(centre, limit))


class _Frame:
    """Ellipsoidal radius about points of a box, in a lesion's rotated, stretched frame."""

    def __init__(self, box, centre, rot: np.ndarray, axes: np.ndarray):
        self.shape = tuple(s.stop - s.start for s in box)
        self.d = [(np.arange(s.start, s.stop) - c).astype(np.float32) for s, c in zip(box, centre)]
        self.rot, self.axes = rot.astype(np.float32), axes.astype(np.float32)

    def radius(self, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
        dd = [self.d[a] - np.float32(offset[a]) for a in range(3)]
        q2 = np.zeros(self.shape, np.float32)
        for k in range(3):
            r = self.rot[k]
            qk = r[0] * dd[0][:, None, None] + r[1] * dd[1][None, :, None] + r[2] * dd[2][None, None, :]
            q2 += (qk / self.axes[k]) ** 2
        return np.sqrt(q2)


def _axis_views(frame: _Frame) -> list[np.ndarray]:
    """The frame's offsets from the centre per axis, shaped to broadcast over its box."""
    return [frame.d[a].reshape([-1 if b == a else 1 for b in range(3)]) for a in range(3)]


def _quantile_mask(field: np.ndarray, where: np.ndarray, share: float) -> np.ndarray:
    """``where`` voxels whose ``field`` lies in the top ``share`` of ``field[where]`` (smooth patches)."""
    if share <= 0 or not where.any():
        return np.zeros_like(where)
    if share >= 1:
        return where.copy()
    return where & (field > np.quantile(field[where], 1.0 - share))


def place(rng: np.random.Generator, tissue: np.ndarray, mask: np.ndarray, radius: float, cortical: bool,
          taken: list[tuple[np.ndarray, float]], near: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """A lesion centre (3,) int in white matter whose ball of ``radius`` lies in the brain.

    Scores up to 60 candidates on a subsample of the ball: inside the brain, mostly white
    matter (deep) or with a fifth to a half of grey matter (``cortical``), clear of the
    ``taken`` lesions (centre, radius); ``near`` = (centre, distance) asks for a satellite
    at about that distance.
    """
    wm = np.flatnonzero(tissue == WM)
    if wm.size == 0:
        wm = np.flatnonzero(mask)
    n = int(np.ceil(1.1 * radius))
    offs = rng.uniform(-1, 1, (3, 600)) * n
    offs = np.rint(offs[:, (offs**2).sum(axis=0) <= (1.1 * radius) ** 2 + 1]).astype(int)
    shape = np.asarray(tissue.shape)
    best, best_score = None, -np.inf
    for _ in range(60):
        p = np.array(np.unravel_index(wm[rng.integers(wm.size)], tissue.shape))
        pts = p[:, None] + offs
        ok = np.all((pts >= 0) & (pts < shape[:, None]), axis=0)
        inside = ok.mean() * (mask[tuple(pts[:, ok])].mean() if ok.any() else 0.0)
        tis = tissue[tuple(pts[:, ok])] if ok.any() else np.zeros(1)
        gm = float((tis == GM).mean())
        score = 2.0 * inside + (1.0 - abs(gm - 0.3) * 2 if cortical else 0.5 * float((tis == WM).mean()))
        for c, r in taken:
            gap = float(np.linalg.norm(p - c)) - (r + radius)
            score -= 0.0 if gap > 0 else 3.0 + min(-gap / max(radius, 1.0), 3.0)
        if near is not None:
            score -= abs(float(np.linalg.norm(p - near[0])) - near[1]) / max(near[1], 1.0)
        if score > best_score:
            best, best_score = p, score
    return best


def grow_lesion(rng: np.random.Generator, tissue: np.ndarray, mask: np.ndarray, centre: np.ndarray,
                shape: LesionShape, maps: LesionMaps) -> dict:
    """Draw one glioma about ``centre`` into ``maps`` (core labels override edema already there).

    Returns:
        what was drawn: ``{"necrosis": bool, "enhancement": bool, "box": slices}``.
    """
    rot = _rotation(rng)
    axes = np.exp(rng.normal(0.0, shape.elongation, 3))
    axes /= np.prod(axes) ** (1 / 3)
    half = int(np.ceil(1.45 * shape.r_wt * axes.max())) + 2
    box = _box(centre, half, tissue.shape)
    frame = _Frame(box, centre, rot, axes)
    tis, inb = tissue[box], mask[box]
    sub = frame.shape
    n_wt = smooth_field(rng, sub, max(2.5, shape.r_wt / shape.lobulation))
    n_tc = smooth_field(rng, sub, max(2.0, shape.r_tc / shape.lobulation))
    texture = smooth_field(rng, sub, max(1.5, shape.r_tc / 3))
    f32 = np.float32
    phi_wt = frame.radius() / (f32(shape.r_wt) * np.maximum(1 + f32(shape.roughness) * n_wt, f32(0.3)))
    phi_wt *= np.where(tis == GM, f32(1.35), f32(1.0))  # cortex holds edema back
    edema = (phi_wt < 1) & inb & (tis != CSF)
    offset = rng.normal(0.0, 0.12 * max(shape.r_wt - shape.r_tc, 0.0), 3)
    phi_tc = frame.radius(offset) / (f32(shape.r_tc) * np.maximum(1 + f32(0.8 * shape.roughness) * n_tc, f32(0.3)))
    core = (phi_tc < 1) & inb
    if not core.any():
        core = (phi_tc <= phi_tc[inb].min()) & inb if inb.any() else core
    label1 = np.zeros(sub, bool)
    et = np.zeros(sub, bool)
    necrotic = False
    if shape.enhancing:
        if shape.necrotic:
            depth = ndimage.distance_transform_edt(np.pad(core, 1))[1:-1, 1:-1, 1:-1]
            rim = np.maximum(f32(max(1.0, shape.rim * shape.r_tc)) * (1 + f32(0.35) * texture), f32(1.0))
            label1 = core & (depth > rim)
            if shape.open_rim and label1.any():
                u = rng.normal(size=3)
                u /= np.linalg.norm(u)
                d = _axis_views(frame)
                cosine = sum(d[a] * f32(u[a]) for a in range(3)) / np.maximum(
                    np.sqrt(sum(x * x for x in d)), f32(1e-3))
                opening = core & (cosine > f32(np.cos(np.deg2rad(rng.uniform(25, 60)))))
                label1 |= opening & ndimage.binary_dilation(label1, iterations=int(np.ceil(rim.max())) + 1)
            necrotic = bool(label1.any())
        et = core & ~label1
    else:
        label1 = core
    comps, _ = ndimage.label(edema | core)
    edema &= np.isin(comps, np.unique(comps[core]))  # no edema islands cut off from the core
    lab = np.zeros(sub, np.uint8)
    lab[edema] = 2
    if not edema[~core].any():  # keep an edema ring even around a tiny envelope
        lab[ndimage.binary_dilation(core) & inb & (tis != CSF)] = 2
    lab[et] = 3
    lab[label1] = 1
    code = np.full(sub, ED, np.uint8)
    code[et] = ET
    solid = shape.solid_label1 if shape.enhancing else max(shape.solid_label1, 0.7)
    net = _quantile_mask(texture, label1, solid)
    code[label1] = NCR
    code[net] = NET
    weight = f32(0.35) + f32(0.65) * np.clip((1 - phi_wt) / f32(0.4), 0, 1)
    _paste(maps, box, lab, code, weight, texture)
    return {"necrosis": necrotic, "enhancement": bool(et.any()), "box": box}


def _paste(maps: LesionMaps, box, lab: np.ndarray, code: np.ndarray, weight: np.ndarray, texture) -> None:
    """Write a lesion's maps where it has labels; edema never overwrites a tumour core already there."""
    current = maps.label[box]
    take = (lab > 0) & ((lab != 2) | (current == 0))
    current[take] = lab[take]
    maps.code[box][take] = code[take]
    maps.weight[box][take] = weight[take]
    if texture is not None:
        maps.texture[box][take] = texture[take]


def _exit_length(mask: np.ndarray, start: np.ndarray, direction: np.ndarray) -> float:
    """Distance in voxels from ``start`` along ``direction`` to the first voxel outside ``mask``."""
    shape = np.asarray(mask.shape)
    for t in range(1, int(shape.max()) * 2):
        p = np.rint(start + t * direction).astype(int)
        if np.any(p < 0) or np.any(p >= shape) or not mask[tuple(p)]:
            return float(t)
    return float(shape.max())


def resect(rng: np.random.Generator, tissue: np.ndarray, mask: np.ndarray, centre: np.ndarray,
           shape: LesionShape, cavity_ratio: float, corridor: bool, blood: bool, residual: bool,
           residual_cover: float, brain_centre: np.ndarray, maps: LesionMaps) -> dict:
    """A post-operative site: the glioma of ``shape`` at ``centre`` after resection.

    The cavity (radius ``cavity_ratio`` x the core's) and the corridor to the surface are
    label 0 with the fluid code; blood products (``blood``) line part of the wall; residual
    enhancement (``residual``) covers ``residual_cover`` of a 1-3 voxel wall shell, with a
    necrotic residual nodule when ``shape.necrotic``; the rest of the envelope is FLAIR
    change (label 2), kept only where joined to the cavity.

    Returns:
        ``{"necrosis": bool, "enhancement": bool, "box": slices, "cavity_voxels": int}``.
    """
    rot = _rotation(rng)
    axes = np.exp(rng.normal(0.0, shape.elongation, 3))
    axes /= np.prod(axes) ** (1 / 3)
    half = int(np.ceil(1.45 * shape.r_wt * axes.max())) + 2
    u = centre - brain_centre
    u = u / np.linalg.norm(u) if np.linalg.norm(u) > 1e-6 else rng.normal(size=3)
    u = u / np.linalg.norm(u)
    length = _exit_length(mask, centre.astype(np.float64), u) + 2.0 if corridor else 0.0
    r_cav = max(1.5, cavity_ratio * shape.r_tc)
    r_cor = max(1.0, rng.uniform(0.25, 0.45) * r_cav)
    end = centre + length * u
    lo = np.minimum(np.minimum(centre - half, end - r_cor - 2), centre + half)
    hi = np.maximum(np.maximum(centre + half, end + r_cor + 2), centre - half)
    box = tuple(slice(max(int(np.floor(a)), 0), min(int(np.ceil(b)) + 1, n)) for a, b, n in zip(lo, hi, tissue.shape))
    frame = _Frame(box, centre, rot, axes)
    tis, inb = tissue[box], mask[box]
    sub = frame.shape
    f32 = np.float32
    n_wt = smooth_field(rng, sub, max(2.5, shape.r_wt / shape.lobulation))
    n_cav = smooth_field(rng, sub, max(2.0, r_cav / shape.lobulation))
    texture = smooth_field(rng, sub, max(1.5, shape.r_tc / 3))
    cover = smooth_field(rng, sub, max(1.5, r_cav / 2))
    phi_wt = frame.radius() / (f32(shape.r_wt) * np.maximum(1 + f32(shape.roughness) * n_wt, f32(0.3)))
    phi_wt *= np.where(tis == GM, f32(1.35), f32(1.0))
    envelope = (phi_wt < 1) & inb & (tis != CSF)
    cavity = (frame.radius() / (f32(r_cav) * np.maximum(1 + f32(0.5 * shape.roughness) * n_cav, f32(0.4))) < 1) & inb
    if corridor:  # distance of every voxel to the segment centre -> end
        d = _axis_views(frame)
        along = np.clip(sum(d[a] * f32(u[a]) for a in range(3)), 0, f32(length))
        dist2 = sum((d[a] - along * f32(u[a])) ** 2 for a in range(3))
        cavity |= (dist2 < f32(r_cor * r_cor)) & inb
    if not cavity.any():
        cavity = (frame.radius() <= 1.0) & inb
    width = int(np.clip(round(shape.rim * shape.r_tc), 1, 3))
    shell = ndimage.binary_dilation(cavity, iterations=width) & ~cavity & inb
    et = _quantile_mask(cover, shell, residual_cover) if residual else np.zeros(sub, bool)
    label1 = np.zeros(sub, bool)
    if residual and shape.necrotic and shell.any():  # a necrotic residual nodule on the wall
        wall = np.argwhere(shell)
        p = wall[rng.integers(len(wall))]
        r_nod = max(2.5, rng.uniform(0.35, 0.5) * shape.r_tc)
        nodule = frame.radius(p + np.array([x[0] for x in frame.d]))  # about the wall point
        nodule = (nodule < f32(r_nod)) & inb & ~cavity
        depth = ndimage.distance_transform_edt(np.pad(nodule, 1))[1:-1, 1:-1, 1:-1]
        label1 = nodule & (depth > max(1.0, shape.rim * r_nod))
        et |= nodule & ~label1
    gliosis = ndimage.binary_dilation(cavity, iterations=width + 1) & inb & ~cavity & (tis != CSF)
    edema = (envelope | gliosis) & ~cavity & ~et & ~label1
    comps, _ = ndimage.label(edema | et | label1 | cavity)
    edema &= np.isin(comps, np.unique(comps[cavity]))
    lab = np.zeros(sub, np.uint8)
    lab[edema] = 2
    lab[et] = 3
    lab[label1] = 1
    code = np.full(sub, ED, np.uint8)
    code[et] = ET
    code[label1] = NCR
    weight = f32(0.35) + f32(0.65) * np.clip((1 - phi_wt) / f32(0.4), 0, 1)
    weight[gliosis & ~envelope] = f32(0.6)
    _paste(maps, box, lab, code, weight, texture)
    fluid = cavity & (maps.label[box] == 0)
    maps.code[box][fluid] = CAVITY
    maps.cavity[box] |= fluid
    if blood:
        wall = fluid & ~ndimage.binary_erosion(fluid, iterations=2)
        maps.code[box][_quantile_mask(texture, wall, rng.uniform(0.2, 0.6))] = BLOOD
    return {"necrosis": bool(label1.any()), "enhancement": bool(et.any()), "box": box,
            "cavity_voxels": int(fluid.sum())}


def add_vessels(rng: np.random.Generator, mask: np.ndarray, count: int, maps: LesionMaps) -> None:
    """``count`` enhancing vessels: smooth random curves 0.6-1.3 voxels in radius, label 0."""
    inside = np.flatnonzero(mask)
    if count <= 0 or inside.size == 0:
        return
    shape = np.asarray(mask.shape)
    size = float(shape.max())
    for _ in range(count):
        p = np.array(np.unravel_index(inside[rng.integers(inside.size)], mask.shape), np.float64)
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        radius = rng.uniform(0.6, 1.3)
        r = int(np.ceil(radius))
        offs = np.argwhere(np.ones((2 * r + 1,) * 3, bool)) - r
        offs = offs[(offs**2).sum(axis=1) <= radius * radius + 0.25]
        points = []
        for _ in range(int(rng.uniform(0.2, 0.5) * size)):
            v = v + rng.normal(0.0, 0.25, 3)
            v /= np.linalg.norm(v)
            p = p + v
            points.append(np.rint(p).astype(int))
        pts = (np.array(points)[:, None, :] + offs[None]).reshape(-1, 3)
        pts = pts[np.all((pts >= 0) & (pts < shape), axis=1)]
        idx = tuple(pts.T)
        ok = mask[idx] & (maps.label[idx] == 0) & ~maps.cavity[idx]
        maps.code[tuple(pts[ok].T)] = VESSEL


def add_wm_lesions(rng: np.random.Generator, tissue: np.ndarray, count: int, maps: LesionMaps) -> None:
    """``count`` small FLAIR-bright white-matter lesions (1-3 voxels in radius) away from the tumour, label 0."""
    wm = np.flatnonzero((tissue == WM) & (maps.label == 0) & ~maps.cavity)
    for _ in range(max(count, 0)):
        if wm.size == 0:
            return
        c = np.array(np.unravel_index(wm[rng.integers(wm.size)], tissue.shape))
        radius = rng.uniform(1.0, 3.0)
        box = _box(c, int(np.ceil(radius)) + 1, tissue.shape)
        d2 = sum(((np.arange(s.start, s.stop) - ci) ** 2).reshape([-1 if b == a else 1 for b in range(3)])
                 for a, (s, ci) in enumerate(zip(box, c)))
        blob = (d2 <= radius * radius) & (tissue[box] == WM) & (maps.label[box] == 0) & ~maps.cavity[box]
        maps.code[box][blob] = WMH
        maps.weight[box][blob] = np.float32(rng.uniform(0.6, 1.0))


def add_treatment_change(rng: np.random.Generator, tissue: np.ndarray, mask: np.ndarray, brain_centre,
                         brain_radius: float, maps: LesionMaps) -> int:
    """Therapy-related white-matter FLAIR change around the ventricles (label 0, faint); returns its voxels."""
    sub = tissue.shape
    field = smooth_field(rng, sub, max(3.0, brain_radius / 5))
    d2 = sum(((np.arange(n) - c) ** 2).reshape([-1 if b == a else 1 for b in range(3)]).astype(np.float32)
             for a, (n, c) in enumerate(zip(sub, brain_centre)))
    central = d2 < np.float32((0.55 * brain_radius) ** 2)
    region = central & (tissue == WM) & (maps.label == 0) & ~maps.cavity
    region &= field > special.ndtri(1 - rng.uniform(0.2, 0.5))
    maps.code[region] = WMH
    maps.weight[region] = np.float32(rng.uniform(0.25, 0.6))
    return int(region.sum())
