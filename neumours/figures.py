"""Figures written as PNG: case montages and the paper's Fig. 5-style segmentation comparison.

matplotlib with the Agg backend, so figures are made on machines without a
display; every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matplotlib.patches import Patch  # noqa: E402

from neumours.atomic import atomic_path  # noqa: E402
from neumours.conventions import CLASS_NAMES  # noqa: E402
from neumours.regions import LABEL_COLOURS  # noqa: E402

_MODALITY_TITLES = {"t1n": "T1n", "t1c": "T1c", "t2w": "T2w", "t2f": "FLAIR"}


def tumour_centre(label: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel index of the tumour's centroid, or of the volume's centre without one."""
    if label is not None and label.any():
        return tuple(int(round(c)) for c in np.argwhere(label > 0).mean(axis=0))
    return tuple(int(s) // 2 for s in shape)


def label_overlay(label_slice: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGBA image (H, W, 4) colouring labels 1..3, transparent elsewhere."""
    rgba = np.zeros(label_slice.shape + (4,), np.float32)
    for value, colour in LABEL_COLOURS.items():
        rgba[label_slice == value] = (*colour, alpha)
    return rgba


#: Height of the colour-key strip under a figure's panels, inches (fixed, so a tall figure gets no blank band).
LEGEND_INCHES = 0.35


def add_label_legend(fig) -> None:
    """A colour key of the overlaid labels (NCR, ED, ET) right under the figure's panels."""
    handles = [Patch(facecolor=LABEL_COLOURS[k], edgecolor="none", label=CLASS_NAMES[k]) for k in sorted(LABEL_COLOURS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, LEGEND_INCHES / fig.get_figheight(), 1, 1))


def _window(image: np.ndarray) -> tuple[float, float]:
    brain = image[image != 0]
    if brain.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(brain, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _planes(volume: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """Axial (fixed z) and coronal (fixed y) slices, oriented for display (rows = up)."""
    x, y, z = centre
    return {"axial": np.rot90(volume[:, :, z]), "coronal": np.rot90(volume[:, y, :])}


def case_montage(cases, path, modalities: Sequence[str] = ("t1n", "t1c", "t2w", "t2f")) -> Path:
    """Write :func:`montage_figure` of ``cases`` as the PNG ``path``."""
    return save_figure(montage_figure(cases, modalities), path, dpi=90, layout=False)


def montage_figure(cases, modalities: Sequence[str] = ("t1n", "t1c", "t2w", "t2f")):
    """A montage: per case an axial and a coronal row of the four modalities with the
    label overlay, through the tumour centre, and a colour key of the labels.

    Args:
        cases: objects with ``case_id``, ``images`` (4, X, Y, Z) and ``label`` (X, Y, Z) or None.

    Returns:
        The matplotlib figure (close it, or write it with :func:`save_figure`).
    """
    cases = list(cases)
    rows = 2 * len(cases)
    # Each row as tall as its slices are (axial Y/X, coronal Z/X of a 2.4-inch column), so no row
    # sits in a taller box with blank space above and below it.
    heights = [s[axis] / s[0] for case in cases for s in [case.images.shape[1:]] for axis in (1, 2)]
    fig, axes = plt.subplots(rows, len(modalities), squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(2.4 * len(modalities), 2.4 * sum(heights) + 0.4 + LEGEND_INCHES))
    for c, case in enumerate(cases):
        centre = tumour_centre(case.label, case.images.shape[1:])
        labels = _planes(case.label, centre) if case.label is not None else None
        for m, name in enumerate(modalities):
            lo, hi = _window(case.images[m])
            for r, (plane, image) in enumerate(_planes(case.images[m], centre).items()):
                ax = axes[2 * c + r, m]
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                if labels is not None:
                    ax.imshow(label_overlay(labels[plane]), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0 and r == 0:
                    ax.set_title(_MODALITY_TITLES.get(name, name), fontsize=10)
                if m == 0:
                    ax.set_ylabel(f"{case.case_id}\n{plane}", fontsize=7)
    if any(case.label is not None for case in cases):
        add_label_legend(fig)
    return fig


def save_figure(fig, path, dpi: int = 100, layout: bool = True) -> Path:
    """Lay out (unless ``layout`` is False: already done), write ``fig`` as PNG atomically, close it."""
    if layout:
        fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def segmentation_comparison(cases, path, titles=("ground truth", "INR raw", "INR denoised")) -> Path:
    """Write :func:`comparison_figure` of ``cases`` as the PNG ``path``."""
    return save_figure(comparison_figure(cases, titles), path, dpi=90, layout=False)


def comparison_figure(cases, titles=("ground truth", "INR raw", "INR denoised")):
    """The paper's Fig. 5 layout: per case, FLAIR axial slices through the tumour centre
    with the ground truth, the raw and the denoised INR labels overlaid, and a colour key.

    Args:
        cases: tuples ``(case_id, flair (X, Y, Z), [labels (X, Y, Z), ...])``, one label
            volume per title.

    Returns:
        The matplotlib figure (close it, or write it with :func:`save_figure`).
    """
    cases = list(cases)
    fig, axes = plt.subplots(len(cases), len(titles), figsize=(3.0 * len(titles), 3.0 * len(cases)), squeeze=False)
    for row, (case_id, flair, volumes) in enumerate(cases):
        centre = tumour_centre(volumes[0], flair.shape)
        lo, hi = _window(flair)
        image = _planes(flair, centre)["axial"]
        for col, (title, labels) in enumerate(zip(titles, volumes)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.imshow(label_overlay(_planes(labels, centre)["axial"], alpha=0.55), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(case_id, fontsize=8)
    add_label_legend(fig)
    return fig
