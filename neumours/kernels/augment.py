"""Wrapper of ``slang/augment_kernels.slang``: training-time augmentation of coordinates and patches.

The per-slot table layout is defined here, once, and reaches Slang as
compile-time constants. One row per pool slot (float32):

* ``FLIP`` .. +3: 1.0 where the case is mirrored along that array axis;
* ``AFFINE`` .. +12: a 3 x 3 matrix (row-major) then a translation, on the coordinate;
* ``WARP`` .. +``WARP_TERMS * WARP_STRIDE``: per term a frequency vector (3), a phase
  and a displacement vector (3);
* ``SLOT_HEAD`` + m * ``MODALITY_STRIDE``: modality m's scale, shift, gamma, lo, hi,
  keep (0: dropped), noise sigma, then the 9 coefficients of the log-bias polynomial
  (x, y, z, x², y², z², xy, xz, yz) in the image coordinate.
"""

from __future__ import annotations

import slangpy as spy

from neumours.device import load_kernel
from neumours.kernels.checks import require

FILE = "augment_kernels.slang"

FLIP, AFFINE, WARP = 0, 3, 15
WARP_TERMS, WARP_STRIDE = 2, 7
SLOT_HEAD = WARP + WARP_TERMS * WARP_STRIDE
MOD_SCALE, MOD_SHIFT, MOD_GAMMA, MOD_LO, MOD_HI, MOD_KEEP, MOD_NOISE, MOD_BIAS = range(8)
BIAS_TERMS = 9
MODALITY_STRIDE = MOD_BIAS + BIAS_TERMS

#: Groups of transforms (bits of ``flags``); a group switched off copies its inputs exactly.
FLAG_FLIP, FLAG_COORDS, FLAG_INTENSITY, FLAG_NOISE, FLAG_DROPOUT = 1, 2, 4, 8, 16


def slot_stride(num_modalities: int) -> int:
    """Floats per table row."""
    return SLOT_HEAD + int(num_modalities) * MODALITY_STRIDE


def _constants(num_modalities: int, patch_size: int) -> dict:
    return {"NUM_MODALITIES": int(num_modalities), "PATCH_SIZE": int(patch_size), "SLOT_HEAD": SLOT_HEAD,
            "MODALITY_STRIDE": MODALITY_STRIDE, "FLIP": FLIP, "AFFINE": AFFINE, "WARP": WARP,
            "WARP_TERMS": WARP_TERMS, "WARP_STRIDE": WARP_STRIDE, "MOD_SCALE": MOD_SCALE, "MOD_SHIFT": MOD_SHIFT,
            "MOD_GAMMA": MOD_GAMMA, "MOD_LO": MOD_LO, "MOD_HI": MOD_HI, "MOD_KEEP": MOD_KEEP,
            "MOD_NOISE": MOD_NOISE, "MOD_BIAS": MOD_BIAS, "FLAG_FLIP": FLAG_FLIP, "FLAG_COORDS": FLAG_COORDS,
            "FLAG_INTENSITY": FLAG_INTENSITY, "FLAG_NOISE": FLAG_NOISE, "FLAG_DROPOUT": FLAG_DROPOUT}


def augment_inputs(device: spy.Device, coords_in: spy.Buffer, patches_in: spy.Buffer, case_ids: spy.Buffer,
                   table: spy.Buffer, slots: int, coords_out: spy.Buffer, patches_out: spy.Buffer, count: int,
                   flags: int, seed: int, num_modalities: int, patch_size: int) -> None:
    """Augmented coordinates (count, 3) and patches (count, C * p^3) of ``count`` gathered points.

    Args:
        case_ids: (count,) uint32 slots, rows of ``table`` (slots, :func:`slot_stride`).
        flags: the ``FLAG_*`` groups to apply. seed: noise seed (uint32).
    """
    patch_dim = num_modalities * patch_size**3
    require(coords_in, 3 * count, "coords_in")
    require(patches_in, patch_dim * count, "patches_in")
    require(case_ids, count, "case_ids")
    require(table, slots * slot_stride(num_modalities), "table")
    require(coords_out, 3 * count, "coords_out")
    require(patches_out, patch_dim * count, "patches_out")
    load_kernel(device, FILE, "augment_inputs", _constants(num_modalities, patch_size))(
        count * patch_dim, params={"coords_in": coords_in, "patches_in": patches_in, "case_ids": case_ids,
                                   "table": table, "coords_out": coords_out, "patches_out": patches_out,
                                   "count": int(count), "flags": int(flags), "seed": int(seed) & 0xFFFFFFFF})
