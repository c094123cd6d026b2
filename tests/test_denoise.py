"""Connected-component filtering and hole filling of predicted labels."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from neumours.infer.denoise import DEFAULTS, DenoiseParams, denoise


def ball(shape, centre, radius) -> np.ndarray:
    g = np.indices(shape)
    return sum((g[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def tumour_volume(shape=(40, 40, 32)) -> np.ndarray:
    """Edema ball around an enhancing shell around a necrotic core."""
    c = np.array(shape) // 2
    label = np.zeros(shape, np.uint8)
    label[ball(shape, c, 11)] = 2
    label[ball(shape, c, 7)] = 3
    label[ball(shape, c, 4)] = 1
    return label


def test_removes_small_components_keeps_largest_and_large_ones():
    label = tumour_volume()
    noisy = label.copy()
    noisy[2, 2, 2] = 3  # a speck
    noisy[2:5, 35:38, 2:5] = 2  # 27 voxels
    out = denoise(noisy, min_component_mm3=20, fill_holes="none")
    assert out[2, 2, 2] == 0 and (out[2:5, 35:38, 2:5] == 2).all()
    np.testing.assert_array_equal(out[10:30, 10:30, 5:27], label[10:30, 10:30, 5:27])
    out = denoise(noisy, min_component_mm3=1e9, fill_holes="none")  # largest only
    np.testing.assert_array_equal(out, label)
    # Sizes are mm^3: with 3 mm^3 voxels the 27-voxel block is 81 mm^3.
    out = denoise(noisy, min_component_mm3=50, fill_holes="none", spacing=(1, 1, 3))
    assert (out[2:5, 35:38, 2:5] == 2).all()
    # The largest component is kept even when below the threshold.
    only_speck = np.zeros((8, 8, 8), np.uint8)
    only_speck[3, 3, 3] = 1
    np.testing.assert_array_equal(denoise(only_speck, min_component_mm3=100), only_speck)


def test_fills_holes_with_the_surrounding_label():
    label = tumour_volume()
    holed = label.copy()
    holed[20, 20, 16] = 0  # inside the necrotic core
    holed[20, 30, 16] = 0  # inside the edema
    out = denoise(holed, fill_holes="3d")
    assert out[20, 20, 16] == 1 and out[20, 30, 16] == 2
    assert (denoise(holed, fill_holes="none") == holed).all()
    # A tunnel through the tumour along axis 2 is no 3-D hole, but a hole in each axial slice.
    tunnel = label.copy()
    tunnel[20, 20, :] = 0
    assert (denoise(tunnel, fill_holes="3d")[20, 20, :] == 0).all()
    axial = denoise(tunnel, fill_holes="axial")
    for z in range(6, 27):  # each slice's hole takes a label of its in-slice neighbours
        assert axial[20, 20, z] in {label[19, 20, z], label[21, 20, z], label[20, 19, z], label[20, 21, z]}
    assert not axial[20, 20, :6].any() and not axial[20, 20, 27:].any()  # one-voxel end slices: no hole


def test_class_islands_take_the_surrounding_label():
    label = tumour_volume()
    noisy = label.copy()
    noisy[20, 30, 16] = 3  # ET speck in edema
    noisy[19:21, 20, 16] = 2  # ED pair in the necrotic core
    out = denoise(noisy, min_class_island_mm3=5, fill_holes="none")
    np.testing.assert_array_equal(out, label)
    # A small tumour component that is all one class keeps its label.
    lone = noisy.copy()
    lone[1:3, 1:3, 1:3] = 3
    out = denoise(lone, min_component_mm3=0, min_class_island_mm3=50, fill_holes="none")
    assert (out[1:3, 1:3, 1:3] == 3).all()
    assert denoise(noisy, min_class_island_mm3=0, fill_holes="none")[20, 30, 16] == 3


@pytest.mark.parametrize("params", [DEFAULTS, DenoiseParams(0, 50, "axial"), DenoiseParams(100, 20, "3d", 6),
                                    DenoiseParams(1e9, 200, "axial", 18)])
def test_never_invents_tumour_outside_the_prediction_except_holes(params, rng):
    shape = (36, 34, 30)
    label = tumour_volume(shape)
    noisy = label.copy()
    flip = rng.random(shape) < 0.03
    noisy[flip] = rng.integers(0, 4, int(flip.sum()))
    noisy[ball(shape, (18, 17, 15), 2)] = 0  # a real 3-D hole
    before = noisy.copy()
    out = denoise(noisy, params)
    np.testing.assert_array_equal(noisy, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == shape and out.max() <= 3
    tumour = noisy > 0
    structure = ndimage.generate_binary_structure(3, 1)
    if params.fill_holes == "axial":
        structure[:, :, [0, 2]] = False
    allowed = ndimage.binary_fill_holes(tumour, structure=structure)
    assert not ((out > 0) & ~allowed).any()
    if params.fill_holes == "none":
        assert not ((out > 0) & ~tumour).any()
    # Voxels that stay tumour keep their label unless they were a small class island.
    if params.min_class_island_mm3 == 0:
        same = (out > 0) & tumour
        np.testing.assert_array_equal(out[same], noisy[same])


def test_empty_and_bad_input():
    empty = np.zeros((5, 5, 5), np.uint8)
    assert not denoise(empty).any()
    with pytest.raises(ValueError):
        denoise(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError):
        DenoiseParams(fill_holes="2d")
    with pytest.raises(ValueError):
        denoise(empty, spacing=(1, 0, 1))


def test_speed_on_a_brats_sized_volume(rng):
    """240 x 240 x 155 with ~18 k stray specks: target < 0.3 s (loose bound here for busy CI machines)."""
    shape = (240, 240, 155)
    label = np.zeros(shape, np.uint8)
    label[80:160, 90:170, 40:110] = 2
    label[100:140, 110:150, 55:95] = 3
    label[112:128, 122:138, 67:83] = 1
    flat = label.reshape(-1)
    idx = rng.integers(0, flat.size, 18_000)
    flat[idx] = rng.integers(1, 4, idx.size)
    denoise(label)
    start = time.perf_counter()
    out = denoise(label)
    elapsed = time.perf_counter() - start
    assert out[120, 130, 75] == 1 and out[5, 5, 5] == 0
    assert elapsed < 1.0, f"denoise took {elapsed:.2f} s"
