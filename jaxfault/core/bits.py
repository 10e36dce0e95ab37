"""Bit-level views of floating-point weights.

Lossless casts between float32/float16/bfloat16 and unsigned words, IEEE field extraction, bf16
truncation (bf16 = the top 16 bits of a float32 word), and a pytree <-> flat padded word vector
round trip whose padding never leaks back into the returned leaves.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check
from jaxfault.core.pytree import is_kernel, path_to_str

PyTree = Any

# float dtype -> (unsigned word dtype, exponent bits, mantissa bits)
_FORMATS = {
    np.dtype(np.float32): (np.dtype(np.uint32), 8, 23),
    np.dtype(jnp.float16): (np.dtype(np.uint16), 5, 10),
    np.dtype(jnp.bfloat16): (np.dtype(np.uint16), 8, 7),
}

BF16_MASK = np.uint32(0xFFFF0000)


def _float_format(dtype) -> tuple:
    dt = np.dtype(dtype)
    if dt not in _FORMATS:
        raise JaxfaultError(f"unsupported float dtype {dt}; expected float32, float16 or bfloat16")
    return _FORMATS[dt]


def float_to_bits(x: jax.Array) -> jax.Array:
    """Reinterpret a float32/float16/bfloat16 array as uint32/uint16/uint16 words (lossless)."""
    x = jnp.asarray(x)
    udt, _, _ = _float_format(x.dtype)
    return jax.lax.bitcast_convert_type(x, udt)


def bits_to_float(w: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Reinterpret unsigned words as floats of `dtype` (uint32 -> float32, uint16 -> f16/bf16)."""
    w = jnp.asarray(w)
    udt, _, _ = _float_format(dtype)
    check(np.dtype(w.dtype) == udt, f"words of dtype {w.dtype} cannot hold {np.dtype(dtype)}; need {udt}")
    return jax.lax.bitcast_convert_type(w, np.dtype(dtype))


