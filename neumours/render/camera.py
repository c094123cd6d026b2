"""Pinhole cameras for the raymarcher: look-at, orbit, and the rays through pixel centres.

World space is the volume's box space (``neumours.render.volume_box``): the
array axes 0, 1, 2 of the volumes are x, y, z, the box is centred at the
origin and its longest axis spans [-1, 1].

Ray generation (``Camera.rays`` here, ``camera_ray`` in ``slang/raymarch.slang``):
with ``f = normalize(target - eye)``, ``r = normalize(f x up)``, ``u = r x f``
and ``s = tan(fov_y / 2)``, pixel (column i, row j) of a W x H image (row 0 at
the top) looks along

    normalize(f + x * (s * W / H) * r + y * s * u),
    x = 2 (i + 0.5) / W - 1,   y = 1 - 2 (j + 0.5) / H,

i.e. through the pixel's centre; the vertical field of view spans the image height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"{what} has zero length or is not finite")
    return v / norm


@dataclass(frozen=True)
class Camera:
    """A look-at perspective camera.

    Attributes:
        eye: (3,) camera position in box space.
        target: (3,) point the camera looks at.
        up: (3,) approximate up direction (must not be parallel to the view direction).
        fov_y_deg: vertical field of view in degrees, in (0, 180).
        width, height: image size in pixels (>= 1).
    """

    eye: tuple[float, float, float]
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_y_deg: float = 30.0
    width: int = 640
    height: int = 480

    def __post_init__(self) -> None:
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"image size must be at least 1x1, got {self.width}x{self.height}")
        if not 0.0 < float(self.fov_y_deg) < 180.0:
            raise ValueError(f"fov_y_deg must be in (0, 180), got {self.fov_y_deg}")
        self.basis()  # validates eye, target and up

    @property
    def aspect(self) -> float:
        """Width / height."""
        return self.width / self.height

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit forward, right and up vectors (float64), a right-handed view frame."""
        forward = _unit(np.subtract(self.target, self.eye, dtype=np.float64), "target - eye")
        right = _unit(np.cross(forward, np.asarray(self.up, np.float64)), "forward x up (up parallel to the view?)")
        return forward, right, np.cross(right, forward)

    def kernel_vectors(self) -> dict[str, list[float]]:
        """What the Slang ``Camera`` struct holds: eye, forward, and right/up scaled
        by tan(fov_y / 2) * aspect and tan(fov_y / 2), plus the image size."""
        forward, right, up = self.basis()
        s = math.tan(math.radians(self.fov_y_deg) / 2)
        return {
            "eye": [float(v) for v in self.eye],
            "forward": forward.tolist(),
            "right": (right * s * self.aspect).tolist(),
            "up": (up * s).tolist(),
            "size": [int(self.width), int(self.height)],
        }

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions of the rays through every pixel centre.

        Returns:
            ``(origins, directions)``, each float64 of shape (height, width, 3);
            row 0 is the top of the image.
        """
        forward, right, up = self.basis()
        s = math.tan(math.radians(self.fov_y_deg) / 2)
        x = (2.0 * (np.arange(self.width) + 0.5) / self.width - 1.0) * s * self.aspect
        y = (1.0 - 2.0 * (np.arange(self.height) + 0.5) / self.height) * s
        d = forward + x[None, :, None] * right + y[:, None, None] * up
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        origins = np.broadcast_to(np.asarray(self.eye, np.float64), d.shape).copy()
        return origins, d

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where box-space points land in the image: the inverse of :meth:`rays`.

        Args:
            points: (..., 3) positions in box space.

        Returns:
            ``(column, row, depth)``, float64 arrays of shape (...): pixel
            coordinates (pixel centres at integers, row 0 at the top; outside
            [-0.5, size - 0.5) is off the image) and the distance along the view
            direction (<= 0: behind the camera, column and row then meaningless).
        """
        forward, right, up = self.basis()
        s = math.tan(math.radians(self.fov_y_deg) / 2)
        d = np.asarray(points, np.float64) - np.asarray(self.eye, np.float64)
        depth = d @ forward
        with np.errstate(divide="ignore", invalid="ignore"):
            x = (d @ right) / depth / (s * self.aspect)
            y = (d @ up) / depth / s
        column = (x + 1.0) * self.width / 2 - 0.5
        row = (1.0 - y) * self.height / 2 - 0.5
        return column, row, depth


def orbit(azimuth_deg: float, elevation_deg: float, distance: float, target=(0.0, 0.0, 0.0),
          fov_y_deg: float = 30.0, width: int = 640, height: int = 480) -> Camera:
    """A camera on a sphere around ``target``, z up.

    The eye sits at ``target + distance * (cos(e) cos(a), cos(e) sin(a), sin(e))``
    (a = azimuth about +z from +x, e = elevation above the xy plane). The up
    vector is the sphere's local "north" ``(-sin(e) cos(a), -sin(e) sin(a), cos(e))``,
    which equals +z projected onto the image plane and stays defined at the poles.

    Args:
        azimuth_deg, elevation_deg: degrees.
        distance: > 0, in box units (the longest box axis spans 2).
        target: (3,) orbit centre.
        fov_y_deg, width, height: as :class:`Camera`.
    """
    if not distance > 0:
        raise ValueError(f"orbit distance must be > 0, got {distance}")
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    up = np.array([-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e)])
    eye = np.asarray(target, np.float64) + distance * direction
    return Camera(tuple(eye.tolist()), tuple(float(t) for t in target), tuple(up.tolist()), fov_y_deg, width, height)


def fit_distance(box_half, fov_y_deg: float, aspect: float, margin: float = 0.9) -> float:
    """Orbit distance at which the box's bounding sphere fills the narrower field of view.

    Args:
        box_half: (3,) half extents of the box (:func:`neumours.render.volume_box`).
        fov_y_deg: vertical field of view; aspect: width / height.
        margin: scales the distance; 1 fits the whole sphere, the default 0.9 frames
            the box a little tighter (a brain rarely fills its box's corners).
    """
    radius = float(np.linalg.norm(box_half))
    half_y = math.radians(fov_y_deg) / 2
    half_x = math.atan(math.tan(half_y) * aspect)
    return margin * radius / math.sin(min(half_x, half_y))
