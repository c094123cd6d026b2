"""refine says how long it will take before its first step (issue 31)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from neumours.refine.estimate import ray_sample_count, refine_step_seconds
from neumours.render.box import volume_box
from neumours.render.transfer import RenderSettings
from neumours.render.views import orbit_cameras
from conftest import CPU_ESTIMATES, cpu_device_only


def test_ray_samples_grow_with_the_pixels_and_shrink_with_the_step():
    half = volume_box((96, 96, 64))
    small = ray_sample_count(orbit_cameras((96, 96, 64), (1, 1, 1), 2, (32, 32)), half, 0.02)
    large = ray_sample_count(orbit_cameras((96, 96, 64), (1, 1, 1), 2, (64, 64)), half, 0.02)
    assert 0 < small and 3.6 < large / small < 4.4
    assert ray_sample_count(orbit_cameras((96, 96, 64), (1, 1, 1), 2, (32, 32)), half, 0.04) < 0.55 * small


@cpu_device_only(CPU_ESTIMATES)
def test_refine_at_readme_size_on_the_cpu_warns_of_hours_before_work(cpu_device, capsys):
    """README's GPU-sized refine (96 x 96 x 64, 4 views of 256 x 256, 20 steps) on the CPU device: a pass of the
    tiny INR over the case took ~26 s on an idle 2-core machine, and a step 266-380 s."""
    from neumours.cli.refine import _announce

    shape, spacing = (96, 96, 64), (1.0, 1.0, 1.0)
    cameras = orbit_cameras(shape, spacing, 4, (256, 256))
    case = SimpleNamespace(shape=shape, spacing=spacing)
    args = SimpleNamespace(quiet=False, path="cache", steps=20)
    _announce(args, cpu_device, 26.0, case, cameras, RenderSettings())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neumours: note: refinement (20 steps, 4 views, path cache) will "
                                               "take about ")
    assert "h (" in err[0] and "--views 2 --size 32x32 --steps 2 --path direct" in err[0]
    step_s = refine_step_seconds("cache", 26.0, int(np.prod(shape)), cameras, volume_box(shape, spacing), 0.02)
    assert 266 * 0.8 <= step_s <= 380 * 1.2  # as measured
    _announce(SimpleNamespace(**(vars(args) | {"quiet": True})), cpu_device, 26.0, case, cameras, RenderSettings())
    assert capsys.readouterr().err == ""
    # The CPU-sized settings it suggests stay short (direct path: cost by samples, not voxels).
    small = orbit_cameras(shape, spacing, 2, (32, 32))
    step_s = refine_step_seconds("direct", 26.0, int(np.prod(shape)), small, volume_box(shape, spacing), 0.02)
    assert 2 * step_s < 180