def sign_field(w: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Sign bit (0/1) of words holding floats of `dtype`."""
    udt, e, m = _float_format(dtype)
    return (jnp.asarray(w) >> (e + m)) & 1


def exponent_field(w: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Biased exponent field of words holding floats of `dtype` (E(w) = (w >> 23) & 0xFF for fp32)."""
    udt, e, m = _float_format(dtype)
    return (jnp.asarray(w) >> m) & ((1 << e) - 1)


def mantissa_field(w: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Stored mantissa (fraction) field of words holding floats of `dtype`."""
    udt, e, m = _float_format(dtype)
    return jnp.asarray(w) & ((1 << m) - 1)


def truncate_bf16(w: jax.Array) -> jax.Array:
    """Keep the bf16 part of fp32 words: w & 0xFFFF0000 (truncation, as the Sparrow reference)."""
    w = jnp.asarray(w)
    check(w.dtype == jnp.uint32, f"truncate_bf16 expects uint32 words, got {w.dtype}")
    return w & BF16_MASK


def bf16_words(x: jax.Array) -> jax.Array:
    """float32 values -> uint32 fp32 words truncated to bf16."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        x = x.astype(jnp.float32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32) & BF16_MASK


@jax.jit
def _bf16_round_trip(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(bf16_words(x), jnp.float32)


def bf16_round_trip(x: jax.Array) -> jax.Array:
    """float32 values truncated to bf16 precision, returned as float32. Compiled (once per shape):
    run eagerly, each of its three operations would be dispatched on its own."""
    return _bf16_round_trip(jnp.asarray(x))


def widen_bf16(x: jax.Array) -> jax.Array:
    """bfloat16 -> float32 by a 16-bit shift of the word: the same values as ``x.astype(float32)``.

    XLA's CPU backend does not vectorise bf16 converts inside fused loops; integer shifts it does.
    """
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16,
                                        jnp.float32)


def narrow_to_bf16(y: jax.Array) -> jax.Array:
    """float32 -> bfloat16 rounded to nearest even by integer arithmetic on the word: the same bits
    as ``y.astype(bfloat16)`` (a NaN becomes the quiet NaN of its sign, subnormals are kept,
    overflow goes to infinity), but vectorised by XLA's CPU backend inside fused loops, where the
    native convert is not.
    """
    w = jax.lax.bitcast_convert_type(y, jnp.uint32)
    rounded = (w + jnp.uint32(0x7FFF) + ((w >> 16) & jnp.uint32(1))) >> 16
    rounded = jnp.where(jnp.isnan(y), ((w >> 16) & jnp.uint32(0x8000)) | jnp.uint32(0x7FC0), rounded)
    return jax.lax.bitcast_convert_type(rounded.astype(jnp.uint16), jnp.bfloat16)


class WordLayout(NamedTuple):
    """Where each selected leaf lives inside the flat word vector (static metadata)."""

    names: tuple          # leaf names in flatten order
    shapes: tuple         # leaf shapes
    dtypes: tuple         # leaf dtypes
    offsets: tuple        # start offset of each leaf in the flat vector
    n_values: int         # number of real (non-padding) words
    n_words: int          # padded length (multiple of block_size)
    block_size: int


def _selected_leaves(params: PyTree, select: Callable) -> list:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(p, x) for p, x in leaves if select(p, x)]


def padded_length(n: int, block_size: int, extra_block: bool = False) -> int:
    """Smallest multiple of block_size >= n (plus one more block when extra_block and n % B == 0,
    the Sparrow reference's padding)."""
    check(isinstance(block_size, (int, np.integer)) and block_size >= 1, f"block_size must be a positive integer, got {block_size!r}")
    blocks = -(-n // block_size)
    if extra_block and n % block_size == 0:
        blocks += 1
    return max(blocks, 1 if extra_block else 0) * block_size


def pytree_to_words(params: PyTree, block_size: int, *, select: Callable = is_kernel,
                    extra_block: bool = False, truncate: bool = True) -> tuple[jax.Array, WordLayout]:
    """Flatten the selected float leaves (tree_flatten order, row-major) into one uint32 fp32-word
    vector, truncated to bf16 when `truncate`, zero-padded to a multiple of block_size.

    Returns (words, layout); `words_to_pytree(params, words, layout)` is the inverse.
    """
    chosen = _selected_leaves(params, select)
    names, shapes, dtypes, offsets, parts = [], [], [], [], []
    off = 0
    for p, x in chosen:
        x = jnp.asarray(x)
        check(jnp.issubdtype(x.dtype, jnp.floating), f"leaf {path_to_str(p)} has non-float dtype {x.dtype}")
        names.append(path_to_str(p))
        shapes.append(tuple(x.shape))
        dtypes.append(np.dtype(x.dtype))
        offsets.append(off)
        off += int(x.size)
        parts.append(jnp.ravel(x).astype(jnp.float32))
    n_words = padded_length(off, block_size, extra_block)
    flat = jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32)
    words = jax.lax.bitcast_convert_type(flat, jnp.uint32)
    if truncate:
        words = words & BF16_MASK
    words = jnp.pad(words, (0, n_words - off))
    layout = WordLayout(tuple(names), tuple(shapes), tuple(dtypes), tuple(offsets), off, n_words, block_size)
    return words, layout


def words_to_pytree(params: PyTree, words: jax.Array, layout: WordLayout, *,
                    select: Callable = is_kernel, dtype=None) -> PyTree:
    """Put the real words of `words` back into the selected leaves of `params` (padding dropped).

    Leaves get their original dtype, or `dtype` when given (e.g. jnp.bfloat16 for bf16 inference).
    Unselected leaves are returned unchanged.
    """
    check(words.shape[-1] == layout.n_words,
          f"word vector has length {words.shape[-1]}, layout expects {layout.n_words}")
    values = jax.lax.bitcast_convert_type(words[..., :layout.n_values], jnp.float32)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, i = [], 0
    for p, x in leaves:
        if select(p, x):
            off, shape = layout.offsets[i], layout.shapes[i]
            size = int(np.prod(shape, dtype=np.int64))
            leaf = jnp.reshape(values[off:off + size], shape)
            out.append(leaf.astype(dtype if dtype is not None else layout.dtypes[i]))
            i += 1
        else:
            out.append(x)
    check(i == len(layout.names), f"params have {i} selected leaves, layout has {len(layout.names)}")
    return jax.tree_util.tree_unflatten(treedef, out)


def check_finite_words(words, name: str = "weights") -> None:
    """Raise JaxfaultError if fp32 words contain NaN or Inf (exponent 255); skipped under tracing."""
    if isinstance(words, jax.core.Tracer):
        return
    w = np.asarray(words)
    bad = np.flatnonzero(((w >> 23) & 0xFF) == 0xFF)
    if bad.size:
        i = int(bad[0])
        val = np.asarray(w[i:i + 1]).view(np.float32)[0]
        raise JaxfaultError(f"{name} contain {bad.size} NaN/Inf value(s), first {val} at index {i}")
