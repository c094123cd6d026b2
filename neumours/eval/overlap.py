"""Dice and 95th-percentile Hausdorff distance per BraTS region.

Regions (docs/method.md): NCR={1}, ED={2}, ET={3}, TC={1,3}, WT={1,2,3}.

Dice: 2|P ∩ G| / (|P| + |G|) over the region's voxels.

HD95 (mm), as MONAI's ``compute_hausdorff_distance(percentile=95)``: the surface
of a mask is its voxels with a 6-neighbour outside it (mask XOR its erosion by
the 3-D cross; voxels on the array border count as surface). For every surface
voxel of P the distance to the nearest surface voxel of G is taken, and vice
versa, in mm (``scipy.ndimage.distance_transform_edt`` with ``sampling`` = the
voxel spacing, computed in the bounding box of P ∪ G, which is exact); HD95 is
the larger of the two directed 95th percentiles (linear interpolation, as
``numpy.percentile`` and ``torch.quantile``).

Empty regions (the convention, the same everywhere in Neumours):

* both P and G empty: Dice = 1, HD95 = 0 (perfect agreement: nothing to find,
  nothing found);
* exactly one empty: Dice = 0, HD95 = ``inf`` (no surface to measure to). The
  summary excludes these cases from the HD95 mean and says how many it excluded
  (BraTS's own tool substitutes 373.13 mm, the image diagonal, instead;
  MONAI gives NaN or inf with a warning).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from neumours.regions import REGIONS

#: Region names in report order.
REGION_NAMES = tuple(REGIONS)


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks of the same shape; 1.0 when both are empty, 0.0 when one is."""
    p, g = _masks(pred, gt)
    sp, sg = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    if sp + sg == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / (sp + sg)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance between two binary masks, in mm.

    Args:
        pred, gt: binary masks of the same shape (any number of dimensions).
        spacing: voxel size per axis in mm; default 1.
        percentile: 95 for HD95; 100 gives the Hausdorff distance.

    Returns:
        The distance; 0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    p, g = _masks(pred, gt)
    spacing = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (p.ndim,):
        raise ValueError(f"spacing needs {p.ndim} values, got {tuple(spacing)}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return math.inf
    union = np.nonzero(p | g)
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in union)
    # Exact in the box: every voxel just outside it is background in both masks,
    # as is everything outside the array (border voxels count as surface).
    sp, sg = _surface(p[box]), _surface(g[box])
    to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return float(max(np.percentile(to_g, percentile), np.percentile(to_p, percentile)))


def region_scores(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float] | None = None,
                  regions: Iterable[str] = REGION_NAMES) -> dict[str, float]:
    """Dice and HD95 of every region for two label volumes (values 0..3).

    Returns:
        ``{"dice_NCR": ..., ..., "dice_WT": ..., "hd95_NCR": ..., ..., "hd95_WT": ...}``.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from ground truth shape {gt_labels.shape}")
    regions = list(regions)
    out: dict[str, float] = {}
    masks = {}
    for name in regions:
        lut = np.zeros(256, dtype=bool)
        lut[list(REGIONS[name])] = True
        masks[name] = (lut[pred_labels.astype(np.uint8)], lut[gt_labels.astype(np.uint8)])
    for name in regions:
        out[f"dice_{name}"] = dice(*masks[name])
    for name in regions:
        out[f"hd95_{name}"] = hd95(*masks[name], spacing=spacing)
    return out
