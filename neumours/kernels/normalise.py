"""Wrappers of ``slang/normalise_kernels.slang``: brain statistics and the z-score, in place."""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "normalise_kernels.slang"


def partial_stride(num_modalities: int) -> int:
    """float64 values per thread of :func:`brain_partials`: count, sums, sums of squares."""
    return 1 + 2 * int(num_modalities)


def brain_partials(device: spy.Device, volumes: spy.Buffer, case_table: spy.Buffer, case_id: int,
                   partials: spy.Buffer, threads: int, num_modalities: int) -> None:
    """Thread t sums brain voxels t, t + T, ... of case ``case_id`` into ``partials`` (T, stride) float64."""
    require(partials, threads * partial_stride(num_modalities), "partials", element_bytes=8)
    load_kernel(device, FILE, "brain_partials", {"NUM_MODALITIES": int(num_modalities)})(
        threads, params={"volumes": volumes, "case_table": case_table, "partials": partials,
                         "case_id": int(case_id), "threads": int(threads)})


def apply_zscore(device: spy.Device, volumes: spy.Buffer, case_table: spy.Buffer, case_id: int,
                 shift_scale: spy.Buffer, voxels: int, num_modalities: int) -> None:
    """In place: brain voxels become (x - mean) * (1 / std) per modality, the rest 0.

    Args:
        shift_scale: (2, num_modalities) float32: means, then inverse standard deviations.
        voxels: X * Y * Z of the case.
    """
    require(shift_scale, 2 * num_modalities, "shift_scale")
    load_kernel(device, FILE, "apply_zscore", {"NUM_MODALITIES": int(num_modalities)})(
        voxels, params={"volumes": volumes, "case_table": case_table, "shift_scale": shift_scale,
                        "case_id": int(case_id)})
