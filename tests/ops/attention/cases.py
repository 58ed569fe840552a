"""Inputs shared by the attention families' tests: random q, k, v and key-padding masks."""

import numpy as np

ATOL = 1e-4
q4 = np.zeros((1, 8, 2, 4), np.float32)  # the calls that check arguments


def qkv(seed, b, lq, lk, h, d, dv=None, hkv=None):
    """Random float32 q [b, lq, h, d], k [b, lk, hkv, d], v [b, lk, hkv, dv] (hkv: GQA groups)."""
    rng = np.random.default_rng(seed)
    hkv = hkv or h
    q = rng.standard_normal((b, lq, h, d)).astype(np.float32)
    k = rng.standard_normal((b, lk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, lk, hkv, dv or d)).astype(np.float32)
    return q, k, v


def key_mask(seed, b, length):
    """Key-padding mask with at least one real token per row."""
    lengths = np.random.default_rng(seed + 1).integers(1, length + 1, size=b)
    return np.arange(length)[None, :] < lengths[:, None]
