"""One case of the randomised phantom family (``difficulty="randomised"``; docs/phantom.md).

The anatomy and the look-alikes are the hard family's
(:mod:`neumours.data.phantom_family`); lesions and the post-operative site are
drawn by the same functions from the morphology and post-operative ranges of
:class:`~neumours.data.phantom_randomised_ranges.RandomisedRanges`, plus two
post-operative variants the family lacks: treatment-effect oedema (label 2)
reaching beyond the tumour's edema, and a solid residual nodule on the cavity
wall. The appearance comes from :mod:`neumours.data.phantom_randomised_acquire`.

Five independent random streams per case (spawned from ``(seed, index, kind)``):
anatomy, lesions, post-operative extras, contrast, acquisition. Holding the
contrast or acquisition factor fixed therefore leaves anatomy and labels as
they were, and a fixed factor changes only the values drawn, not the draws.
Cavity fluid is label 0 (:attr:`FamilyCase.cavity`), labels are 0..3.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from neumours.conventions import NUM_MODALITIES
from neumours.data.phantom_family import FamilyCase, _lesions, _look_alikes, _shapes, healthy_brain, whole_volume
from neumours.data.phantom_lesions import LesionMaps, LesionShape, grow_lesion
from neumours.data.phantom_randomised_acquire import draw_appearance, render_randomised
from neumours.data.phantom_randomised_ranges import FACTOR_FIELDS, FACTORS, FIXED, RandomisedRanges
from neumours.data.phantom_ranges import KINDS, PhantomRanges

#: Stream offset: the randomised family's streams never coincide with the family's of the same seed.
_STREAM_TAG = 10


def fixed_factors(r: RandomisedRanges) -> list[str]:
    """The factors whose every field equals :data:`FIXED`'s (held at the canonical setting)."""
    return [f for f in FACTORS if all(getattr(r, k) == getattr(FIXED, k) for k in FACTOR_FIELDS[f])]


def lesion_ranges(r: RandomisedRanges) -> PhantomRanges:
    """The hard family's ranges with the morphology and post-operative fields of ``r`` (those of the same name)."""
    shared = {f.name for f in dataclasses.fields(PhantomRanges)}
    names = [k for k in FACTOR_FIELDS["morphology"] + FACTOR_FIELDS["postop"] if k in shared]
    return dataclasses.replace(PhantomRanges(), **{k: getattr(r, k) for k in names})


def _streams(seed: int, index: int, kind: str) -> list[np.random.Generator]:
    seq = np.random.SeedSequence([int(seed), int(index), _STREAM_TAG + KINDS.index(kind)])
    return [np.random.default_rng(s) for s in seq.spawn(5)]


def add_nodule(rng: np.random.Generator, tissue: np.ndarray, mask: np.ndarray, radius: float,
               maps: LesionMaps) -> int:
    """A solid residual nodule (enhancing, necrotic inside when large) on the cavity wall; returns its voxels.

    The nodule grows about a point half its radius outside the cavity (:func:`grow_lesion` with a thin edema shell); the
    cavity's voxels keep their fluid (label 0) and codes, so only the part in tissue remains.
    """
    r = max(1.5, float(radius))
    outside = ndimage.distance_transform_edt(~maps.cavity) if maps.cavity.any() else np.zeros(mask.shape)
    depth = max(1.0, 0.5 * r)  # centred half a radius into the wall: most of the nodule lies in tissue
    points = np.argwhere((outside >= depth) & (outside < depth + 1.0) & mask)
    necrotic = bool(rng.random() < 0.5)
    if len(points) == 0:
        return 0
    centre = points[rng.integers(len(points))]
    shape = LesionShape(r_wt=r + 1.0, r_tc=r, elongation=0.15, roughness=0.2, lobulation=2.0,
                        necrotic=necrotic and r >= 3.0, enhancing=True, rim=0.35, open_rim=False, solid_label1=0.0)
    cavity, fluid = maps.cavity.copy(), maps.code[maps.cavity].copy()
    before = maps.label.copy()
    grow_lesion(rng, tissue, mask, centre, shape, maps)
    maps.label[cavity] = 0
    maps.code[cavity] = fluid
    core = (maps.label == 1) | (maps.label == 3)
    return int((core & ~((before == 1) | (before == 3))).sum())


def make_randomised_case(shape, seed: int, index: int, kind: str, ranges: RandomisedRanges,
                         anatomy: str = "procedural") -> FamilyCase:
    """Generate one case of the randomised family (module docstring; docs/phantom.md)."""
    rng_anatomy, rng_lesion, rng_post, rng_contrast, rng_acq = _streams(seed, index, kind)
    family = lesion_ranges(ranges)
    brain, brain_params, tissue, mask, maps = healthy_brain(shape, rng_anatomy, family, anatomy)
    bb = brain.bbox
    shapes = _shapes(rng_lesion, family, int(mask.sum()))
    treated = bool(rng_post.random() < ranges.treatment_edema_share)
    reach = float(rng_post.uniform(*ranges.treatment_edema_reach))
    nodule = bool(rng_post.random() < ranges.nodule_share)
    nodule_size = float(rng_post.uniform(*ranges.nodule_size))
    post = kind == "post"
    if post and treated:  # the resected lesion's edema envelope reaches further (treatment effect)
        shapes[0] = dataclasses.replace(shapes[0], r_wt=shapes[0].r_wt * reach)
    drawn = _lesions(rng_lesion, family, kind, tissue, mask, shapes, maps)
    nodule_voxels = add_nodule(rng_post, tissue, mask, nodule_size * shapes[0].r_tc, maps) if post and nodule else 0
    look = _look_alikes(rng_lesion, family, kind, tissue, mask, maps)
    appearance = draw_appearance(rng_contrast, rng_acq, ranges)
    images = np.zeros((NUM_MODALITIES,) + brain.mask.shape, np.float32)
    images[(slice(None),) + bb] = render_randomised(rng_acq, appearance, tissue, mask, maps.code, maps.weight,
                                                    maps.texture)
    label, codes = whole_volume(brain, maps.label, np.uint8), whole_volume(brain, maps.code, np.uint8)
    cavity = whole_volume(brain, maps.cavity, bool) if post else None
    params = {"kind": kind, "fixed": fixed_factors(ranges), "lesions": len(shapes), "lesion_details": drawn,
              "shapes": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(s).items()}
                         for s in shapes],
              "postop": {"treatment_edema": post and treated, "treatment_edema_reach": round(reach, 4),
                         "nodule": post and nodule, "nodule_size": round(nodule_size, 4),
                         "nodule_voxels": nodule_voxels},
              "look_alikes": look, "anatomy": None if brain_params is None else vars(brain_params),
              "appearance": appearance.summary()}
    return FamilyCase(images, label, brain.tissue, cavity, codes, len(shapes), params)
