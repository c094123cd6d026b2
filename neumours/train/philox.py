"""Philox4x32-10 in numpy: the reference of ``slang/random.slang``, bit for bit.

A counter-based generator (Salmon et al., SC'11; curand's and JAX's): four uniform 32-bit words
are a pure function of a 128-bit counter and a 64-bit key, so any draw can be recomputed
on its own, on any device, in any order. Vectorised over counters; integer arithmetic only.
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)   # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85                          # key schedule (Weyl) increments
ROUNDS = 10


def philox4x32(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of ``counters`` (..., 4) uint32 under ``key`` (two 32-bit words): (..., 4) uint32."""
    counters = np.asarray(counters)
    if counters.shape[-1:] != (4,):
        raise ValueError(f"counters must end in an axis of 4 words, got shape {counters.shape}")
    c0, c1, c2, c3 = (counters[..., j].astype(np.uint64) for j in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for round_ in range(ROUNDS):
        if round_:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0, p1 = _M0 * c0, _M1 * c2   # below 2^64: no wrap
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK, \
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def seed_key(seed: int) -> tuple[int, int]:
    """The key of a seed in [0, 2^64): its low and high 32-bit halves."""
    seed = int(seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def uniform_below(hi: np.ndarray, lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Integers uniform in [0, n): floor(((hi, lo) / 2^64) * n), exact in 64-bit integers (int64 result).

    Each of the n values has probability 1/n within n / 2^64 (a float or a 32-bit fraction would
    give up to n / 2^32: 1/1500 for a 160 x 160 x 112 volume).
    """
    n = np.asarray(n).astype(np.uint64)
    scaled = hi.astype(np.uint64) * n + ((lo.astype(np.uint64) * n) >> np.uint64(32))
    return (scaled >> np.uint64(32)).astype(np.int64)
