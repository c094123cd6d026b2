"""Wrappers of ``slang/denoise_kernels.slang``: the steps of denoising on the device, and its constants.

All buffers are uint32. Volumes are (X, Y, Z) C-order, ``N = X * Y * Z`` voxels;
``shape`` is passed to every kernel. The order in which
:func:`neumours.infer.denoise_device.denoise_on_device` calls these, and which
buffers it reuses, is described there; the kernel file's header says what each
step computes and what it costs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "denoise_kernels.slang"
#: The index meaning "no voxel" (not a member of the components being found, no feature).
NO_VOXEL = 0xFFFFFFFF
#: Slots of the stats buffer: largest component size, its root, box minimum (x, y, z), box maximum (x, y, z).
STAT_LARGEST_SIZE, STAT_LARGEST_ROOT, STAT_BOX_MIN, STAT_BOX_MAX = 0, 1, 2, 5
STAT_COUNT = 8
#: Initial stats: a max starts at 0, a min at NO_VOXEL.
STATS_START = np.array([0, NO_VOXEL, NO_VOXEL, NO_VOXEL, NO_VOXEL, 0, 0, 0], np.uint32)
#: Which voxels the connected-component kernels join: tumour (label != 0), voxels of one class
#: (equal nonzero labels), background inside the kept tumour's box (label 0).
MODE_TUMOUR, MODE_CLASS, MODE_BACKGROUND = 0, 1, 2
#: Voxels per thread of the reductions (component_sizes, keep_components): one atomic per run
#: of equal roots, six per run for the box, instead of one or six per voxel.
RUN = 32
#: Neighbourhood rank of each connectivity (scipy's ``generate_binary_structure(3, rank)``).
RANKS = {6: 1, 18: 2, 26: 3}

_CONSTANTS = {"NO_VOXEL": f"{NO_VOXEL}u",  # a uint literal
              "STAT_LARGEST_SIZE": STAT_LARGEST_SIZE, "STAT_LARGEST_ROOT": STAT_LARGEST_ROOT,
              "STAT_BOX_MIN": STAT_BOX_MIN, "STAT_BOX_MAX": STAT_BOX_MAX, "MODE_TUMOUR": MODE_TUMOUR,
              "MODE_CLASS": MODE_CLASS, "MODE_BACKGROUND": MODE_BACKGROUND, "RUN": RUN}


def voxel_count(shape: Sequence[int]) -> int:
    """X * Y * Z, checked to leave room for :data:`NO_VOXEL` in 32-bit indices."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    n = int(np.prod([int(s) for s in shape]))
    if n >= NO_VOXEL:
        raise ValueError(f"volume {tuple(shape)} is too large for 32-bit voxel indices")
    return n


def _run(device: spy.Device, entry: str, threads: int, shape: Sequence[int], **params) -> None:
    params["shape"] = [int(s) for s in shape]
    load_kernel(device, FILE, entry, _CONSTANTS)(int(threads), params=params)


def _require_volumes(shape, **buffers: spy.Buffer) -> int:
    n = voxel_count(shape)
    for name, buffer in buffers.items():
        require(buffer, n, name)
    return n


def fill(device: spy.Device, values: spy.Buffer, count: int, value: int) -> None:
    """values[:count] = value."""
    require(values, count, "values")
    _run(device, "fill", count, (1, 1, 1), values=values, count=int(count), value=int(value))


def cc_init(device: spy.Device, labels: spy.Buffer, parent: spy.Buffer, stats: spy.Buffer, shape, mode: int) -> None:
    """parent[i] = i for member voxels of ``mode`` (MODE_*), NO_VOXEL for the rest.

    MODE_BACKGROUND's members lie in the box of ``stats`` (filled by :func:`keep_components`).
    """
    n = _require_volumes(shape, labels=labels, parent=parent)
    require(stats, STAT_COUNT, "stats")
    _run(device, "cc_init", n, shape, labels=labels, parent=parent, stats=stats, mode=int(mode))


def cc_merge(device: spy.Device, labels: spy.Buffer, parent: spy.Buffer, shape, mode: int, connectivity: int,
             planar: bool = False) -> None:
    """Unite every member voxel with its member neighbours (``connectivity`` 6/18/26; ``planar``: only
    neighbours within the voxel's axis-2 slice)."""
    n = _require_volumes(shape, labels=labels, parent=parent)
    if connectivity not in RANKS:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    _run(device, "cc_merge", n, shape, labels=labels, parent=parent, mode=int(mode), rank=RANKS[connectivity],
         planar=int(bool(planar)))


def cc_compress(device: spy.Device, parent: spy.Buffer, shape) -> None:
    """parent[i] = the root of i (its component's smallest voxel index) for every member."""
    n = _require_volumes(shape, parent=parent)
    _run(device, "cc_compress", n, shape, parent=parent)


