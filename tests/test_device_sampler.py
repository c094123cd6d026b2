"""The device sampler (neumours.train.device_sampler): Philox4x32-10 against Random123's known answers,
the kernel's draws bit for bit against the numpy reference of the same rule, and their statistics
against the rule of the numpy PointSampler (foreground share, uniform slots and voxels, labels)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import neumours.train.device_sampler as device_sampler_module
from neumours.device import download, empty_buffer, recording
from neumours.kernels.sampler import random_words
from neumours.train.device_sampler import DeviceSampler, reference_points
from neumours.train.philox import philox4x32, uniform_below
from neumours.train.pool import HostCase
from neumours.train.sampler import PointSampler, foreground_count

#: Random123 1.14, tests/kat_vectors, the three "philox4x32 10" lines: counter, key, expected words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SHAPES = [(24, 24, 24), (32, 28, 40), (24, 32, 28), (40, 30, 26)]
NO_TUMOUR = 2     # the slot whose case has no tumour
P_MIN = 1e-3      # fixed seeds: a p-value below this means a distribution differs
SEED = 20231207


def _case(rng, name, shape, box=None):
    label = np.zeros(shape, np.uint8)
    if box is not None:
        region = tuple(slice(a, b) for a, b in box)
        label[region] = rng.integers(1, 4, label[region].shape)
    label = label.reshape(-1)
    return HostCase(name, shape, label, np.flatnonzero(label).astype(np.int64))


def _cases(rng):
    boxes = [((5, 9), (6, 10), (7, 12)), ((10, 20), (3, 9), (30, 38)), None, ((1, 4), (20, 29), (0, 26))]
    return [_case(rng, f"case{i}", shape, box) for i, (shape, box) in enumerate(zip(SHAPES, boxes))]


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(SEED)
    cases = _cases(rng)
    distances = rng.standard_normal((len(cases), max(c.label.size for c in cases), 3)).astype(np.float32)
    return cases, distances


@pytest.fixture(scope="module")
def sampler(cpu_device, pool):
    s = DeviceSampler(cpu_device, 0.1, seed=SEED)
    s.update(*pool)
    return s


def _draw(s, step, micro_batch, n, micro_batches=1, phi=False):
    """One dispatch of ``s``; the outputs downloaded: positions, slots, labels (and phi)."""
    total, dev = n * micro_batches, s.device
    out = [empty_buffer(dev, 3 * total), empty_buffer(dev, total, np.uint32), empty_buffer(dev, total, np.uint32)]
    columns = s.table.distance_columns + 1
    if phi:
        out.append(empty_buffer(dev, columns * total))
    s.sample(step, micro_batch, n, *out, micro_batches=micro_batches)
    got = [download(out[0], (total, 3)), download(out[1], (total,), np.uint32), download(out[2], (total,), np.uint32)]
    return got + ([download(out[3], (total, columns))] if phi else [])


def _flat(positions, slots, shapes):
    shape = np.array(shapes, np.int64)[slots]
    p = positions.astype(np.int64)
    return (p[:, 0] * shape[:, 1] + p[:, 1]) * shape[:, 2] + p[:, 2]


@pytest.fixture(scope="module")
def many(sampler):
    """50 micro-batches of 4,096 points of one step (one dispatch) and the micro-batch index of each point."""
    n, m = 4096, 50
    positions, slots, labels = _draw(sampler, 3, 0, n, m)
    return n, positions, slots, labels, np.tile(np.arange(n), m)


# ---------------------------------------------------------------- the generator

def test_philox_matches_random123_known_answers_in_numpy_and_on_the_device(cpu_device):
    words = empty_buffer(cpu_device, 4, np.uint32)
    for counter, key, expected in KNOWN_ANSWERS:
        assert tuple(philox4x32(np.array(counter, np.uint32), key)) == expected
        random_words(cpu_device, key[0] + (key[1] << 32), counter, 1, words)
        assert tuple(download(words, (4,), np.uint32)) == expected


def test_device_words_equal_numpy_words_for_consecutive_counters(cpu_device):
    count, seed, counter = 1000, 0x1234_5678_9ABC_DEF0, (7, 3, 100, 5)
    words = empty_buffer(cpu_device, 4 * count, np.uint32)
    random_words(cpu_device, seed, counter, count, words)
    counters = np.array([(7, 3, 100 + i, 5) for i in range(count)], np.uint32)
    expected = philox4x32(counters, (seed & 0xFFFFFFFF, seed >> 32))
    np.testing.assert_array_equal(download(words, (count, 4), np.uint32), expected)
    assert len(np.unique(expected)) > 0.99 * expected.size   # words of neighbouring counters do not repeat


def test_uniform_below_is_the_floor_of_the_64_bit_fraction_times_n():
    rng = np.random.default_rng(SEED)
    hi, lo = (rng.integers(0, 2**32, 2000, dtype=np.uint64) for _ in range(2))
    n = rng.integers(1, 2**32, 2000, dtype=np.uint64)
    exact = [((int(h) << 32 | int(low)) * int(m)) >> 64 for h, low, m in zip(hi, lo, n)]
    got = uniform_below(hi, lo, n)
    assert got.tolist() == exact and (got < n.astype(np.int64)).all()
    ends = uniform_below(np.array([0, 2**32 - 1], np.uint64), np.array([0, 2**32 - 1], np.uint64), 2**32 - 1)
    assert ends.tolist() == [0, 2**32 - 2]


# ---------------------------------------------------------------- the kernel against its reference

@pytest.mark.parametrize("step, micro_batch, n, micro_batches",
                         [(0, 0, 777, 3), (41, 5, 64, 1), (2**32 - 1, 9, 300, 2)])
def test_device_draws_equal_the_numpy_reference_bit_for_bit(sampler, pool, step, micro_batch, n, micro_batches):
    got = _draw(sampler, step, micro_batch, n, micro_batches, phi=True)
    expected = reference_points(pool[0], 0.1, SEED, step, micro_batch, n, pool[1], micro_batches)
    for name, a, b in zip(("positions", "slots", "labels", "phi"), got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_recorded_dispatch_draws_the_same_points(sampler):
    n, dev = 500, sampler.device
    out = [empty_buffer(dev, 3 * n), empty_buffer(dev, n, np.uint32), empty_buffer(dev, n, np.uint32)]
    with recording(dev):
        sampler.sample(12, 1, n, *out)
    got = [download(out[0], (n, 3)), download(out[1], (n,), np.uint32), download(out[2], (n,), np.uint32)]
    for a, b in zip(got, _draw(sampler, 12, 1, n)):
        np.testing.assert_array_equal(a, b)


def test_draws_depend_on_seed_step_and_micro_batch_only(sampler, pool, cpu_device):
    n = 256
    first = _draw(sampler, 5, 2, n)
    for a, b in zip(first, _draw(sampler, 5, 2, n)):
        np.testing.assert_array_equal(a, b)
    other = DeviceSampler(cpu_device, 0.1, seed=SEED + 1)
    other.update(*pool)
    for changed in (_draw(sampler, 6, 2, n), _draw(sampler, 5, 3, n), _draw(other, 5, 2, n)):
        assert not np.array_equal(changed[0], first[0]) and not np.array_equal(changed[1], first[1])
    # Micro-batches drawn together are those drawn one at a time.
    together = _draw(sampler, 5, 2, n, micro_batches=2)
    for a, b, c in zip(together, first, _draw(sampler, 5, 3, n)):
        np.testing.assert_array_equal(a, np.concatenate([b, c]))


# ---------------------------------------------------------------- statistics of the draw rule

def test_points_lie_on_voxels_of_their_case_with_its_labels(pool, many):
    cases, _ = pool
    n, positions, slots, labels, _ = many
    shapes = np.array(SHAPES)[slots]
    assert (positions == np.floor(positions)).all() and (positions >= 0).all() and (positions < shapes).all()
    flat = _flat(positions, slots, SHAPES)
    expected = np.array([cases[s].label[f] for s, f in zip(slots, flat)], np.uint32)
    np.testing.assert_array_equal(labels, expected)


def test_the_first_round_ratio_n_points_are_tumour_voxels_where_the_slot_has_tumour(pool, many):
    cases, _ = pool
    n, positions, slots, labels, index = many
    n_fg = foreground_count(0.1, n)
    assert n_fg == 410
    foreground = index < n_fg
    has_tumour = np.array([c.tumour.size > 0 for c in cases])[slots]
    assert (labels[foreground & has_tumour] > 0).all()
    assert (labels[foreground & ~has_tumour] == 0).all()
    # Exactly the first n_fg: point n_fg hits tumour only as often as the volume holds it (a few %).
    tumour_share = np.mean([c.tumour.size / c.label.size for c in cases])
    after = (index == n_fg) & has_tumour
    assert after.sum() > 20 and (labels[after] > 0).mean() < 0.5 and tumour_share < 0.05
    assert abs((labels[~foreground] > 0).mean() - tumour_share) < 0.01


def test_slots_are_uniform_as_the_numpy_sampler_draws_them(pool, many):
    cases, distances = pool
    n, _, slots, labels, index = many
    counts = np.bincount(slots, minlength=len(cases))
    assert stats.chisquare(counts).pvalue > P_MIN
    numpy_sampler = PointSampler(0.1, seed=SEED)
    ref_slots, ref_labels = [], []
    for _ in range(len(slots) // n):
        _, s, y = numpy_sampler.sample(cases, n)
        ref_slots.append(s)
        ref_labels.append(y)
    ref_slots, ref_labels = np.concatenate(ref_slots), np.concatenate(ref_labels)
    table = [counts, np.bincount(ref_slots, minlength=len(cases))]
    assert stats.chi2_contingency(table).pvalue > P_MIN
    # The classes drawn, foreground and uniform parts apart, as the numpy sampler's.
    for part in (index < foreground_count(0.1, n), index >= foreground_count(0.1, n)):
        table = [np.bincount(labels[part], minlength=4), np.bincount(ref_labels[part], minlength=4)]
        assert stats.chi2_contingency(table).pvalue > P_MIN


def _blocks_uniform(positions, shape, blocks=4):
    """p-value of voxels uniform over the case: counts per block of a blocks^3 split against their volumes."""
    edges = [np.linspace(0, s, blocks + 1).astype(int) for s in shape]
    bins = [np.searchsorted(e, positions[:, a], side="right") - 1 for a, e in enumerate(edges)]
    counts = np.bincount((bins[0] * blocks + bins[1]) * blocks + bins[2], minlength=blocks**3)
    sizes = np.diff(edges[0])[:, None, None] * np.diff(edges[1])[None, :, None] * np.diff(edges[2])[None, None, :]
    return stats.chisquare(counts, sizes.reshape(-1) / sizes.sum() * counts.sum()).pvalue


def test_uniform_points_are_uniform_over_each_case(many):
    n, positions, slots, _, index = many
    uniform = index >= foreground_count(0.1, n)
    for slot, shape in enumerate(SHAPES):
        mine = positions[uniform & (slots == slot)]
        assert _blocks_uniform(mine, shape) > P_MIN, slot
        for axis in range(3):   # every slab along each axis as often as the others
            assert stats.chisquare(np.bincount(mine[:, axis].astype(int), minlength=shape[axis])).pvalue > P_MIN


def test_tumour_points_are_uniform_over_the_tumour_voxels(pool, many):
    cases, _ = pool
    n, positions, slots, _, index = many
    foreground = index < foreground_count(0.1, n)
    flat = _flat(positions, slots, SHAPES)
    for slot, case in enumerate(cases):
        if slot == NO_TUMOUR:
            continue
        picked = np.searchsorted(case.tumour, flat[foreground & (slots == slot)])
        assert (case.tumour[picked] == flat[foreground & (slots == slot)]).all()
        assert stats.chisquare(np.bincount(picked, minlength=case.tumour.size)).pvalue > P_MIN, slot


def test_a_slot_without_tumour_gives_uniform_foreground_points(many):
    n, positions, slots, labels, index = many
    mine = (index < foreground_count(0.1, n)) & (slots == NO_TUMOUR)
    assert mine.sum() > 4000 and (labels[mine] == 0).all()
    assert _blocks_uniform(positions[mine], SHAPES[NO_TUMOUR], blocks=2) > P_MIN


def test_phi_is_the_signed_distances_at_the_points(sampler, pool):
    positions, slots, _, phi = _draw(sampler, 8, 0, 2000, phi=True)
    flat = _flat(positions, slots, SHAPES)
    assert (phi[:, 0] == 0).all()
    np.testing.assert_array_equal(phi[:, 1:], pool[1][slots, flat])


# ---------------------------------------------------------------- updates and refusals

def test_update_after_a_slot_change_draws_from_the_new_case_and_uploads_that_slot_only(cpu_device, pool,
                                                                                      monkeypatch):
    rng = np.random.default_rng(SEED + 2)
    cases, distances = list(pool[0]), pool[1].copy()
    s = DeviceSampler(cpu_device, 0.5, seed=3, slot_voxels=distances.shape[1])
    s.update(cases, distances)
    # As CasePool.refresh does: a new case object in slot 1, its distances written into the same array.
    cases[1] = _case(rng, "new", (36, 30, 24), ((0, 30), (2, 28), (4, 20)))
    distances[1] = rng.standard_normal(distances[1].shape).astype(np.float32)
    uploads = []
    real = device_sampler_module.upload_into
    monkeypatch.setattr(device_sampler_module, "upload_into", lambda *a, **k: uploads.append(a[4]) or real(*a, **k))
    s.update(cases, distances)
    voxels = distances.shape[1]   # the slot size: a multiple of 4 here
    assert sorted(uploads) == [voxels // 4, voxels * 3]   # slot 1's labels (4 a word) and distances, nothing else
    got = _draw(s, 4, 1, 3000, phi=True)
    expected = reference_points(cases, 0.5, 3, 4, 1, 3000, distances)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    positions, slots, labels, _ = got
    new = slots == 1
    assert (positions[new] < np.array((36, 30, 24))).all()
    np.testing.assert_array_equal(labels[new], cases[1].label[_flat(positions, slots, SHAPES[:1] + [(36, 30, 24)]
                                                                    + SHAPES[2:])[new]])


def test_refusals(cpu_device, pool, sampler):
    buffers = [empty_buffer(cpu_device, 30), empty_buffer(cpu_device, 10, np.uint32),
               empty_buffer(cpu_device, 10, np.uint32)]
    with pytest.raises(ValueError, match="before update"):
        DeviceSampler(cpu_device, 0.1).sample(0, 0, 10, *buffers)
    with pytest.raises(ValueError, match="positions"):
        sampler.sample(0, 0, 11, *buffers)
    with pytest.raises(ValueError, match="step"):
        sampler.sample(2**32, 0, 10, *buffers)
    with pytest.raises(ValueError, match="foreground_ratio"):
        DeviceSampler(cpu_device, 1.5)
    with pytest.raises(ValueError, match="seed"):
        DeviceSampler(cpu_device, 0.1, seed=-1)
    bare = DeviceSampler(cpu_device, 0.1)
    bare.update(pool[0])
    with pytest.raises(ValueError, match="signed distances"):
        bare.sample(0, 0, 10, *buffers, phi=empty_buffer(cpu_device, 40))


# ---------------------------------------------------------------- full size on the GPU

@pytest.mark.gpu
def test_full_size_pool_on_cuda_equals_the_numpy_reference(cuda_device):
    """The paper's step (4 x 4,096 points) over 40 cases of 160 x 160 x 112 with signed distances."""
    rng = np.random.default_rng(SEED)
    shape = (160, 160, 112)
    cases = []
    for i in range(40):
        corner = rng.integers(0, 100, 3)
        box = None if i % 13 == 12 else tuple((int(c), int(c) + int(w)) for c, w in zip(corner, rng.integers(5, 40, 3)))
        cases.append(_case(rng, f"case{i}", shape, box))
    distances = rng.standard_normal((40, int(np.prod(shape)), 3), dtype=np.float32)
    s = DeviceSampler(cuda_device, 0.1, seed=SEED)
    s.update(cases, distances)
    for step in (0, 9_999, 123_456):
        got = _draw(s, step, 0, 4096, micro_batches=4, phi=True)
        expected = reference_points(cases, 0.1, SEED, step, 0, 4096, distances, micro_batches=4)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
