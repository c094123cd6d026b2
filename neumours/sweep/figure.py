"""``SWEEP/sweep.png``: validation Dice against each swept key, one panel per key.

Every trial with a score is a point at its value of the key (mean over folds,
error bar ± sd over folds; hollow when ASHA stopped it early or it is
unfinished) with a cross per fold, and a line joins the mean over trials of each
value: the key's marginal effect. Grid and choice values are evenly spaced
categories (trials sharing one are spread sideways); uniform and log-uniform
ranges are drawn on their own (log) scale.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neumours.figures import LEGEND_INCHES, save_figure  # noqa: E402
from neumours.sweep.results import TrialRecord  # noqa: E402
from neumours.sweep.settings import Sweep  # noqa: E402
from neumours.sweep.space import Dimension, flat_values  # noqa: E402

FIGURE = "sweep.png"


def _label(value) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_label(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _positions(dim: Dimension, xs: list) -> tuple[list[float], list[str] | None]:
    """x of each trial: the value itself for a range, else the index of its category (then also the labels).

    Trials sharing a category are spread a little sideways so that each stays visible.
    """
    if dim.kind in ("uniform", "loguniform"):
        return [float(x) for x in xs], None
    categories = [_label(v) for v in dim.values]
    index = [categories.index(_label(x)) for x in xs]
    seen: dict[int, int] = {}
    total = {i: index.count(i) for i in set(index)}
    positions = []
    for i in index:
        n, j = total[i], seen.get(i, 0)
        seen[i] = j + 1
        positions.append(i + (0.0 if n == 1 else 0.3 * (j / (n - 1) - 0.5)))
    return positions, categories


def plot_sweep(sweep: Sweep, records: list[TrialRecord], out: str | Path | None = None) -> Path | None:
    """Write the figure; None when no trial has a score yet (nothing to draw)."""
    scored = [r for r in records if r.scores]
    if not scored:
        return None
    dims = sweep.space.dimensions
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.8 + LEGEND_INCHES), squeeze=False,
                             sharey=True)
    for ax, dim in zip(axes[0], dims):
        xs = [flat_values(r.config, sweep.space)[dim.name] for r in scored]
        positions, categories = _positions(dim, xs)
        for n, (r, x) in enumerate(zip(scored, positions)):
            folds = [f["val_dice_mean"] for f in r.folds if f is not None]
            ax.plot([x] * len(folds), folds, "x", color="0.5", markersize=5, zorder=4,
                    label="one fold" if n == 0 else None)
            finished = r.status == "finished"
            ax.errorbar(x, r.scores["val_dice_mean"], yerr=r.scores["val_dice_sd"], fmt="o", capsize=3,
                        color="C0", markerfacecolor="C0" if finished else "white", zorder=3,
                        label="trial: mean ± sd over folds" if n == 0 else None)
        groups = sorted({round(x) if categories else x for x in positions})
        means = [np.mean([r.scores["val_dice_mean"] for r, x in zip(scored, positions)
                          if (round(x) if categories else x) == g]) for g in groups]
        ax.plot(groups, means, "-", color="C1", alpha=0.8, zorder=2, label="mean over trials per value")
        if categories:
            ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 3 else 0)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        elif dim.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(dim.name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation Dice")
    # The key sits under the panels, where it can cover no point or error bar.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{sweep.out.name}: {len(scored)} trials × {len(sweep.folds)} folds "
                 "(hollow: stopped early or unfinished)", fontsize=10)
    fig.tight_layout(rect=(0, LEGEND_INCHES / fig.get_figheight(), 1, 1))
    return save_figure(fig, out or sweep.out / FIGURE, layout=False)
