"""Renders framed on the brain, titles and a thinner brain for label pictures (issue 31)."""

from __future__ import annotations

import numpy as np
import pytest

from neumours.data.phantom import make_case
from neumours.render.box import to_voxel_scale, volume_box
from neumours.render.camera import fit_distance, orbit
from neumours.render.framing import framed_orbit, occupied_sphere
from neumours.render.io import MIN_LEGEND_HEIGHT, stamp_title
from neumours.render.skipping import occupied_box
from neumours.render.transfer import RenderSettings, labels_visible


SPACING = (1.0, 1.0, 1.0)  # the phantom's


def _brain_extent(camera, case) -> tuple[float, float, float, float]:
    """Projected (min column, max column, min row, max row) of the brain's voxels (box space)."""
    shape = case.label.shape
    half = volume_box(shape, SPACING)
    voxels = np.argwhere(np.any(case.images != 0, axis=0))[::7].astype(np.float64)
    column, row, depth = camera.project(voxels / to_voxel_scale(shape, half) - half)
    assert (depth > 0).all()
    return column.min(), column.max(), row.min(), row.max()


@pytest.mark.parametrize("azimuth, elevation", [(30, 20), (-60, 25), (120, 60)])
def test_the_brain_fills_the_frame_from_every_angle(azimuth, elevation):
    case = make_case((48, 40, 32), seed=3)
    width, height = 160, 90
    framed = framed_orbit(case.label.shape, SPACING, occupied_box(volumes=case.images), azimuth, elevation,
                          width, height)
    c0, c1, r0, r1 = _brain_extent(framed, case)
    assert c0 >= -0.5 and c1 <= width - 0.5 and r0 >= -0.5 and r1 <= height - 0.5  # all of it in the frame
    assert max(r1 - r0, (c1 - c0) * height / width) > 0.6 * height  # and large in it
    whole_box = orbit(azimuth, elevation, fit_distance(volume_box(case.label.shape, SPACING), 30.0, width / height),
                      width=width, height=height)
    b0, b1, s0, s1 = _brain_extent(whole_box, case)
    assert (r1 - r0) * (c1 - c0) > 1.5 * (s1 - s0) * (b1 - b0)  # larger than the old whole-box fit


def test_an_empty_volume_frames_the_whole_box():
    centre, radius = occupied_sphere((16, 16, 16), (1, 1, 1), occupied_box(volumes=np.zeros((4, 16, 16, 16))))
    assert np.array_equal(centre, np.zeros(3)) and radius == pytest.approx(np.sqrt(3))


def test_titles_keep_the_image_size_and_show():
    image = np.zeros((MIN_LEGEND_HEIGHT, 200, 3), np.uint8)
    titled = stamp_title(image, "ground truth")
    assert titled.shape == image.shape and titled[: MIN_LEGEND_HEIGHT // 4].max() > 0
    assert np.array_equal(stamp_title(image[:20], "x"), image[:20])  # too small: unchanged


def test_label_pictures_use_a_thinner_brain():
    settings = RenderSettings()
    thin = labels_visible(settings)
    assert thin.transfer.density_scale < settings.transfer.density_scale
    assert thin.lut is settings.lut and thin.windows == settings.windows
