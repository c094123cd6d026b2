"""One case of the phantom family: per-case draws from :class:`PhantomRanges`, then anatomy, lesions, acquisition.

Three independent random streams per case (spawned from ``(seed, index, kind)``):
anatomy, lesions, acquisition. So a different acquisition range leaves the
brain and its lesions as they were, and a pre- and a post-operative case of the
same index are unrelated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neumours.conventions import NUM_MODALITIES
from neumours.data.phantom_acquire import draw_acquisition, render
from neumours.data.phantom_anatomy import Brain, BrainParams, mni_brain, procedural_brain
from neumours.data.phantom_lesions import (LesionMaps, LesionShape, add_treatment_change, add_vessels, add_wm_lesions,
                                           grow_lesion, place, resect)
from neumours.data.phantom_ranges import KINDS, PhantomRanges

_MIN_CORE_RADIUS = 1.5  # voxels: a core smaller than this has no inside to draw


@dataclass
class FamilyCase:
    """What :func:`make_family_case` produced (``neumours.data.phantom.make_case`` wraps it)."""

    images: np.ndarray       # (4, X, Y, Z) float32
    label: np.ndarray        # (X, Y, Z) uint8
    tissue: np.ndarray       # (X, Y, Z) uint8 healthy tissue
    cavity: np.ndarray | None
    appearance: np.ndarray   # (X, Y, Z) uint8 appearance codes
    lesions: int
    params: dict


def _streams(seed: int, index: int, kind: str) -> list[np.random.Generator]:
    seq = np.random.SeedSequence([int(seed), int(index), 1 + KINDS.index(kind)])
    return [np.random.default_rng(s) for s in seq.spawn(3)]


def _anatomy(rng: np.random.Generator, r: PhantomRanges) -> BrainParams:
    return BrainParams(scale=tuple(float(v) for v in rng.uniform(*r.brain_scale, 3)),
                       surface=float(rng.uniform(*r.surface)), fold=float(rng.uniform(*r.fold)),
                       sulcus_depth=float(rng.uniform(*r.sulcus_depth)), ventricles=float(rng.uniform(*r.ventricles)))


def _shapes(rng: np.random.Generator, r: PhantomRanges, brain_voxels: int) -> list[LesionShape]:
    """Sizes and sub-region flags of every lesion, the largest first."""
    multifocal = r.max_lesions > 1 and rng.random() < r.multifocal_share
    n = int(rng.integers(2, r.max_lesions + 1)) if multifocal else 1
    total = rng.uniform(*r.whole_tumour) * brain_voxels
    shares = np.sort(rng.dirichlet(np.full(n, 1.5)))[::-1] if n > 1 else np.ones(1)
    out = []
    for share in shares:
        r_wt = (3 * share * total / (4 * np.pi)) ** (1 / 3)
        r_tc = max(_MIN_CORE_RADIUS, r_wt / rng.uniform(*r.edema_reach))
        out.append(LesionShape(
            r_wt=float(max(r_wt, r_tc + 1.0)), r_tc=float(r_tc), elongation=float(rng.uniform(*r.elongation)),
            roughness=float(rng.uniform(*r.roughness)), lobulation=float(rng.uniform(*r.lobulation)),
            necrotic=bool(rng.random() < r.necrosis_share), enhancing=bool(rng.random() < r.enhancement_share),
            rim=float(rng.uniform(*r.rim)), open_rim=bool(rng.random() < r.open_rim_share),
            solid_label1=float(rng.uniform(*r.solid_label1))))
    return out


def healthy_brain(shape, rng: np.random.Generator, ranges: PhantomRanges, anatomy: str = "procedural"):
    """A case's brain before its lesions: procedural (its parameters drawn from ``ranges``) or the MNI template.

    Returns:
        (brain, its parameters or None for MNI, tissue and mask inside the brain's bounding box,
        healthy :class:`LesionMaps` of that box).
    """
    if anatomy == "procedural":
        params = _anatomy(rng, ranges)
        brain = procedural_brain(shape, rng, params)
    elif anatomy == "mni":
        params = None
        brain = mni_brain(shape)
    else:
        raise ValueError(f"anatomy must be 'procedural' or 'mni', got {anatomy!r}")
    tissue, mask = brain.tissue[brain.bbox], brain.mask[brain.bbox]
    return brain, params, tissue, mask, LesionMaps.healthy(tissue)


def whole_volume(brain: Brain, crop: np.ndarray, dtype) -> np.ndarray:
    """A volume of the brain's grid holding ``crop`` in its bounding box, zero elsewhere."""
    out = np.zeros(brain.mask.shape, dtype)
    out[brain.bbox] = crop
    return out