def component_sizes(device: spy.Device, parent: spy.Buffer, sizes: spy.Buffer, shape) -> None:
    """sizes[root] += voxels of the root's component (``sizes`` zeroed by the caller)."""
    n = _require_volumes(shape, parent=parent, sizes=sizes)
    _run(device, "component_sizes", -(-n // RUN), shape, parent=parent, sizes=sizes)


def largest_size(device: spy.Device, parent: spy.Buffer, sizes: spy.Buffer, stats: spy.Buffer, shape) -> None:
    """stats[STAT_LARGEST_SIZE] = max(itself, the largest component's size)."""
    n = _require_volumes(shape, parent=parent, sizes=sizes)
    require(stats, STAT_COUNT, "stats")
    _run(device, "largest_size", n, shape, parent=parent, sizes=sizes, stats=stats)


def largest_root(device: spy.Device, parent: spy.Buffer, sizes: spy.Buffer, stats: spy.Buffer, shape) -> None:
    """stats[STAT_LARGEST_ROOT] = the smallest root of a component of stats[STAT_LARGEST_SIZE] voxels."""
    n = _require_volumes(shape, parent=parent, sizes=sizes)
    require(stats, STAT_COUNT, "stats")
    _run(device, "largest_root", n, shape, parent=parent, sizes=sizes, stats=stats)


def keep_components(device: spy.Device, labels: spy.Buffer, parent: spy.Buffer, sizes: spy.Buffer,
                    stats: spy.Buffer, kept: spy.Buffer, shape, threshold: int) -> None:
    """kept = labels in the largest component and in those of >= ``threshold`` voxels, else 0; box into stats."""
    n = _require_volumes(shape, labels=labels, parent=parent, sizes=sizes, kept=kept)
    require(stats, STAT_COUNT, "stats")
    _run(device, "keep_components", -(-n // RUN), shape, labels=labels, parent=parent, sizes=sizes, stats=stats, kept=kept,
         threshold=int(threshold))


def island_targets(device: spy.Device, parent: spy.Buffer, sizes: spy.Buffer, components: spy.Buffer,
                   component_sizes: spy.Buffer, targets: spy.Buffer, shape, threshold: int) -> None:
    """targets = 1 in class islands (``parent``/``sizes``) of < ``threshold`` voxels that are not a whole
    tumour component (``components``/``component_sizes``), else 0 (every voxel written)."""
    n = _require_volumes(shape, parent=parent, sizes=sizes, components=components, component_sizes=component_sizes,
                         targets=targets)
    _run(device, "island_targets", n, shape, parent=parent, sizes=sizes, components=components,
         component_sizes=component_sizes, targets=targets, threshold=int(threshold))


def hole_seeds(device: spy.Device, parent: spy.Buffer, flags: spy.Buffer, stats: spy.Buffer, shape,
               planar: bool) -> None:
    """flags[root] = 1 for background components that touch a face of the box (``flags`` zeroed by the caller)."""
    n = _require_volumes(shape, parent=parent, flags=flags)
    require(stats, STAT_COUNT, "stats")
    _run(device, "hole_seeds", n, shape, parent=parent, sizes=flags, stats=stats, planar=int(bool(planar)))


def hole_targets(device: spy.Device, parent: spy.Buffer, flags: spy.Buffer, targets: spy.Buffer, shape) -> None:
    """targets = 1 for background voxels of the box whose component has no flag (enclosed)."""
    n = _require_volumes(shape, parent=parent, flags=flags, targets=targets)
    _run(device, "hole_targets", n, shape, parent=parent, sizes=flags, targets=targets)


def edt_init(device: spy.Device, kept: spy.Buffer, targets: spy.Buffer, features: spy.Buffer, shape) -> None:
    """features[i] = i where kept[i] != 0 and targets[i] == 0 (known voxels), NO_VOXEL elsewhere."""
    n = _require_volumes(shape, kept=kept, targets=targets, features=features)
    _run(device, "edt_init", n, shape, kept=kept, targets=targets, features_out=features)


def edt_pass(device: spy.Device, features_in: spy.Buffer, features_out: spy.Buffer, stack: spy.Buffer,
             stats: spy.Buffer, shape, axis: int) -> None:
    """One pass of the feature transform along ``axis`` over the lines of the box (one thread per line)."""
    _require_volumes(shape, features_in=features_in, features_out=features_out, stack=stack)
    require(stats, STAT_COUNT, "stats")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    lines = voxel_count(shape) // int(shape[axis])
    _run(device, "edt_pass", lines, shape, features_in=features_in, features_out=features_out, stack=stack,
         stats=stats, axis=int(axis), count=lines)


def fill_targets(device: spy.Device, kept: spy.Buffer, targets: spy.Buffer, features: spy.Buffer, shape) -> None:
    """In place: kept[i] = kept[features[i]] for targets that have a feature."""
    n = _require_volumes(shape, kept=kept, targets=targets, features=features)
    _run(device, "fill_targets", n, shape, kept=kept, targets=targets, features_in=features)
