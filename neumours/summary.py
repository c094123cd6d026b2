"""One-screen text summaries of cases (``neumours inspect``, the demo)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from neumours.data import MODALITIES, brain_mask
from neumours.regions import REGIONS, region_volumes_ml


def orientation(affine) -> str:
    """Axis codes of an affine (e.g. ``"RAS"``), or ``"unknown"`` where the affine gives none."""
    try:
        codes = nib.aff2axcodes(affine)
    except Exception:  # noqa: BLE001 - nibabel raises LinAlgError/ValueError for degenerate affines
        return "unknown"
    return "".join(codes) if all(isinstance(c, str) for c in codes) else "unknown"


def case_summary(case) -> dict:
    """Facts about a loaded case: shapes, spacing (the checked geometry's), orientation, intensities,
    region volumes (mL)."""
    mask = brain_mask(case.images)
    intensities = {}
    for name, image in zip(MODALITIES, case.images):
        brain = image[mask]
        intensities[name] = (float(brain.min()), float(np.median(brain)), float(brain.max())) if brain.size else (0.0, 0.0, 0.0)
    return {
        "case_id": case.case_id,
        "shape": tuple(int(s) for s in case.images.shape[1:]),
        "spacing": tuple(float(s) for s in case.spacing),
        "orientation": orientation(case.affine),
        "geometry_problem": getattr(case, "geometry_problem", None),
        "brain_ml": float(mask.sum()) * float(np.prod(case.spacing)) / 1000.0,
        "intensities": intensities,
        "volumes_ml": region_volumes_ml(case.label, case.spacing) if case.label is not None else None,
    }


def format_case_summary(summary: dict) -> str:
    """Human-readable block for one :func:`case_summary`."""
    sx, sy, sz = summary["spacing"]
    lines = [
        f"case {summary['case_id']}",
        f"  shape {'x'.join(map(str, summary['shape']))}  spacing {sx:g} x {sy:g} x {sz:g} mm"
        f"  orientation {summary['orientation']}  affines agree across modalities",
    ]
    if summary.get("geometry_problem"):
        lines.append(f"  geometry NOT checked (--force-geometry): {summary['geometry_problem']}")
    lines += [
        f"  brain {summary['brain_ml']:.1f} mL",
        "  intensity (brain voxels) min / median / max:",
    ]
    for name, (lo, med, hi) in summary["intensities"].items():
        lines.append(f"    {name:4s} {lo:10.1f} {med:10.1f} {hi:10.1f}")
    if summary["volumes_ml"] is None:
        lines.append("  no label volume")
    else:
        vols = "  ".join(f"{name} {summary['volumes_ml'][name]:.2f}" for name in REGIONS)
        lines.append(f"  label volumes (mL): {vols}")
    return "\n".join(lines)
