"""Denoising on the device: :func:`neumours.infer.denoise.denoise`, voxel for voxel, where the labels are.

The volume cache leaves its arg-max labels in a device buffer
(:attr:`neumours.infer.cache.VolumeCache.labels_buffer`); :func:`denoise_on_device`
cleans them there with the kernels of ``slang/denoise_kernels.slang`` (the
algorithm and its cost are in that file's header) and only the final labels
cross to the host, one byte per voxel. Nothing is read back in between: the
host only chooses which steps run from :class:`~neumours.infer.denoise.DenoiseParams`.

The result equals the scipy path exactly, ties included: components are the
same sets whichever way they are found, the largest one is chosen among equals
by its first voxel in C order as ``scipy.ndimage.label`` numbers them, and the
nearest-voxel assignment runs scipy's own feature transform (the same three
passes, the same comparisons, in exact integers) on the same bounding box.

Buffers (uint32, N = X * Y * Z): six of N and one of N / 4, taken from
``scratch`` when given. Roles change between the steps:

======== ================= ========================= ===================
buffer   step 1            steps 2-3                 step 4
======== ================= ========================= ===================
a        tumour roots      (read)                    features, passes 1, 3
b        component sizes   (read)                    --
c        --                island / background roots features, init, pass 2
d        --                island sizes / face flags feature stacks
targets  --                islands, holes            (read)
kept     kept labels       (read)                    output, in place
======== ================= ========================= ===================
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import ScratchBuffers, empty_buffer, upload_into
from neumours.infer.cache import StageTimer, download_labels
from neumours.infer.denoise import DEFAULTS, DenoiseParams, voxel_thresholds
from neumours.kernels import denoise as k
from neumours.kernels.checks import require


def count_threshold(size: float) -> int:
    """The integer form of a size in voxels: for a count c, c >= size iff c >= this, and c < size iff c < this.

    That is ceil(size), clamped to [0, NO_VOXEL] (no volume holds NO_VOXEL voxels).
    """
    if not math.isfinite(size) or size >= k.NO_VOXEL:
        return k.NO_VOXEL
    return max(0, math.ceil(size))


class _Buffers:
    """The working buffers of one call: from ``scratch`` (kept for the next case) or new."""

    def __init__(self, device: spy.Device, n: int, scratch: ScratchBuffers | None):
        def get(name: str, count: int) -> spy.Buffer:
            if scratch is not None:
                return scratch.get(f"denoise.{name}", count, np.uint32)
            return empty_buffer(device, count, np.uint32)

        self.a, self.b, self.c, self.d, self.targets = (get(name, n) for name in ("a", "b", "c", "d", "targets"))
        self.stats = get("stats", k.STAT_COUNT)
        self.get = get


def denoise_on_device(device: spy.Device, labels: spy.Buffer, shape: Sequence[int],
                      params: DenoiseParams | None = None, spacing=(1.0, 1.0, 1.0), *,
                      scratch: ScratchBuffers | None = None, to_host: bool = True, out: spy.Buffer | None = None,
                      timer: StageTimer | None = None, **overrides) -> np.ndarray | spy.Buffer:
    """Clean a label volume held on the device (the steps of :func:`neumours.infer.denoise.denoise`).

    Args:
        device: the device holding ``labels``.
        labels: uint32 buffer of at least X * Y * Z labels, C order (0 background; not modified).
        shape: (X, Y, Z).
        params: :class:`DenoiseParams`; default :data:`~neumours.infer.denoise.DEFAULTS`.
        spacing: voxel size in mm per axis (the mm^3 sizes become voxel counts).
        scratch: working buffers to reuse between calls (the Segmenter's).
        to_host: return the labels as a host array (:func:`neumours.infer.cache.download_labels`);
            otherwise return the uint32 device buffer that holds them.
        out: uint32 buffer of at least X * Y * Z for the denoised labels (not ``labels``);
            default a new buffer (``to_host=False``) or one from ``scratch``.
        timer: a :class:`~neumours.infer.cache.StageTimer` that receives the seconds of
            each step ("components", "islands", "holes", "nearest", "download"),
            synchronising the device between them (for benchmarks; a Segmenter
            times the whole call instead).
        **overrides: fields of :class:`DenoiseParams` to change.

    Returns:
        (X, Y, Z) uint8 labels, or the uint32 buffer of X * Y * Z labels (``to_host=False``).

    Raises:
        ValueError: a bad parameter or spacing, a shape that is not three positive
            sizes, a buffer smaller than the volume, or ``out`` being ``labels``.
    """
    params = replace(params or DEFAULTS, **overrides)
    shape = tuple(int(s) for s in shape)
    n = k.voxel_count(shape)
    require(labels, n, "labels")
    min_component, min_island = voxel_thresholds(params, spacing)
    buf = _Buffers(device, n, scratch)
    a, b, c, d, targets, stats = buf.a, buf.b, buf.c, buf.d, buf.targets, buf.stats
    if out is None:
        out = buf.get("kept", n) if to_host else empty_buffer(device, n, np.uint32)
    elif out is labels:
        raise ValueError("out must not be the labels buffer (the kernels read one while writing the other)")
    require(out, n, "out")
    kept = out
    upload_into(device, stats, k.STATS_START, np.uint32)
    conn = params.connectivity
    t0 = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t0
        if timer is not None:
            t0 = timer.add(name, t0)

    # 1. Whole-tumour components: keep the largest and those of >= min_component voxels.
    k.cc_init(device, labels, a, stats, shape, k.MODE_TUMOUR)
    k.cc_merge(device, labels, a, shape, k.MODE_TUMOUR, conn)
    k.cc_compress(device, a, shape)
    k.fill(device, b, n, 0)
    k.component_sizes(device, a, b, shape)
    k.largest_size(device, a, b, stats, shape)
    k.largest_root(device, a, b, stats, shape)
    k.keep_components(device, labels, a, b, stats, kept, shape, count_threshold(min_component))
    step("components")

    # 2. Class islands of < min_island voxels that are not a whole component.
    islands = params.min_class_island_mm3 > 0
    if islands:
        k.cc_init(device, kept, c, stats, shape, k.MODE_CLASS)
        k.cc_merge(device, kept, c, shape, k.MODE_CLASS, conn)
        k.cc_compress(device, c, shape)
        k.fill(device, d, n, 0)
        k.component_sizes(device, c, d, shape)
        k.island_targets(device, c, d, a, b, targets, shape, count_threshold(min_island))
    else:
        k.fill(device, targets, n, 0)
    step("islands")

    # 3. Holes: background of the box not connected to its faces (6-connected, or 4-connected per axis-2 slice).
    holes = params.fill_holes != "none"
    if holes:
        planar = params.fill_holes == "axial"
        k.cc_init(device, kept, c, stats, shape, k.MODE_BACKGROUND)
        k.cc_merge(device, kept, c, shape, k.MODE_BACKGROUND, 6, planar=planar)
        k.cc_compress(device, c, shape)
        k.fill(device, d, n, 0)
        k.hole_seeds(device, c, d, stats, shape, planar)
        k.hole_targets(device, c, d, targets, shape)
    step("holes")

    # 4. Targets take the label of their nearest known voxel.
    if islands or holes:
        k.edt_init(device, kept, targets, c, shape)
        k.edt_pass(device, c, a, d, stats, shape, 0)
        k.edt_pass(device, a, c, d, stats, shape, 1)
        k.edt_pass(device, c, a, d, stats, shape, 2)
        k.fill_targets(device, kept, targets, a, shape)
    step("nearest")
    if not to_host:
        return kept
    result = download_labels(device, kept, shape, scratch)
    step("download")
    return result
