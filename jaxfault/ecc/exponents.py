"""Exponent-difference analysis of SPEC 1.5: how many exponent steps a block of B weights spans.

The weights (bf16 view) are concatenated leaf after leaf (a partial block carries over into the
next leaf, as the reference does) and cut into blocks of B; the last partial block is dropped
unless include_partial. Two zero policies:
  * "reference": every zero word gets exponent 255 before max and min, and only differences 0..128
    are counted, so a block holding an exact zero usually drops out (it stays in when all its
    nonzero weights have exponents >= 127, i.e. |w| >= 1: then 255 - min_e <= 128);
  * "exclude-zeros": zeros are ignored for max and min; all-zero blocks drop out.
"""
from __future__ import annotations

import numpy as np

from jaxfault.errors import check

MAX_DIFF = 128


def block_differences(words, block_size: int = 64, *, exclude_zeros: bool = False,
                      include_partial: bool = False) -> np.ndarray:
    """max_e - min_e per block of fp32 words (bf16 view); -1 marks a block that drops out."""
    check(isinstance(block_size, (int, np.integer)) and not isinstance(block_size, bool) and block_size >= 2,
          f"block_size must be an integer >= 2, got {block_size!r}")
    w = np.asarray(words)
    check(w.dtype == np.uint32 and w.ndim == 1, f"words must be a 1-D uint32 array, got {w.dtype} {w.shape}")
    w = w & np.uint32(0xFFFF0000)
    n = (w.size // block_size) * block_size
    rest = w.size - n
    blocks = w[:n].reshape(-1, block_size)
    e = ((blocks >> 23) & 0xFF).astype(np.int64)
    zero = (blocks & np.uint32(0x7FFF0000)) == 0
    parts = [(e, zero)]
    if include_partial and rest:
        tail = w[n:]
        parts.append((((tail >> 23) & 0xFF).astype(np.int64)[None], ((tail & np.uint32(0x7FFF0000)) == 0)[None]))
    out = []
    for e, zero in parts:
        if exclude_zeros:
            mx = np.where(zero, -1, e).max(axis=1)
            mn = np.where(zero, 256, e).min(axis=1)
            diff = np.where(zero.all(axis=1), -1, mx - mn)
        else:
            ez = np.where(zero, 255, e)
            diff = ez.max(axis=1) - ez.min(axis=1)
            diff = np.where(diff <= MAX_DIFF, diff, -1)
        out.append(diff)
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def histogram(words, block_size: int = 64, *, exclude_zeros: bool = False, include_partial: bool = False) -> dict:
    """Counts and proportions of blocks by exponent difference 0..128, with the totals."""
    d = block_differences(words, block_size, exclude_zeros=exclude_zeros, include_partial=include_partial)
    counted = d[d >= 0]
    counts = np.bincount(counted, minlength=MAX_DIFF + 1)[:MAX_DIFF + 1]
    total = int(counts.sum())
    props = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    return {"block_size": int(block_size), "zero_policy": "exclude-zeros" if exclude_zeros else "reference",
            "blocks": int(d.size), "blocks_counted": total, "blocks_dropped": int(d.size - total),
            "counts": counts.astype(int).tolist(), "proportions": props.astype(float).tolist(),
            "share_within_15": float(counts[:16].sum() / total) if total else 0.0,
            "share_within_31": float(counts[:32].sum() / total) if total else 0.0}
