"""``augment_inputs`` in float64 numpy: the reference the Slang kernel is tested against.

Same table layout (:mod:`neumours.kernels.augment`), same formulas
(slang/augment_kernels.slang) and the same noise source (the PCG hash of
(seed, value index)), so the two agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from neumours.kernels import augment as layout

_MASK = np.uint64(0xFFFFFFFF)


def pcg_hash(v: np.ndarray) -> np.ndarray:
    """The kernel's 32-bit PCG output hash, element-wise on uint32 values."""
    v = np.asarray(v, np.uint64) & _MASK
    state = (v * np.uint64(747796405) + np.uint64(2891336453)) & _MASK
    word = (((state >> ((state >> np.uint64(28)) + np.uint64(4))) ^ state) * np.uint64(277803737)) & _MASK
    return ((word >> np.uint64(22)) ^ word) & _MASK


def standard_normal(keys: np.ndarray, seed: int) -> np.ndarray:
    """Box-Muller normals from two hashes of each key, as the kernel draws them."""
    h1 = pcg_hash(np.asarray(keys, np.uint64) ^ pcg_hash(np.array(seed & 0xFFFFFFFF)))
    h2 = pcg_hash((h1 + np.uint64(0x9E3779B9)) & _MASK)
    u1 = ((h1 >> np.uint64(8)).astype(np.float64) + 0.5) / 16777216.0
    u2 = ((h2 >> np.uint64(8)).astype(np.float64) + 0.5) / 16777216.0
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def augment_reference(coords: np.ndarray, patches: np.ndarray, case_ids: np.ndarray, table: np.ndarray,
                      flags: int, seed: int, num_modalities: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Augmented (N, 3) coordinates and (N, C * p^3) patches, float64.

    Args:
        coords: (N, 3); patches: (N, C * p^3) as gather_inputs writes them;
        case_ids: (N,) rows of ``table`` (slots, stride).
    """
    n, p = len(coords), patch_size
    t = np.asarray(table, np.float64)[np.asarray(case_ids, np.int64)]
    c = np.asarray(coords, np.float64)
    v = np.asarray(patches, np.float64).reshape(n, num_modalities, p, p, p)
    flip = (t[:, layout.FLIP:layout.FLIP + 3] > 0.5) & bool(flags & layout.FLAG_FLIP)
    cf = np.where(flip, -c, c)
    for axis in range(3):
        v = np.where(flip[:, axis, None, None, None, None], np.flip(v, axis=2 + axis), v)
    out_c = cf
    if flags & layout.FLAG_COORDS:
        a = t[:, layout.AFFINE:layout.AFFINE + 9].reshape(n, 3, 3)
        out_c = np.einsum("nij,nj->ni", a, cf) + t[:, layout.AFFINE + 9:layout.AFFINE + 12]
        for k in range(layout.WARP_TERMS):
            w = layout.WARP + k * layout.WARP_STRIDE
            s = np.sin(np.sum(t[:, w:w + 3] * cf, axis=1) + t[:, w + 3])
            out_c = out_c + s[:, None] * t[:, w + 4:w + 7]
    out = v.reshape(n, num_modalities, -1).copy()
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    monomials = np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)
    keys = np.arange(out.size, dtype=np.uint64).reshape(out.shape)
    for m in range(num_modalities):
        b = layout.SLOT_HEAD + m * layout.MODALITY_STRIDE
        row = t[:, b:b + layout.MODALITY_STRIDE]
        values = out[:, m]
        nonzero = values != 0
        if flags & layout.FLAG_INTENSITY:
            lo, hi = row[:, layout.MOD_LO, None], row[:, layout.MOD_HI, None]
            span = np.maximum(hi - lo, 1e-6)
            u = np.clip((values - lo) / span, 0.0, 1.0) ** row[:, layout.MOD_GAMMA, None]
            bias = np.exp(np.sum(row[:, layout.MOD_BIAS:layout.MOD_BIAS + layout.BIAS_TERMS] * monomials, axis=1))
            u = u * row[:, layout.MOD_SCALE, None] * bias[:, None]
            values = np.where(nonzero, lo + span * u + row[:, layout.MOD_SHIFT, None], values)
        if flags & layout.FLAG_NOISE:
            noise = row[:, layout.MOD_NOISE, None] * standard_normal(keys[:, m], seed)
            values = np.where(nonzero, values + noise, values)
        if flags & layout.FLAG_DROPOUT:
            values = np.where(row[:, layout.MOD_KEEP, None] < 0.5, 0.0, values)
        out[:, m] = values
    return out_c, out.reshape(n, -1)
