"""Training augmentation: the Slang kernel against the float64 reference, each transform's
effect and off switch, the exact flip, and the table the Augmenter draws."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neumours.conventions import NUM_MODALITIES
from neumours.device import download, empty_buffer, upload
from neumours.kernels import augment as layout
from neumours.model.config import INRConfig
from neumours.model.inputs import CaseVolumes, gather_inputs
from neumours.train.augment import AugmentConfig, Augmenter, value_range
from neumours.train.augment_reference import augment_reference

CONFIG = INRConfig.tiny()
ALL = (layout.FLAG_FLIP | layout.FLAG_COORDS | layout.FLAG_INTENSITY | layout.FLAG_NOISE | layout.FLAG_DROPOUT)
STRONG = AugmentConfig(flip=0.5, flip_axes=(0, 1, 2), rotate_deg=20.0, scale=0.2, translate=0.2, warp=0.1,
                       intensity_scale=0.5, intensity_shift=0.5, gamma=0.5, bias=0.5, noise=0.3, dropout=0.3)


def _cases(rng, shapes):
    """Brain-like volumes: positive z-scores inside a ball, exactly 0 outside."""
    images = []
    for s in shapes:
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, d) for d in s], indexing="ij"))
        inside = (grid**2).sum(0) < 0.8
        images.append((rng.normal(size=(NUM_MODALITIES, *s)) * inside).astype(np.float32))
    return images


def _gather(device, images, positions, case_ids):
    n = len(positions)
    vols = CaseVolumes.upload(device, images)
    coords, patches = empty_buffer(device, n * 3), empty_buffer(device, n * CONFIG.patch_dim)
    gather_inputs(CONFIG, vols, upload(device, positions), upload(device, case_ids, np.uint32), n, coords, patches)
    return coords, patches


def _augment(device, coords, patches, case_ids, table, flags, seed=7):
    n = len(case_ids)
    out_c, out_p = empty_buffer(device, n * 3), empty_buffer(device, n * CONFIG.patch_dim)
    layout.augment_inputs(device, coords, patches, upload(device, case_ids, np.uint32), upload(device, table),
                          len(table), out_c, out_p, n, flags, seed, NUM_MODALITIES, CONFIG.patch_size)
    return download(out_c, (n, 3)), download(out_p, (n, CONFIG.patch_dim))


@pytest.fixture
def batch(cpu_device, rng):
    shapes = [(9, 8, 7), (7, 9, 6)]
    images = _cases(rng, shapes)
    n = 160
    case_ids = rng.integers(0, len(shapes), n).astype(np.uint32)
    positions = np.floor(rng.uniform(0, 1, (n, 3)) * np.array(shapes)[case_ids]).astype(np.float32)
    coords, patches = _gather(cpu_device, images, positions, case_ids)
    table = Augmenter(STRONG, NUM_MODALITIES, seed=int(rng.integers(1 << 30))).table([value_range(i) for i in images])
    return images, shapes, positions, case_ids, coords, patches, table


@pytest.mark.parametrize("flags", [layout.FLAG_FLIP, layout.FLAG_COORDS, layout.FLAG_INTENSITY, layout.FLAG_NOISE,
                                   layout.FLAG_DROPOUT, ALL])
def test_kernel_matches_float64_reference_and_changes_its_inputs(cpu_device, batch, flags):
    images, shapes, positions, case_ids, coords, patches, table = batch
    c_in, p_in = download(coords, (len(case_ids), 3)), download(patches, (len(case_ids), CONFIG.patch_dim))
    got_c, got_p = _augment(cpu_device, coords, patches, case_ids, table, flags)
    ref_c, ref_p = augment_reference(c_in, p_in, case_ids, table, flags, 7, NUM_MODALITIES, CONFIG.patch_size)
    np.testing.assert_allclose(got_c, ref_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_p, ref_p, rtol=1e-4, atol=1e-4)
    changed_c, changed_p = not np.array_equal(got_c, c_in), not np.array_equal(got_p, p_in)
    assert changed_p == bool(flags & ~layout.FLAG_COORDS)  # the coordinate group leaves patches alone
    if flags & (layout.FLAG_FLIP | layout.FLAG_COORDS):
        assert changed_c
    else:
        np.testing.assert_array_equal(got_c, c_in)  # intensity groups leave the coordinate alone


def test_coordinate_group_changes_only_coordinates(cpu_device, batch):
    _, _, _, case_ids, coords, patches, table = batch
    p_in = download(patches, (len(case_ids), CONFIG.patch_dim))
    got_c, got_p = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_COORDS)
    np.testing.assert_array_equal(got_p, p_in)
    assert np.abs(got_c - download(coords, (len(case_ids), 3))).max() > 1e-3


def test_flags_off_copy_inputs_bit_for_bit(cpu_device, batch):
    _, _, _, case_ids, coords, patches, table = batch
    got_c, got_p = _augment(cpu_device, coords, patches, case_ids, table, 0)
    np.testing.assert_array_equal(got_c, download(coords, (len(case_ids), 3)))
    np.testing.assert_array_equal(got_p, download(patches, (len(case_ids), CONFIG.patch_dim)))


def test_flip_is_the_mirrored_case_at_the_mirrored_voxel(cpu_device, batch):
    images, shapes, positions, case_ids, coords, patches, table = batch
    table = table.copy()
    table[:, layout.FLIP:layout.FLIP + 3] = [1.0, 0.0, 1.0]
    got_c, got_p = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_FLIP)
    mirrored = [np.ascontiguousarray(im[:, ::-1, :, ::-1]) for im in images]
    dims = np.array(shapes)[case_ids]
    mirrored_pos = positions.copy()
    mirrored_pos[:, [0, 2]] = dims[:, [0, 2]] - 1 - positions[:, [0, 2]]
    want_c, want_p = _gather(cpu_device, mirrored, mirrored_pos.astype(np.float32), case_ids)
    np.testing.assert_allclose(got_c, download(want_c, (len(case_ids), 3)), atol=1e-6)
    np.testing.assert_array_equal(got_p, download(want_p, (len(case_ids), CONFIG.patch_dim)))


def test_background_stays_zero_and_dropout_zeroes_a_modality(cpu_device, batch):
    _, _, _, case_ids, coords, patches, table = batch
    p_in = download(patches, (len(case_ids), CONFIG.patch_dim)).reshape(len(case_ids), NUM_MODALITIES, -1)
    flags = layout.FLAG_INTENSITY | layout.FLAG_NOISE
    _, got = _augment(cpu_device, coords, patches, case_ids, table, flags)
    got = got.reshape(p_in.shape)
    assert np.all(got[p_in == 0] == 0)
    table = table.copy()
    table[:, layout.SLOT_HEAD + layout.MOD_KEEP::layout.MODALITY_STRIDE][:, :NUM_MODALITIES] = [0, 1, 1, 0]
    _, got = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_DROPOUT)
    got = got.reshape(p_in.shape)
    assert np.all(got[:, [0, 3]] == 0)
    np.testing.assert_array_equal(got[:, [1, 2]], p_in[:, [1, 2]])


def test_noise_is_seeded_and_has_the_drawn_sigma(cpu_device, batch):
    _, _, _, case_ids, coords, patches, table = batch
    table = table.copy()
    sigma = 0.25
    table[:, layout.SLOT_HEAD + layout.MOD_NOISE::layout.MODALITY_STRIDE][:, :NUM_MODALITIES] = sigma
    p_in = download(patches, (len(case_ids), CONFIG.patch_dim))
    a = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_NOISE, seed=1)[1]
    b = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_NOISE, seed=1)[1]
    c = _augment(cpu_device, coords, patches, case_ids, table, layout.FLAG_NOISE, seed=2)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    residual = (a - p_in)[p_in != 0]
    assert abs(residual.std() / sigma - 1) < 0.1 and abs(residual.mean()) < 0.05


def test_config_flags_and_validation():
    assert AugmentConfig().flags == 0
    assert STRONG.flags == ALL
    assert AugmentConfig(noise=0.1).flags == layout.FLAG_NOISE
    assert AugmentConfig(gamma=0.2).flags == layout.FLAG_INTENSITY
    assert AugmentConfig(flip=0.5, flip_axes=()).flags == 0
    for bad in ({"flip": 1.5}, {"noise": -1.0}, {"scale": 1.0}, {"flip_axes": (3,)}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_augmenter_table_covers_its_ranges():
    ranges = [np.array([[-1.0, 3.0]] * NUM_MODALITIES, np.float32)] * 400
    table = Augmenter(STRONG, NUM_MODALITIES, seed=3).table(ranges).astype(np.float64)
    flips = table[:, layout.FLIP:layout.FLIP + 3]
    assert 0.4 < flips.mean() < 0.6
    mods = table[:, layout.SLOT_HEAD:].reshape(len(table), NUM_MODALITIES, layout.MODALITY_STRIDE)
    scale = mods[..., layout.MOD_SCALE]
    assert scale.min() >= 1 / 1.5 - 1e-6 and scale.max() <= 1.5 + 1e-6 and scale.min() < 0.75 and scale.max() > 1.35
    keep = mods[..., layout.MOD_KEEP]
    assert keep.sum(axis=1).min() >= 1 and 0.6 < keep.mean() < 0.8
    assert np.all(mods[..., layout.MOD_LO] == -1) and np.all(mods[..., layout.MOD_HI] == 3)
    affine = table[:, layout.AFFINE:layout.AFFINE + 9].reshape(-1, 3, 3)
    zoom = np.cbrt(np.linalg.det(affine))
    np.testing.assert_allclose(affine @ affine.transpose(0, 2, 1), zoom[:, None, None]**2 * np.eye(3), atol=1e-5)
    identity = Augmenter(AugmentConfig(), NUM_MODALITIES, seed=3).table(ranges[:2])
    np.testing.assert_array_equal(identity[:, layout.AFFINE:layout.AFFINE + 9], np.tile(np.eye(3).ravel(), (2, 1)))
    np.testing.assert_array_equal(identity[:, layout.FLIP:layout.FLIP + 3], 0)
    again = Augmenter(dataclasses.replace(STRONG), NUM_MODALITIES, seed=3).table(ranges)
    np.testing.assert_array_equal(again, table.astype(np.float32))


@pytest.mark.gpu
def test_kernel_matches_reference_on_cuda(cuda_device):
    rng = np.random.default_rng(11)
    shapes = [(40, 36, 32), (32, 40, 28)]
    images = _cases(rng, shapes)
    n = 65_536
    case_ids = rng.integers(0, len(shapes), n).astype(np.uint32)
    positions = np.floor(rng.uniform(0, 1, (n, 3)) * np.array(shapes)[case_ids]).astype(np.float32)
    coords, patches = _gather(cuda_device, images, positions, case_ids)
    table = Augmenter(STRONG, NUM_MODALITIES, seed=5).table([value_range(i) for i in images])
    got_c, got_p = _augment(cuda_device, coords, patches, case_ids, table, ALL)
    c_in, p_in = download(coords, (n, 3)), download(patches, (n, CONFIG.patch_dim))
    ref_c, ref_p = augment_reference(c_in, p_in, case_ids, table, ALL, 7, NUM_MODALITIES, CONFIG.patch_size)
    np.testing.assert_allclose(got_c, ref_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_p, ref_p, rtol=1e-4, atol=1e-4)