def make_family_case(shape, seed: int, index: int, kind: str, ranges: PhantomRanges,
                     anatomy: str = "procedural") -> FamilyCase:
    """Generate one case of the family (see the module docstring and docs/phantom.md)."""
    rng_anatomy, rng_lesion, rng_acq = _streams(seed, index, kind)
    brain, brain_params, tissue, mask, maps = healthy_brain(shape, rng_anatomy, ranges, anatomy)
    bb = brain.bbox
    shapes = _shapes(rng_lesion, ranges, int(mask.sum()))
    drawn = _lesions(rng_lesion, ranges, kind, tissue, mask, shapes, maps)
    look = _look_alikes(rng_lesion, ranges, kind, tissue, mask, maps)
    acq = draw_acquisition(rng_acq, ranges, float(rng_acq.uniform(*ranges.cavity_flair)))
    images = np.zeros((NUM_MODALITIES,) + brain.mask.shape, np.float32)
    images[(slice(None),) + bb] = render(rng_acq, acq, tissue, mask, maps.code, maps.weight, maps.texture)
    label, appearance = whole_volume(brain, maps.label, np.uint8), whole_volume(brain, maps.code, np.uint8)
    cavity = whole_volume(brain, maps.cavity, bool) if kind == "post" else None
    params = {"kind": kind, "lesions": len(shapes), "lesion_details": drawn, "look_alikes": look,
              "anatomy": None if brain_params is None else vars(brain_params), "acquisition": acq.summary()}
    return FamilyCase(images, label, brain.tissue, cavity, appearance, len(shapes), params)


def _lesions(rng, r: PhantomRanges, kind: str, tissue, mask, shapes: list[LesionShape], maps: LesionMaps) -> list:
    """Place and draw every lesion (the first is resected in a post-operative case)."""
    taken: list[tuple[np.ndarray, float]] = []
    brain_centre = np.argwhere(mask).mean(axis=0)
    drawn = []
    for i, shape in enumerate(shapes):
        near = None
        if i > 0 and rng.random() < 0.6:  # a satellite near the main lesion, else anywhere
            near = (taken[0][0], taken[0][1] + shape.r_wt * rng.uniform(1.0, 2.0))
        centre = place(rng, tissue, mask, shape.r_wt, bool(rng.random() < r.cortical_share), taken, near)
        if kind == "post" and i == 0:
            info = resect(rng, tissue, mask, centre, shape, cavity_ratio=float(rng.uniform(*r.cavity_ratio)),
                          corridor=bool(rng.random() < r.corridor_share), blood=bool(rng.random() < r.blood_share),
                          residual=bool(rng.random() < r.residual_share),
                          residual_cover=float(rng.uniform(*r.residual_cover)), brain_centre=brain_centre, maps=maps)
        else:
            info = grow_lesion(rng, tissue, mask, centre, shape, maps)
        taken.append((centre, shape.r_wt))
        drawn.append({"centre": [int(c) for c in centre], "r_wt": round(shape.r_wt, 2), "r_tc": round(shape.r_tc, 2),
                      "necrosis": info["necrosis"], "enhancement": info["enhancement"],
                      "resected": kind == "post" and i == 0})
    return drawn


def _look_alikes(rng, r: PhantomRanges, kind: str, tissue, mask, maps: LesionMaps) -> dict:
    """Vessels, white-matter lesions and (post) therapy change, all label 0."""
    vessels = int(rng.integers(r.vessels[0], r.vessels[1] + 1))
    wm_lesions = int(rng.integers(r.wm_lesions[0], r.wm_lesions[1] + 1))
    add_vessels(rng, mask, vessels, maps)
    add_wm_lesions(rng, tissue, wm_lesions, maps)
    treated = 0
    if kind == "post" and rng.random() < r.treatment_share:
        radius = float(np.cbrt(3 * mask.sum() / (4 * np.pi)))
        treated = add_treatment_change(rng, tissue, mask, np.argwhere(mask).mean(axis=0), radius, maps)
    return {"vessels": vessels, "wm_lesions": wm_lesions, "treatment_voxels": treated}

