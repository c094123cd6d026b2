"""Voxel geometry of a NIfTI file: checked once, then the one source of voxel spacing.

Volumes in mL, HD95 in mm, the renderer's box and super-resolution grids all
need the voxel size. It comes from one place, :func:`voxel_spacing` (the
column norms of the voxel-to-world affine, which is what viewers use to place
voxels), and only after :func:`geometry_problem` found nothing wrong with the
header:

* the spatial ``pixdim`` entries (as stored in the file, before nibabel's
  read-time fixes, which silently turn 0 into 1 and -2 into 2) must be finite
  and > 0, and agree with the affine's voxel size to 0.1 %;
* the affine must be finite, with last row (0, 0, 0, 1), and non-singular;
* its direction cosines must be orthonormal (a rotation, possibly with a
  flip): a shear has no voxel size or orientation that other tools agree on
  (ITK, and so SimpleITK and nnU-Net, refuses such files outright).

A flip (negative determinant, e.g. LAS or LPS storage) is normal and accepted.

``force_geometry`` (``--force-geometry`` on the commands) skips the checks for
files whose geometry is known to be wrong but whose voxels are fine (e.g.
exports that lost their header). Such a case keeps the file's own header and
affine in every output; where the affine holds NaN or Inf, an axis-aligned
affine at the origin with 1 mm voxels replaces it, and where the affine gives
no usable voxel size (zero or negative), 1 mm is assumed, so mL, mm³ and HD95
are only as meaningful as that assumption. :attr:`Geometry.problem` says what was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Largest deviation of the direction cosines from orthonormality (R^T R - I, any entry).
SHEAR_TOLERANCE = 1e-3
#: Largest relative difference between ``pixdim`` and the affine's column norms.
SPACING_RTOL = 1e-3
#: Smallest |det| of the direction cosines: below it the affine is treated as singular.
SINGULAR_TOLERANCE = 1e-6
#: Voxel size assumed (mm) where a forced geometry gives none.
ASSUMED_SPACING = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """The checked geometry of one file.

    Attributes:
        affine: (4, 4) float64 voxel -> world (RAS+ mm) transform, as nibabel gives it.
        spacing: voxel size in mm along the three array axes (:func:`voxel_spacing`).
        problem: None when the header passed every check; otherwise what is
            wrong with it (only with ``force_geometry``).
    """

    affine: np.ndarray
    spacing: tuple[float, float, float]
    problem: str | None = None


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm per array axis: the norms of the affine's first three columns.

    The one function behind every mm quantity (mL, mm³, HD95, render boxes).
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    with np.errstate(all="ignore"):
        return tuple(float(s) for s in np.sqrt((linear * linear).sum(axis=0)))  # type: ignore[return-value]


def _format(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def geometry_problem(pixdim: Sequence[float], affine: np.ndarray) -> str | None:
    """What is wrong with a header's geometry, or None.

    Args:
        pixdim: the raw spatial ``pixdim`` entries (pixdim[1..3]) as stored in the file.
        affine: the (4, 4) affine nibabel derives from the header (sform, qform or pixdim).
    """
    pixdim = [float(p) for p in pixdim]
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        return f"voxel spacing (pixdim) {_format(pixdim)} must be finite and > 0"
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return "the affine (sform/qform) holds NaN or Inf"
    if not np.allclose(affine[3], (0, 0, 0, 1)):
        return f"the affine's last row is {_format(affine[3])}, not (0, 0, 0, 1)"
    spacing = np.array(voxel_spacing(affine))
    if not (spacing > 0).all():
        return f"the affine is singular (a voxel axis of length 0: voxel size {_format(spacing)})"
    directions = affine[:3, :3] / spacing
    if abs(np.linalg.det(directions)) < SINGULAR_TOLERANCE:
        return "the affine is singular (its voxel axes are linearly dependent)"
    shear = float(np.max(np.abs(directions.T @ directions - np.eye(3))))
    if shear > SHEAR_TOLERANCE:
        return (f"the affine has a shear (voxel axes not perpendicular, deviation {shear:.3g}); "
                "no orientation or voxel size can be read from it")
    stored = np.array(pixdim[: len(spacing)])
    if not np.allclose(stored, spacing[: len(stored)], rtol=SPACING_RTOL, atol=0):
        return (f"voxel spacing (pixdim) {_format(stored)} disagrees with the affine's voxel size "
                f"{_format(spacing)}")
    return None


def usable(spacing: Sequence[float]) -> bool:
    """Whether every entry is a finite, positive length."""
    return all(math.isfinite(s) and s > 0 for s in spacing)


def make_geometry(pixdim: Sequence[float], affine: np.ndarray) -> Geometry:
    """The :class:`Geometry` of a header; ``problem`` set when a check fails (spacing then
    from the affine where usable, else :data:`ASSUMED_SPACING`)."""
    affine = np.asarray(affine, dtype=np.float64).copy()
    problem = geometry_problem(pixdim, affine)
    if problem is not None and not np.isfinite(affine).all():
        # No tool can place voxels with a NaN/Inf affine (outputs would carry it on):
        # the voxel grid itself, axis-aligned at the assumed spacing, stands in for it.
        affine = np.diag([*ASSUMED_SPACING, 1.0])
        problem += "; an axis-aligned affine at the origin assumed"
    spacing = voxel_spacing(affine)
    if problem is not None and not usable(spacing):
        spacing = ASSUMED_SPACING
        problem += f"; {ASSUMED_SPACING[0]:g} mm voxels assumed"
    return Geometry(affine, spacing, problem)
