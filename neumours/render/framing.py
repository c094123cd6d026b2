"""Cameras framed on what a volume holds: the brain, not the whole box around it.

:func:`~neumours.render.camera.fit_distance` fits the bounding sphere of the whole
volume box, so that any orbit shows all of it; a skull-stripped brain fills only
part of that box, and in a fitted frame it covers about a quarter of the image.
Here the camera looks at the centre of the occupied voxels and stands where a
sphere around them (radius: their largest half extent, the brain being roughly
an ellipsoid in its bounding box, times ``margin``) just fills the narrower field
of view, so the brain fills the frame from every orbit angle.
"""

from __future__ import annotations

import numpy as np

from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import Camera, orbit
from neumours.render.skipping import OccupiedBox, is_empty


def occupied_sphere(shape, spacing, box: OccupiedBox) -> tuple[np.ndarray, float]:
    """Box-space centre (3,) and radius of a sphere around the occupied voxels (the whole box when empty)."""
    half = volume_box(shape, spacing)
    if is_empty(box):
        return np.zeros(3), float(np.linalg.norm(half))
    scale = to_voxel_scale(shape, half)
    lo = np.asarray(box[0], np.float64) / scale - half
    hi = np.asarray(box[1], np.float64) / scale - half
    return (lo + hi) / 2, float(max((hi - lo).max() / 2, 1e-3))


def framed_orbit(shape, spacing, box: OccupiedBox, azimuth_deg: float, elevation_deg: float, width: int, height: int,
                 fov_y_deg: float = 30.0, margin: float = 1.1) -> Camera:
    """An orbit camera around the occupied voxels' centre, at the distance where they fill the frame.

    Args:
        shape, spacing: the volume's (sets the box).
        box: occupied voxel bounds (:func:`neumours.render.skipping.occupied_box`).
        margin: 1 fits the sphere exactly; above 1 leaves a border.
    """
    centre, radius = occupied_sphere(shape, spacing, box)
    half_y = np.radians(fov_y_deg) / 2
    half_x = np.arctan(np.tan(half_y) * width / height)
    distance = margin * radius / np.sin(min(half_x, half_y))
    return orbit(azimuth_deg, elevation_deg, float(distance), target=tuple(centre.tolist()), fov_y_deg=fov_y_deg,
                 width=width, height=height)
