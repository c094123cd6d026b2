"""Patch gather and grid inputs on the device against a float64 scipy reference."""

from __future__ import annotations

import numpy as np

from neumours.device import download, empty_buffer, upload
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes, gather_inputs, grid_inputs
from neumours.model.reference import patches_np

CONFIG = INRConfig.tiny()


def coords_of(positions, shape):
    return 2.0 * np.asarray(positions, np.float64) / (np.array(shape) - 1) - 1.0


def test_gather_on_grid_and_off_grid(cpu_device, rng):
    shapes = [(9, 7, 6), (5, 8, 4)]
    images = [rng.normal(size=(4, *s)).astype(np.float32) for s in shapes]
    vols = CaseVolumes.upload(cpu_device, images)
    n = 200
    case_ids = rng.integers(0, 2, n).astype(np.uint32)
    dims = np.array(shapes)[case_ids]
    on_grid = np.floor(rng.uniform(0, 1, (n, 3)) * dims).astype(np.float32)
    off_grid = (rng.uniform(-0.5, 1, (n, 3)) * (dims - 1)).astype(np.float32)  # some outside the volume
    for positions in (on_grid, off_grid):
        coords, patches = empty_buffer(cpu_device, n * 3), empty_buffer(cpu_device, n * CONFIG.patch_dim)
        gather_inputs(CONFIG, vols, upload(cpu_device, positions), upload(cpu_device, case_ids, np.uint32), n,
                      coords, patches)
        got = download(patches, (n, 4, 3, 3, 3))
        for case in (0, 1):
            sel = case_ids == case
            ref = patches_np(images[case], positions[sel])
            np.testing.assert_allclose(got[sel], ref, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(download(coords, (n, 3))[sel], coords_of(positions[sel], shapes[case]),
                                       rtol=1e-6, atol=1e-6)
    # On the grid the patch is an exact copy of the voxels (zero outside).
    coords, patches = empty_buffer(cpu_device, n * 3), empty_buffer(cpu_device, n * CONFIG.patch_dim)
    gather_inputs(CONFIG, vols, upload(cpu_device, on_grid), upload(cpu_device, case_ids, np.uint32), n,
                  coords, patches)
    got = download(patches, (n, 4, 3, 3, 3))
    i = int(np.argmax(case_ids == 0))
    x, y, z = on_grid[i].astype(int)
    padded = np.pad(images[0], ((0, 0), (1, 1), (1, 1), (1, 1)))
    np.testing.assert_array_equal(got[i], padded[:, x:x + 3, y:y + 3, z:z + 3])


def test_grid_inputs_cover_the_volume_and_super_resolution(cpu_device, rng):
    shape = (6, 5, 4)
    image = rng.normal(size=(4, *shape)).astype(np.float32)
    vols = CaseVolumes.upload(cpu_device, [image])
    for grid in (shape, (11, 9, 7)):  # plain, and ~2x finer over the same field of view
        total = int(np.prod(grid))
        start, count = 7, total - 7
        coords, patches = empty_buffer(cpu_device, count * 3), empty_buffer(cpu_device, count * CONFIG.patch_dim)
        grid_inputs(CONFIG, vols, 0, grid, start, count, coords, patches)
        index = np.stack(np.unravel_index(np.arange(start, total), grid), -1)
        positions = index * ((np.array(shape) - 1) / (np.array(grid) - 1))
        np.testing.assert_allclose(download(patches, (count, 4, 3, 3, 3)), patches_np(image, positions),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(download(coords, (count, 3)), coords_of(positions, shape), atol=1e-6)


def test_one_case_uploads_as_it_is_into_scratch(cpu_device, rng):
    """One case goes up without a concatenation copy, in any memory order, into a reused scratch buffer;
    several cases one after another with their table."""
    from neumours.device import ScratchBuffers

    images = rng.normal(size=(4, 6, 5, 7)).astype(np.float32)
    scratch = ScratchBuffers(cpu_device)
    one = CaseVolumes.upload(cpu_device, [np.asfortranarray(images)], scratch, "volumes")
    assert one.volumes is scratch.get("volumes", images.size) and one.shapes == [(6, 5, 7)]
    np.testing.assert_array_equal(download(one.volumes, images.shape), images)
    both = CaseVolumes.upload(cpu_device, [images, np.asfortranarray(images[:, :3])])
    np.testing.assert_array_equal(download(both.volumes, (images.size + images[:, :3].size,)),
                                  np.concatenate([images.ravel(), images[:, :3].ravel()]))
    np.testing.assert_array_equal(download(both.case_table, (2, 4), np.uint32), [[0, 6, 5, 7], [images.size, 3, 5, 7]])
