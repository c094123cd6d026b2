"""BraTS 2023 lesion-wise Dice and HD95: every lesion counts once, whatever its size.

The challenge's definition (BraTS 2023 glioma task; docs/evaluation.md), for one
region mask (e.g. WT = labels {1, 2, 3}) of a prediction P and ground truth G:

1. Lesions of G: connected components of G (26-connectivity). Components whose
   dilations touch are one lesion: G is dilated ``dilation`` times (3 for
   glioma) by the 18-neighbour structure (``generate_binary_structure(3, 2)``),
   the dilated mask is split into 26-connected components, and lesion k is the
   set of G's voxels inside dilated component k (G itself is not changed).
2. Lesions of P: connected components of P (26-connectivity), not merged.
3. Matching: a predicted lesion matches a ground-truth lesion when it overlaps
   that lesion dilated ``dilation`` times (same structure). One ground-truth
   lesion is scored against the union of every predicted lesion that matches
   it: Dice and HD95 of that pair. A ground-truth lesion without match (false
   negative) gets Dice 0 and HD95 = ``unmatched_hd95`` (374 mm, roughly the
   diagonal of the 240 x 240 x 155 BraTS grid). A predicted lesion that matches
   no ground-truth lesion is a false positive and adds one more term, Dice 0 and
   HD95 374.
4. Ground-truth lesions of volume <= ``min_volume_mm3`` (50 mm^3) are left out of
   the mean (neither counted as hit nor as miss); predicted lesions matching them
   are not false positives either.
5. Lesion-wise Dice = sum(lesion Dice) / (lesions kept + false positives);
   lesion-wise HD95 likewise with the 374 terms. Nothing to find and nothing
   found (both counts zero): Dice 1, HD95 0.

Differences from the challenge's code, said plainly: HD95 per lesion is
:func:`neumours.eval.overlap.hd95` (percentile over surface voxels, MONAI's
definition), whereas the challenge uses DeepMind's ``surface_distance``
(surface elements weighted by area); the two agree to about a voxel. Volumes
are voxel counts times the voxel volume from ``spacing``, as the challenge does
with the header zooms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from neumours.eval.overlap import dice, hd95
from neumours.regions import REGIONS

#: 26-connectivity for components, the 18-neighbour structure for dilation (as the challenge).
_COMPONENTS = ndimage.generate_binary_structure(3, 3)
_DILATION = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionRules:
    """Parameters of the lesion-wise evaluation; the defaults are BraTS 2023 glioma (BraTS-GLI).

    Attributes:
        dilation: dilation iterations for merging and for matching (GLI, SSA, PED: 3; MEN, MET: 1).
        min_volume_mm3: ground-truth lesions of this volume or less are not scored (GLI: 50; MET: 2).
        unmatched_hd95: HD95 given to a missed or a false-positive lesion, mm.
    """

    dilation: int = 3
    min_volume_mm3: float = 50.0
    unmatched_hd95: float = 374.0


BRATS_GLI_2023 = LesionRules()


@dataclass(frozen=True)
class LesionScore:
    """Lesion-wise result of one region of one case.

    Attributes:
        dice, hd95: lesion-wise Dice and HD95 (mm), false positives and negatives included.
        tp: ground-truth lesions (kept, above the volume limit) matched by a prediction.
        fn: kept ground-truth lesions without a match.
        fp: predicted lesions matching no ground-truth lesion.
        lesions: per kept ground-truth lesion ``(volume_mm3, dice, hd95)``, HD95 374 when missed.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    lesions: tuple[tuple[float, float, float], ...]


def ground_truth_lesions(gt: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Lesion index per voxel (0 outside G) after merging components whose dilations touch.

    Returns:
        (int32 array of G's shape, number of lesions).
    """
    gt = np.asarray(gt, dtype=bool)
    if not gt.any():
        return np.zeros(gt.shape, dtype=np.int32), 0
    grown = ndimage.binary_dilation(gt, structure=_DILATION, iterations=dilation) if dilation > 0 else gt
    grown_cc, n = ndimage.label(grown, structure=_COMPONENTS)
    return np.where(gt, grown_cc, 0).astype(np.int32), int(n)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, s))
                 for i, s in zip(idx, mask.shape))


def lesion_wise(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                rules: LesionRules = BRATS_GLI_2023) -> LesionScore:
    """Lesion-wise Dice and HD95 of two binary 3-D masks of the same shape (module docstring)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if pred.ndim != 3:
        raise ValueError(f"lesion-wise metrics need 3-D masks, got {pred.ndim}-D")
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    voxel_mm3 = float(np.prod(spacing))
    lesions, n_gt = ground_truth_lesions(gt, rules.dilation)
    pred_cc, n_pred = ndimage.label(pred, structure=_COMPONENTS)
    matched: set[int] = set()
    kept: list[tuple[float, float, float]] = []
    tp = fn = 0
    for k in range(1, n_gt + 1):
        lesion = lesions == k
        box = _box(lesion, rules.dilation)
        reach = ndimage.binary_dilation(lesion[box], structure=_DILATION, iterations=rules.dilation) \
            if rules.dilation > 0 else lesion[box]
        ids = np.unique(pred_cc[box][reach])
        ids = ids[ids != 0]
        matched.update(int(i) for i in ids)
        volume = float(np.count_nonzero(lesion)) * voxel_mm3
        if volume <= rules.min_volume_mm3:
            continue
        if len(ids):
            hit = np.isin(pred_cc, ids)
            score = (volume, dice(hit, lesion), hd95(hit, lesion, spacing))
            tp += 1
        else:
            score = (volume, 0.0, math.inf)
            fn += 1
        kept.append((score[0], score[1], rules.unmatched_hd95 if math.isinf(score[2]) else score[2]))
    fp = n_pred - len(matched)
    terms = len(kept) + fp
    if terms == 0:
        return LesionScore(1.0, 0.0, 0, 0, 0, ())
    lw_dice = sum(s[1] for s in kept) / terms
    lw_hd95 = (sum(s[2] for s in kept) + fp * rules.unmatched_hd95) / terms
    return LesionScore(float(lw_dice), float(lw_hd95), tp, fn, fp, tuple(kept))


def lesion_scores(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float] | None = None,
                  regions: Iterable[str] = tuple(REGIONS), rules: LesionRules = BRATS_GLI_2023) -> dict:
    """Lesion-wise scores of every region for two label volumes (values 0..3).

    Returns:
        ``{"lw_dice_<R>", "lw_hd95_<R>", "lw_tp_<R>", "lw_fn_<R>", "lw_fp_<R>"}`` for each region R.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from ground truth shape {gt_labels.shape}")
    out: dict = {}
    for name in regions:
        labels = list(REGIONS[name])
        s = lesion_wise(np.isin(pred_labels, labels), np.isin(gt_labels, labels), spacing, rules)
        out.update({f"lw_dice_{name}": s.dice, f"lw_hd95_{name}": s.hd95,
                    f"lw_tp_{name}": s.tp, f"lw_fn_{name}": s.fn, f"lw_fp_{name}": s.fp})
    return out
