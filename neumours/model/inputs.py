"""The INR's inputs read on the device: normalised coordinates and modality patches.

Normalised volumes of one or more cases live in one flat device buffer with a
small case table (offset, X, Y, Z per case); ``slang/patch_kernels.slang``
turns voxel positions (training samples) or a chunk of a regular grid (volume
caching) into coordinates (N, 3) and patches (N, 4 * 27) without a host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.device import ScratchBuffers, upload
from neumours.kernels import patch
from neumours.model.config import INRConfig


@dataclass
class CaseVolumes:
    """Normalised (modalities, X, Y, Z) volumes of several cases in one device buffer.

    Attributes:
        volumes: flat float32 buffer, the cases one after another, C-order.
        case_table: uint32 buffer (num_cases, 4): float offset, X, Y, Z.
        shapes: (X, Y, Z) of every case.
    """

    device: spy.Device
    volumes: spy.Buffer
    case_table: spy.Buffer
    shapes: list[tuple[int, int, int]]
    num_modalities: int

    @classmethod
    def upload(cls, device: spy.Device, images: Sequence[np.ndarray], scratch: ScratchBuffers | None = None,
               name: str = "case.volumes") -> "CaseVolumes":
        """Copy normalised volumes, each (modalities, X, Y, Z) float32, to the device.

        One case goes up as it is: no concatenation copy (~140 MB for BraTS) and no host-side
        reordering of Fortran-ordered NIfTI data (the upload reorders, on CUDA on the GPU).
        With ``scratch``, into its buffer ``name`` (no new allocation from the second case on).
        """
        images = [np.asarray(im, dtype=np.float32) for im in images]
        if not images or any(im.ndim != 4 or im.shape[0] != images[0].shape[0] for im in images):
            raise ValueError("volumes must be a non-empty list of (modalities, X, Y, Z) arrays, got shapes "
                             f"{[im.shape for im in images]}")
        table, offset = [], 0
        for im in images:
            table.append((offset, *im.shape[1:]))
            offset += im.size
        if offset >= 2**32:
            raise ValueError("volumes exceed 2^32 floats; use fewer cases per pool")
        flat = images[0] if len(images) == 1 else np.concatenate([im.reshape(-1) for im in images])
        volumes = scratch.upload(name, flat) if scratch is not None else upload(device, flat)
        return cls(device, volumes, upload(device, np.array(table, np.uint32), np.uint32),
                   [tuple(int(s) for s in im.shape[1:]) for im in images], images[0].shape[0])

def gather_inputs(config: INRConfig, vols: CaseVolumes, positions: spy.Buffer, case_ids: spy.Buffer,
                  count: int, coords: spy.Buffer, patches: spy.Buffer) -> None:
    """Coordinates and patches for ``count`` points given as voxel positions.

    Args:
        positions: (count, 3) float32 voxel positions (integral = on the grid;
            otherwise patches are trilinear samples at +-1 voxel).
        case_ids: (count,) uint32 index into ``vols``.
        coords: output (count, 3). patches: output (count, config.patch_dim).
    """
    patch.gather_inputs(vols.device, vols.volumes, vols.case_table, positions, case_ids, coords, patches, count,
                        config.num_modalities, config.patch_size)


def grid_inputs(config: INRConfig, vols: CaseVolumes, case_id: int, grid: Sequence[int], start: int,
                count: int, coords: spy.Buffer, patches: spy.Buffer) -> None:
    """Coordinates and patches for grid points ``start .. start + count`` (C-order) of one case.

    ``grid`` is the output grid shape: the case's own shape for plain caching,
    or an S-times finer grid of the same field of view (super-resolution),
    whose point i sits at voxel position i * (D - 1) / (G - 1).
    """
    dims = np.array(vols.shapes[case_id], np.float64)
    grid = np.array(grid, np.int64)
    step = np.where(grid > 1, (dims - 1) / np.maximum(grid - 1, 1), 0.0).astype(np.float32)
    patch.grid_inputs(vols.device, vols.volumes, vols.case_table, case_id, grid, step, start, count, coords, patches,
                      config.num_modalities, config.patch_size)
