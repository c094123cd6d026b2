"""Region scores of many cases: :class:`RegionMetric`, the accumulator that evaluation and validation use.

The per-case measures (Dice, HD95 and the empty-region convention) are in
:mod:`neumours.eval.overlap`, the BraTS 2023 lesion-wise ones in
:mod:`neumours.eval.lesionwise`; both are re-exported here.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from neumours.eval.lesionwise import lesion_scores
from neumours.eval.overlap import REGION_NAMES, dice, hd95, region_scores

__all__ = ["REGION_NAMES", "RegionMetric", "dice", "hd95", "lesion_scores", "region_scores"]


class RegionMetric:
    """Stateful per-case region scores, in the manner of MONAI's metrics.

    ``metric(pred, gt, spacing, case_id=..., variant=...)`` scores one case and
    stores the row; :meth:`aggregate` reduces the stored rows; :meth:`reset`
    clears them.

    Example::

        metric = RegionMetric()
        for case in cases:
            metric(pred[case], gt[case], spacing, case_id=case)
        table = metric.aggregate()   # {"dice_WT": {"mean": .., "sd": .., "n": .., "excluded": ..}, ...}
    """

    def __init__(self, regions: Iterable[str] = REGION_NAMES, lesion_wise: bool = True):
        self.regions = tuple(regions)
        self.lesion_wise = lesion_wise
        self.rows: list[dict] = []

    @property
    def kinds(self) -> tuple[str, ...]:
        """Score columns per region: ``dice``, ``hd95`` and, with lesion_wise, ``lw_dice``, ``lw_hd95``."""
        return ("dice", "hd95") + (("lw_dice", "lw_hd95") if self.lesion_wise else ())

    def __call__(self, pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float] | None = None,
                 case_id: str = "", variant: str = "") -> dict:
        """Score one case and store the row: ``{"case_id", "variant", "dice_*", "hd95_*"}`` and, with
        lesion_wise, the BraTS 2023 columns ``lw_dice_*``, ``lw_hd95_*``, ``lw_tp_*``, ``lw_fn_*``, ``lw_fp_*``
        (:mod:`neumours.eval.lesionwise`)."""
        row = {"case_id": case_id, "variant": variant}
        row.update(region_scores(pred_labels, gt_labels, spacing, self.regions))
        if self.lesion_wise:
            row.update(lesion_scores(pred_labels, gt_labels, spacing, self.regions))
        self.rows.append(row)
        return row

    def reset(self) -> None:
        self.rows = []

    def aggregate(self, variant: str | None = None) -> dict[str, dict[str, float]]:
        """Mean and sample standard deviation per column over the stored rows (optionally one variant).

        Non-finite values (HD95 = inf when exactly one side is empty) are left out
        of the mean and counted in ``excluded``.

        Returns:
            column -> ``{"mean", "sd", "n", "excluded"}`` (mean/sd NaN when n is 0;
            sd is 0 for a single case).
        """
        rows = [r for r in self.rows if variant is None or r["variant"] == variant]
        out = {}
        for kind in self.kinds:
            for name in self.regions:
                col = f"{kind}_{name}"
                values = np.array([r[col] for r in rows], dtype=np.float64)
                finite = values[np.isfinite(values)]
                n = len(finite)
                out[col] = {
                    "mean": float(finite.mean()) if n else math.nan,
                    "sd": float(finite.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan),
                    "n": n,
                    "excluded": int(len(values) - n),
                }
        return out
