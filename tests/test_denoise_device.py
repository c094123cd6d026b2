"""Denoising on the device: voxel for voxel the labels of the scipy path, and each kernel against scipy/numpy."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from neumours.device import download, upload
from neumours.infer.denoise import DEFAULTS, DenoiseParams, denoise
from neumours.infer.cache import download_labels
from neumours.infer.denoise_device import count_threshold, denoise_on_device
from neumours.kernels import denoise as k

ROOT = Path(__file__).resolve().parents[1]
#: Noise per 240 x 240 x 155 volume (benchmarks/denoise_defaults.py scales it to the volume):
#: far heavier than its "heavy" level, so that a 40^3 volume gets hundreds of specks.
NOISE = {"specks": 40_000, "blobs": 2, "holes": 8_000, "flips": 12_000}


def _corrupt():
    """benchmarks/denoise_defaults.py's corruption of ground truth into INR-like raw output."""
    spec = importlib.util.spec_from_file_location("denoise_defaults", ROOT / "benchmarks" / "denoise_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.corrupt


corrupt = _corrupt()


def ball(shape, centre, radius) -> np.ndarray:
    g = np.indices(shape)
    return sum((g[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def tumour_volume(shape=(40, 40, 32), centre=None) -> np.ndarray:
    """Edema ball around an enhancing shell around a necrotic core."""
    c = np.array(shape) // 2 if centre is None else np.asarray(centre)
    label = np.zeros(shape, np.uint8)
    label[ball(shape, c, 11)] = 2
    label[ball(shape, c, 7)] = 3
    label[ball(shape, c, 4)] = 1
    return label


def noisy_volumes(rng, shape=(40, 40, 32)):
    """(name, labels): a phantom case, it corrupted, and the ball tumour corrupted (off-centre, cut by a face)."""
    from neumours.data.phantom import make_case

    case = make_case(shape, seed=0, index=int(rng.integers(0, 1000)))
    brain = case.images.any(0)
    ball_label = tumour_volume(shape, centre=(shape[0] // 2, shape[1] // 2, 5))
    return [("phantom", case.label), ("phantom noisy", corrupt(case.label, brain, NOISE, rng)),
            ("ball noisy", corrupt(ball_label, np.ones(shape, bool), NOISE, rng))]


def on_device(device, labels, params=None, spacing=(1.0, 1.0, 1.0), **kw):
    return denoise_on_device(device, upload(device, labels, np.uint32), labels.shape, params, spacing, **kw)


def assert_same_as_scipy(device, labels, params, spacing=(1.0, 1.0, 1.0), what=""):
    expected = denoise(labels, params, spacing=spacing)
    got = on_device(device, labels, params, spacing)
    assert got.dtype == np.uint8 and got.shape == labels.shape
    wrong = int((got != expected).sum())
    assert wrong == 0, f"{what} {params} spacing {spacing}: {wrong} voxels differ from scipy"
    return expected


# ---------------------------------------------------------------------------------------------------------------
# The whole operation against neumours.infer.denoise.denoise


@pytest.mark.parametrize("connectivity,fill_holes", list(itertools.product((6, 18, 26), ("3d", "axial", "none"))))
def test_equals_scipy_on_phantoms_and_noisy_predictions(cpu_device, rng, connectivity, fill_holes):
    changed = 0
    for (name, labels), (min_component, min_island) in zip(noisy_volumes(rng), [(1000, 50), (0, 200), (30, 5)]):
        params = DenoiseParams(min_component, min_island, fill_holes, connectivity)
        expected = assert_same_as_scipy(cpu_device, labels, params, what=name)
        changed += int((expected != labels).sum())
    assert changed > 0  # the noise gave every step something to do


def test_equals_scipy_with_anisotropic_spacing_and_random_parameters(cpu_device, rng):
    for name, labels in noisy_volumes(rng, (36, 34, 30))[1:]:
        for _ in range(3):
            spacing = tuple(rng.uniform(0.5, 3.0, 3))
            params = DenoiseParams(float(rng.choice([0, 10, 100, 1000, 1e9])) * rng.uniform(0.5, 2),
                                   float(rng.choice([0, 5, 50, 200])) * rng.uniform(0.5, 2),
                                   str(rng.choice(["3d", "axial", "none"])), int(rng.choice([6, 18, 26])))
            assert_same_as_scipy(cpu_device, labels, params, spacing, what=name)


def test_empty_volume_and_a_volume_that_is_all_tumour(cpu_device, rng):
    empty = np.zeros((24, 26, 25), np.uint8)
    assert not on_device(cpu_device, empty).any()
    full = rng.integers(1, 4, (24, 26, 25)).astype(np.uint8)  # no background at all: the box is the volume
    for params in (DEFAULTS, DenoiseParams(0, 200, "axial", 6), DenoiseParams(0, 3, "3d", 18)):
        assert_same_as_scipy(cpu_device, full, params, what="all tumour")
    single = np.zeros((24, 24, 24), np.uint8)
    single[0, 0, 0] = 2  # one voxel in a corner: the largest component, the box clipped on three faces
    np.testing.assert_array_equal(on_device(cpu_device, single), single)


def test_components_and_holes_touching_the_border(cpu_device, rng):
    shape = (32, 30, 28)
    labels = np.zeros(shape, np.uint8)
    labels[:12, :, :10] = 2  # a slab through two faces of the volume
    labels[:12, 10:20, :10][ball((12, 10, 10), (0, 5, 0), 4)] = 0  # a pocket open to the faces: no hole
    labels[4:8, 12:16, 3:7] = 0  # an enclosed pocket: a hole
    labels[3:6, 3:6, 4:7] = 3  # a wrong-class island inside
    labels[31, 29, 20:28] = 1  # a small component in a corner
    labels[20:32, 0:5, 27] = 3  # one flat on the last z face
    for params in (DEFAULTS, DenoiseParams(0, 50, "axial", 6), DenoiseParams(5, 50, "3d", 18)):
        assert_same_as_scipy(cpu_device, labels, params, what="border")
    noisy = corrupt(labels, np.ones(shape, bool), NOISE, rng)
    for params in (DEFAULTS, DenoiseParams(0, 50, "axial", 26)):
        assert_same_as_scipy(cpu_device, noisy, params, what="border noisy")


def test_ties_resolve_as_in_scipy(cpu_device):
    # Two largest components of equal size, both below the threshold: only the first in C order stays.
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[15:18, 2:5, 2:5] = 2
    labels[3:6, 15:18, 15:18] = 3  # same 27 voxels, earlier in C order
    out = assert_same_as_scipy(cpu_device, labels, DenoiseParams(min_component_mm3=100), what="equal largest")
    assert (out[3:6, 15:18, 15:18] == 3).all() and not out[15:18].any()

    # Holes exactly between two labels along each axis, and a one-voxel class island on a boundary:
    # each has several nearest known voxels, and they carry different labels.
    labels = np.zeros((26, 26, 26), np.uint8)
    labels[4:22, 4:22, 4:22] = 1  # NCR below x = 13
    labels[13:22, 4:22, 4:22] = 2  # ED from x = 13
    labels[13:22, 13:22, 4:22] = 3  # ET in the ED half from y = 13
    labels[4:13, 4:22, 15:22] = 3  # ET in the NCR half from z = 15
    targets = [(12, 8, 8), (16, 12, 8), (8, 16, 14), (12, 12, 14), (12, 6, 10)]  # x, y, z, three-way ties; island
    for t in targets[:-1]:
        labels[t] = 0
    labels[targets[-1]] = 3
    expected = assert_same_as_scipy(cpu_device, labels, DenoiseParams(0, 5, "3d", 26), what="ties")
    known = labels > 0
    known[targets[-1]] = False
    points = np.argwhere(known)
    for t in targets:
        d2 = ((points - np.array(t)) ** 2).sum(1)
        nearest = {int(labels[tuple(p)]) for p in points[d2 == d2.min()]}
        assert len(nearest) > 1, f"{t} is no tie"  # the case really tests the tie rule
        assert expected[t] in nearest


def test_device_output_buffer_and_bad_input(cpu_device, rng):
    labels = corrupt(tumour_volume((30, 30, 24)), np.ones((30, 30, 24), bool), NOISE, rng)
    buffer = upload(cpu_device, labels, np.uint32)
    out = denoise_on_device(cpu_device, buffer, labels.shape, to_host=False)
    np.testing.assert_array_equal(download(out, labels.shape, np.uint32), denoise(labels))
    np.testing.assert_array_equal(download(buffer, labels.shape, np.uint32), labels)  # input untouched
    np.testing.assert_array_equal(download_labels(cpu_device, out, labels.shape), denoise(labels))
    with pytest.raises(ValueError, match="labels"):
        denoise_on_device(cpu_device, buffer, (31, 30, 24))
    with pytest.raises(ValueError, match="out"):
        denoise_on_device(cpu_device, buffer, labels.shape, out=buffer)
    with pytest.raises(ValueError, match="spacing"):
        denoise_on_device(cpu_device, buffer, labels.shape, spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="fill_holes"):
        denoise_on_device(cpu_device, buffer, labels.shape, fill_holes="2d")


def test_count_threshold_is_the_integer_form_of_a_size():
    for size in (0.0, 0.4, 1.0, 2.5, 3.0, 999.9999, 1e9, 1e12, float("inf")):
        t = count_threshold(size)
        for count in (0, 1, 2, 3, 4, 999, 1000, 10**9, 2**32 - 2):
            assert (count >= size) == (count >= t) and (count < size) == (count < t)


# ---------------------------------------------------------------------------------------------------------------
# Each kernel against scipy / numpy


def _zeros(device, n):
    return upload(device, np.zeros(max(n, 1), np.uint32), np.uint32)


def _stats(device, box=None):
    """A stats buffer; with ``box`` ((lo), (hi)) exclusive, the tight box that grows into it."""
    stats = k.STATS_START.copy()
    if box is not None:
        lo, hi = np.asarray(box[0]), np.asarray(box[1])
        stats[k.STAT_BOX_MIN:k.STAT_BOX_MIN + 3] = lo + 1
        stats[k.STAT_BOX_MAX:k.STAT_BOX_MAX + 3] = hi - 2
    return upload(device, stats, np.uint32)


def _components(device, labels, mode, connectivity, planar=False, stats=None):
    shape = labels.shape
    n = labels.size
    buf = upload(device, labels, np.uint32)
    parent = _zeros(device, n)
    stats = stats if stats is not None else _stats(device)
    k.cc_init(device, buf, parent, stats, shape, mode)
    k.cc_merge(device, buf, parent, shape, mode, connectivity, planar)
    k.cc_compress(device, parent, shape)
    sizes = _zeros(device, n)
    k.component_sizes(device, parent, sizes, shape)
    return download(parent, shape, np.uint32), download(sizes, (n,), np.uint32)


def _check_partition(roots, members, reference, reference_count):
    """roots (device) and reference (scipy labels) describe the same components; each root is its first voxel."""
    flat_roots, flat_ref = roots.reshape(-1), reference.reshape(-1)
    assert (flat_roots[~members.reshape(-1)] == k.NO_VOXEL).all()
    firsts = ndimage.minimum(np.arange(flat_ref.size), flat_ref, index=np.arange(1, reference_count + 1))
    np.testing.assert_array_equal(flat_roots[flat_ref > 0], np.asarray(firsts, np.int64)[flat_ref[flat_ref > 0] - 1])


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_kernel_components_of_tumour_and_of_classes(cpu_device, rng, connectivity):
    shape = (24, 22, 20)
    labels = (rng.integers(1, 4, shape) * (rng.random(shape) < rng.uniform(0.2, 0.6))).astype(np.uint8)
    structure = ndimage.generate_binary_structure(3, k.RANKS[connectivity])
    roots, sizes = _components(cpu_device, labels, k.MODE_TUMOUR, connectivity)
    reference, count = ndimage.label(labels > 0, structure)
    _check_partition(roots, labels > 0, reference, count)
    firsts = roots.reshape(-1)[labels.reshape(-1) > 0]
    np.testing.assert_array_equal(sizes[np.unique(firsts)], np.bincount(reference.reshape(-1))[1:])
    roots, sizes = _components(cpu_device, labels, k.MODE_CLASS, connectivity)
    for cls in (1, 2, 3):
        reference, count = ndimage.label(labels == cls, structure)
        _check_partition(np.where(labels == cls, roots, k.NO_VOXEL), labels == cls, reference, count)
        firsts = np.unique(roots[labels == cls])
        np.testing.assert_array_equal(sizes[firsts], np.bincount(reference.reshape(-1))[1:])


@pytest.mark.parametrize("planar", [False, True])
def test_kernel_background_components_inside_the_box_and_holes(cpu_device, rng, planar):
    shape = (22, 20, 18)
    labels = (rng.random(shape) < 0.55).astype(np.uint8) * 2
    lo, hi = (3, 2, 4), (19, 20, 15)  # clipped at the volume on the y axis
    stats = _stats(cpu_device, (lo, hi))
    roots, _ = _components(cpu_device, labels, k.MODE_BACKGROUND, 6, planar, stats)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    structure = ndimage.generate_binary_structure(3, 1)
    if planar:
        structure[:, :, [0, 2]] = False
    inside = np.zeros(shape, bool)
    inside[box] = labels[box] == 0
    reference = np.zeros(shape, np.int64)
    reference[box], count = ndimage.label(labels[box] == 0, structure)
    _check_partition(roots, inside, reference, count)
    # Holes: what binary_fill_holes fills inside the box.
    n = labels.size
    parent = upload(cpu_device, roots, np.uint32)
    flags, targets = _zeros(cpu_device, n), _zeros(cpu_device, n)
    k.hole_seeds(cpu_device, parent, flags, stats, shape, planar)
    k.hole_targets(cpu_device, parent, flags, targets, shape)
    expected = np.zeros(shape, bool)
    expected[box] = ndimage.binary_fill_holes(labels[box] > 0, structure) & (labels[box] == 0)
    assert expected.any()
    np.testing.assert_array_equal(download(targets, shape, np.uint32).astype(bool), expected)


def test_kernel_largest_component_keep_and_box(cpu_device, rng):
    shape = (20, 18, 16)
    labels = np.zeros(shape, np.uint8)
    specks = np.zeros(shape, bool)
    specks[::3, ::3, 13::2] = True  # isolated voxels, 1 to 3 voxels long
    labels[specks] = rng.integers(1, 4, int(specks.sum()))
    labels[rng.integers(0, 20, 5), rng.integers(0, 18, 5), 15] = 2
    labels[12:15, 10:13, 6:9] = 2  # two equal cubes, the largest components
    labels[2:5, 2:5, 2:5] = rng.integers(1, 4, (3, 3, 3))  # this one first in C order
    roots, sizes = _components(cpu_device, labels, k.MODE_TUMOUR, 26)
    n = labels.size
    parent, size_buf = upload(cpu_device, roots, np.uint32), upload(cpu_device, sizes, np.uint32)
    stats = _stats(cpu_device)
    k.largest_size(cpu_device, parent, size_buf, stats, shape)
    k.largest_root(cpu_device, parent, size_buf, stats, shape)
    first = np.ravel_multi_index((2, 2, 2), shape)
    got = download(stats, None, np.uint32)
    assert got[k.STAT_LARGEST_SIZE] == 27 and got[k.STAT_LARGEST_ROOT] == first
    kept = _zeros(cpu_device, n)
    k.keep_components(cpu_device, upload(cpu_device, labels, np.uint32), parent, size_buf, stats, kept, shape, 4)
    reference, _ = ndimage.label(labels > 0, ndimage.generate_binary_structure(3, 3))
    big = np.bincount(reference.reshape(-1))
    keep = (big >= 4) & (np.arange(big.size) > 0)
    expected = np.where(keep[reference], labels, 0)
    np.testing.assert_array_equal(download(kept, shape, np.uint32), expected)
    where = np.argwhere(expected > 0)
    got = download(stats, None, np.uint32)
    np.testing.assert_array_equal(got[k.STAT_BOX_MIN:k.STAT_BOX_MIN + 3], where.min(0))
    np.testing.assert_array_equal(got[k.STAT_BOX_MAX:k.STAT_BOX_MAX + 3], where.max(0))


@pytest.mark.parametrize("pattern", ["sparse", "dense", "lattice", "one"])
def test_kernel_feature_transform_equals_scipy_indices(cpu_device, rng, pattern):
    """Every voxel's nearest known voxel, ties included, in a box smaller than the volume."""
    shape = (22, 19, 17)
    lo, hi = (2, 0, 1), (21, 19, 15)
    inner = tuple(b - a for a, b in zip(lo, hi))
    if pattern == "lattice":  # equidistant features everywhere
        known = np.zeros(inner, bool)
        known[1::4, ::3, 2::5] = True
    elif pattern == "one":
        known = np.zeros(inner, bool)
        known[tuple(rng.integers(0, s) for s in inner)] = True
    else:
        known = rng.random(inner) < (0.01 if pattern == "sparse" else 0.4)
        known.flat[0] = True
    full = np.zeros(shape, np.uint32)
    full[tuple(slice(a, b) for a, b in zip(lo, hi))] = known
    n = full.size
    kept, targets, stats = upload(cpu_device, full, np.uint32), _zeros(cpu_device, n), _stats(cpu_device, (lo, hi))
    a, c, d = _zeros(cpu_device, n), _zeros(cpu_device, n), _zeros(cpu_device, n)
    k.edt_init(cpu_device, kept, targets, c, shape)
    k.edt_pass(cpu_device, c, a, d, stats, shape, 0)
    k.edt_pass(cpu_device, a, c, d, stats, shape, 1)
    k.edt_pass(cpu_device, c, a, d, stats, shape, 2)
    got = download(a, shape, np.uint32)[tuple(slice(a_, b_) for a_, b_ in zip(lo, hi))]
    index = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    expected = np.ravel_multi_index(tuple(index[j] + lo[j] for j in range(3)), shape)
    np.testing.assert_array_equal(got, expected)


def test_kernel_fill_targets_and_download(cpu_device, rng):
    shape = (9, 7, 5)  # 315 voxels: the last word is partial
    n = int(np.prod(shape))
    labels = rng.integers(0, 4, n).astype(np.uint32)
    targets = (rng.random(n) < 0.3) & (labels > 0)
    features = np.where(targets, rng.choice(np.flatnonzero(~targets), n), k.NO_VOXEL).astype(np.uint32)
    features[np.flatnonzero(targets)[0]] = k.NO_VOXEL  # a target without a feature keeps its label
    kept = upload(cpu_device, labels, np.uint32)
    k.fill_targets(cpu_device, kept, upload(cpu_device, targets.astype(np.uint32), np.uint32),
                   upload(cpu_device, features, np.uint32), shape)
    expected = labels.copy()
    has = targets & (features != k.NO_VOXEL)
    expected[has] = labels[features[has]]
    np.testing.assert_array_equal(download(kept, (n,), np.uint32), expected)
    np.testing.assert_array_equal(download_labels(cpu_device, kept, shape).reshape(-1), expected)
    values = _zeros(cpu_device, 10)
    k.fill(cpu_device, values, 7, 5)
    np.testing.assert_array_equal(download(values, None, np.uint32), [5] * 7 + [0] * 3)


# ---------------------------------------------------------------------------------------------------------------
# Full size on the GPU


@pytest.mark.gpu
def test_gpu_full_size_noisy_prediction_equals_scipy(cuda_device, rng):
    """240 x 240 x 155 phantom corrupted at the benchmarks' heavy level, then heavier: device == scipy."""
    from neumours.data.phantom import make_case

    spec = importlib.util.spec_from_file_location("denoise_defaults", ROOT / "benchmarks" / "denoise_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    case = make_case((240, 240, 155), seed=0, index=int(rng.integers(0, 1000)))
    brain = case.images.any(0)
    for level in (module.LEVELS["heavy"], {"specks": 20_000, "blobs": 6, "holes": 800, "flips": 2_000}):
        noisy = module.corrupt(case.label, brain, level, rng)
        for params, spacing in ((DEFAULTS, (1.0, 1.0, 1.0)), (DenoiseParams(0, 50, "axial", 6), (1.0, 1.0, 1.0)),
                                (DenoiseParams(100, 200, "3d", 18), (0.9, 0.9, 2.0))):
            assert_same_as_scipy(cuda_device, noisy, params, spacing, what="full size")
