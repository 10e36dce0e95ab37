"""Which weights to write-verify (SPEC 2.2): per-weight sensitivity scores and a global top-fraction mask.

Scores are computed for conv/dense kernels only. One global threshold over all kernels picks
exactly round(mask_p * n_weights) weights (ties broken by flatten order), so the protected
fraction equals mask_p within half a weight.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxfault.errors import JaxfaultError, check_probability
from jaxfault.pytree import flatten_kernels, is_kernel, unflatten_kernels

PyTree = Any

METHODS = ("SM", "second", "magnitude", "random", "saliency")
DEFAULT_ALPHA = {"SM": 1e6, "saliency": 2.0}
NEEDS_CURVATURE = ("SM", "second", "saliency")


def canonical_method(method: str) -> str:
    """Return the canonical spelling of a selection method (case-insensitive), else JaxfaultError."""
    for m in METHODS:
        if isinstance(method, str) and method.lower() == m.lower():
            return m
    raise JaxfaultError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")


def sensitivity_scores(params: PyTree, method: str = "SM", curvature: PyTree | None = None, *,
                       alpha: float | None = None, key: jax.Array | None = None) -> PyTree:
    """Per-weight scores (higher = verify first), a pytree like params (non-kernel leaves zero).

    - SM: |d2L/dw2| * max|W_layer| * alpha + |w| / max|W_layer|  (alpha default 1e6): the
      reference computes the score after dividing each layer's weights by max|W_layer|; the
      curvature is the one of the original model.
    - second: |d2L/dw2|.   magnitude: |w|.   random: standard normal scores (needs key).
    - saliency: |d2L/dw2| * |w|^alpha (alpha default 2, the Optimal-Brain-Damage saliency).
    curvature: a pytree like params (e.g. from jaxfault.curvature), needed by SM/second/saliency.
    """
    method = canonical_method(method)
    if alpha is None:
        alpha = DEFAULT_ALPHA.get(method, 0.0)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise JaxfaultError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(alpha):
        raise JaxfaultError(f"alpha must be finite, got {alpha!r}")
    if method in NEEDS_CURVATURE:
        if curvature is None:
            raise JaxfaultError(f"method {method} needs a curvature pytree")
        try:
            jax.tree_util.tree_map(lambda a, b: None, params, curvature)
        except ValueError as e:
            raise JaxfaultError(f"curvature must be a pytree shaped like params: {e}") from None
    if method == "random" and key is None:
        raise JaxfaultError("method random needs a PRNG key")

    zero_others = lambda p, x, s: s if is_kernel(p, x) else jnp.zeros_like(x)
    if method == "magnitude":
        scores = jax.tree_util.tree_map(jnp.abs, params)
    elif method == "random":
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, max(len(leaves), 1))
        scores = jax.tree_util.tree_unflatten(
            treedef, [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])
    else:
        h = jax.tree_util.tree_map(lambda c: jnp.abs(c).astype(jnp.float32), curvature)
        if method == "second":
            scores = h
        elif method == "saliency":
            scores = jax.tree_util.tree_map(lambda c, w: c * jnp.abs(w) ** alpha, h, params)
        else:  # SM
            def sm(c, w):
                scale = jnp.max(jnp.abs(w))
                safe = jnp.where(scale > 0, scale, 1.0)
                return c * scale * alpha + jnp.abs(w) / safe
            scores = jax.tree_util.tree_map(sm, h, params)
    return jax.tree_util.tree_map_with_path(zero_others, params, scores)


def select_top_fraction(scores: PyTree, params: PyTree, mask_p: float) -> tuple[PyTree, float, float]:
    """Boolean mask of the round(mask_p * n) highest-scoring kernel weights over all layers.

    Returns (mask, fraction_protected, threshold): mask is a pytree like params (kernel leaves
    bool arrays, other leaves all-False); threshold is the lowest selected score (+inf if none).
    """
    mask_p = check_probability("mask_p", mask_p)
    flat = flatten_kernels(scores)
    n = int(flat.shape[0])
    if n == 0:
        raise JaxfaultError("params contain no conv/dense kernels to protect")
    if not bool(jnp.all(jnp.isfinite(flat))):
        raise JaxfaultError("sensitivity scores contain NaN or infinity")
    k = int(math.floor(mask_p * n + 0.5))
    order = jnp.argsort(-flat, stable=True)
    sel = jnp.zeros((n,), bool).at[order[:k]].set(True)
    threshold = float(flat[order[k - 1]]) if k > 0 else float("inf")
    mask = unflatten_kernels(jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), bool), params), sel)
    return mask, k / n, threshold


def protection_mask(params: PyTree, method: str, mask_p: float, curvature: PyTree | None = None, *,
                    alpha: float | None = None, key: jax.Array | None = None) -> tuple[PyTree, float]:
    """Scores with `method`, then the global top mask_p fraction: returns (mask, fraction protected)."""
    check_probability("mask_p", mask_p)
    scores = sensitivity_scores(params, method, curvature, alpha=alpha, key=key)
    mask, frac, _ = select_top_fraction(scores, params, mask_p)
    return mask, frac


def full_mask(params: PyTree, value: bool) -> PyTree:
    """Mask with every kernel weight set to value (True = all write-verified)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full(jnp.shape(x), bool(value) and is_kernel(p, x), bool), params)


def mask_fraction(mask: PyTree, params: PyTree) -> float:
    """Fraction of kernel weights that mask marks as protected."""
    flat = flatten_kernels(jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), mask))
    return float(jnp.mean(flat)) if flat.shape[0] else 0.0
