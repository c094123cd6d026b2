"""Wrappers of ``slang/patch_kernels.slang``: the INR's inputs (coordinates, modality patches) on the device.

Volumes of one or more cases sit in one flat float32 buffer with a uint32
case table of (offset, X, Y, Z) rows (:class:`neumours.model.inputs.CaseVolumes`).
"""

from __future__ import annotations

from typing import Sequence

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require, uses_groupshared

FILE = "patch_kernels.slang"


def _constants(device: spy.Device, num_modalities: int, patch_size: int) -> dict:
    """The kernel's sizes, and the values each thread writes: one on a GPU (neighbouring threads write
    neighbouring floats), a whole point's on the CPU target (threads run one after another there)."""
    patch_dim = num_modalities * patch_size**3
    return {"NUM_MODALITIES": int(num_modalities), "PATCH_SIZE": int(patch_size),
            "VALUES_PER_THREAD": 1 if uses_groupshared(device) else patch_dim}


def gather_inputs(device: spy.Device, volumes: spy.Buffer, case_table: spy.Buffer, positions: spy.Buffer,
                  case_ids: spy.Buffer, coords: spy.Buffer, patches: spy.Buffer, count: int, num_modalities: int,
                  patch_size: int) -> None:
    """Coordinates (count, 3) and patches (count, C * p^3) of points given as voxel positions.

    Args:
        positions: (count, 3) float32 voxel positions (integral: on the grid; otherwise
            trilinear samples at +-1 voxel). case_ids: (count,) uint32 rows of ``case_table``.
    """
    patch_dim = num_modalities * patch_size**3
    require(positions, 3 * count, "positions")
    require(case_ids, count, "case_ids")
    require(coords, 3 * count, "coords")
    require(patches, patch_dim * count, "patches")
    constants = _constants(device, num_modalities, patch_size)
    load_kernel(device, FILE, "gather_inputs", constants)(
        count * patch_dim // constants["VALUES_PER_THREAD"], params={"volumes": volumes, "case_table": case_table, "positions": positions,
                                   "case_ids": case_ids, "coords": coords, "patches": patches, "count": int(count)})


def grid_inputs(device: spy.Device, volumes: spy.Buffer, case_table: spy.Buffer, case_id: int, grid: Sequence[int],
                step: Sequence[float], start: int, count: int, coords: spy.Buffer, patches: spy.Buffer,
                num_modalities: int, patch_size: int) -> None:
    """Coordinates and patches of grid points ``start .. start + count`` (C-order) of one case.

    Args:
        grid: output grid (G0, G1, G2). step: (3,) voxel position per grid index
            (1 on the case's own grid, below 1 for a finer grid of the same field of view).
    """
    patch_dim = num_modalities * patch_size**3
    require(coords, 3 * count, "coords")
    require(patches, patch_dim * count, "patches")
    constants = _constants(device, num_modalities, patch_size)
    load_kernel(device, FILE, "grid_inputs", constants)(
        count * patch_dim // constants["VALUES_PER_THREAD"], params={"volumes": volumes, "case_table": case_table, "coords": coords,
                                   "patches": patches, "case_id": int(case_id), "grid": [int(g) for g in grid],
                                   "step": [float(s) for s in step], "start": int(start), "count": int(count)})
