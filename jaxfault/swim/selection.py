"""Which weights to write-verify: per-weight sensitivity scores and one global top-fraction mask.

The scores are those of the SWIM paper's code. That code first normalises every conv/dense layer
by its scale s = max|W| (it stores W/s and multiplies the layer's output by s), then runs its
second-order backward pass, so the curvature it holds for a weight is the one with respect to
the normalised weight, s^2 * d2L/dw2. Before scoring it adds twice the gradient of the loss with
respect to the normalised weight, 2 * s * dL/dw, where dL/dw is the gradient of the batch-mean
cross-entropy summed over the batches of the curvature pass. With

    buffer = s^2 * C + 2 * s * G      (C: diagonal curvature of the summed cross-entropy,
                                       G: sum over batches of the batch-mean gradient)

the scores (higher = verify first) are

- "SM":        |buffer| * alpha + |w| / s      (alpha = 1e6: |w|/s only breaks ties)
- "second":    |buffer|
- "magnitude": |w| / s                          (the normalised magnitude)
- "saliency":  |buffer| * |w / s|^alpha         (alpha = 2 by default here)
- "random":    standard normal scores from an explicit typed key.

One global threshold over all kernels (biases and batch-norm leaves are never verified) picks
the weights: by default exactly round(mask_p * n) of them (ties broken by flatten order);
threshold="quantile" keeps the code's rule instead (scores strictly above the linearly
interpolated (1 - mask_p) quantile).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check_probability
from jaxfault.core.pytree import flatten_kernels, is_kernel, map_kernels_with_index, unflatten_kernels

PyTree = Any

METHODS = ("SM", "second", "magnitude", "saliency", "random")
DEFAULT_ALPHA = {"SM": 1e6, "saliency": 2.0}
NEEDS_CURVATURE = ("SM", "second", "saliency")
CURVATURES = ("becker-lecun", "exact", "ggn", "hutchinson")
THRESHOLDS = ("count", "quantile")


def canonical_method(method: str) -> str:
    """Return the canonical spelling of a selection method (case-insensitive), else JaxfaultError."""
    for m in METHODS:
        if isinstance(method, str) and method.lower() == m.lower():
            return m
    raise JaxfaultError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")


def check_typed_key(key, what: str = "key") -> jax.Array:
    """key must be a typed jax.random.key (not a raw uint32 PRNGKey)."""
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()):
        raise JaxfaultError(f"{what} must be a typed scalar key from jax.random.key(seed), got {key!r}")
    return key


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise JaxfaultError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_alpha(method: str, alpha) -> float:
    if alpha is None:
        return DEFAULT_ALPHA.get(method, 0.0)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise JaxfaultError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(alpha):
        raise JaxfaultError(f"alpha must be finite, got {alpha!r}")
    return alpha


def layer_scale(w: jax.Array) -> jax.Array:
    """s = max|W| of a kernel (1 for an all-zero kernel, where the normalisation is undefined)."""
    s = jnp.max(jnp.abs(w)).astype(jnp.float32)
    return jnp.where(s > 0, s, 1.0)


def _per_kernel(fn, params: PyTree, *others: PyTree) -> PyTree:
    """fn(w, *matching leaves) on kernels, zeros of the leaf's shape elsewhere."""
    return jax.tree_util.tree_map_with_path(
        lambda p, w, *o: fn(w, *o) if is_kernel(p, w) else jnp.zeros(jnp.shape(w), jnp.float32), params, *others)


def _check_like(params: PyTree, other: PyTree, name: str) -> None:
    try:
        jax.tree_util.tree_map(lambda a, b: None, params, other)
    except ValueError as e:
        raise JaxfaultError(f"{name} must be a pytree shaped like params: {e}") from None


# ------------------------------------------------------------------------------ the two passes
def _split_variables(variables: PyTree) -> tuple[PyTree, dict]:
    if not isinstance(variables, dict) or "params" not in variables:
        raise JaxfaultError("variables must be a dict with a 'params' collection")
    rest = {k: v for k, v in variables.items() if k not in ("params", "write_verify")}
    return variables["params"], rest


def _check_data(images, labels) -> tuple[np.ndarray, np.ndarray]:
    n = len(images)
    if n == 0:
        raise JaxfaultError("the selection needs at least one training image")
    if len(labels) != n:
        raise JaxfaultError(f"images and labels differ in length: {n} vs {len(labels)}")
    return images, labels


def loss_curvature(model, variables: PyTree, images, labels, *, kind: str = "becker-lecun",
                   key: jax.Array | None = None, hutchinson_samples: int = 200) -> PyTree:
    """Diagonal curvature d2L/dw2 of the cross-entropy summed over (images, labels), like params.

    kind: "becker-lecun" (the SWIM code's second-order backward pass, the default), "exact"
    (exact Hessian diagonal, small models only), "ggn" (exact Gauss-Newton diagonal) or
    "hutchinson" (hutchinson_samples Rademacher probes, needs a typed key).
    """
    from jaxfault.swim import curvature as cv

    if kind not in CURVATURES:
        raise JaxfaultError(f"unknown curvature {kind!r}; choose one of {', '.join(CURVATURES)}")
    images, labels = _check_data(images, labels)
    params, rest = _split_variables(variables)
    if kind == "becker-lecun":
        return cv.becker_lecun_diag(model, {"params": params, **rest}, images, batch_size=min(1024, len(images)))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    out = lambda p, xb: model.apply({"params": p, **rest}, xb, train=False)
    ce = lambda logits, t: -jax.nn.log_softmax(logits)[t]
    loss = lambda p, xb, yb: jnp.sum(jax.vmap(ce)(out(p, xb), yb))
    if kind == "exact":
        return cv.hessian_diag_exact(loss, params, chunk_size=64, data=(x, y))
    if kind == "hutchinson":
        key = check_typed_key(key, "the hutchinson curvature's key")
        return cv.hessian_diag_hutchinson(loss, params, key, num_samples=hutchinson_samples, chunk_size=8,
                                          data=(x, y))
    return cv.ggn_diag_exact(out, ce, params, x, y, chunk_size=64)


def batch_mean_gradient_sum(model, variables: PyTree, images, labels, *, batch_size: int = 128) -> PyTree:
    """G = sum over consecutive batches of the gradient of the batch-mean cross-entropy.

    The batches are images[0:batch_size], images[batch_size:2*batch_size], ... in order; the last
    one may be shorter and is averaged over its own size (as a data loader without drop_last).
    All batches run in one compiled scan.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    images, labels = _check_data(images, labels)
    params, rest = _split_variables(variables)
    n = len(images)
    bs = min(batch_size, n)
    n_batches = -(-n // bs)
    pad = n_batches * bs - n
    sizes = np.full((n_batches,), bs, np.float64)
    sizes[-1] = n - (n_batches - 1) * bs
    weights = np.zeros((n_batches * bs,), np.float32)
    weights[:n] = np.repeat(1.0 / sizes, bs)[:n]
    x, y = jnp.asarray(images), jnp.asarray(labels)
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        y = jnp.concatenate([y, jnp.repeat(y[:1], pad, axis=0)])
    shape = lambda a: a.reshape((n_batches, bs) + a.shape[1:])

    @jax.jit
    def run(params, rest, xs, ys, ws):
        def weighted_loss(p, xb, yb, wb):
            logits = model.apply({"params": p, **rest}, xb, train=False).astype(jnp.float32)
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None].astype(jnp.int32), axis=1)[:, 0]
            return jnp.sum(wb * ce)

        def body(acc, batch):
            g = jax.grad(weighted_loss)(params, *batch)
            return jax.tree_util.tree_map(jnp.add, acc, g), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, params)
        return jax.lax.scan(body, zero, (xs, ys, ws))[0]

    return run(params, rest, shape(x), shape(y), shape(jnp.asarray(weights)))


def second_order_buffer(params: PyTree, curvature: PyTree, gradient_sum: PyTree | None = None) -> PyTree:
    """s^2 * curvature + 2 * s * gradient_sum per kernel (s = max|W| of the kernel): the code's
    second-order buffer of the normalised weights. gradient_sum None leaves out the gradient term
    (s^2 * curvature only). Non-kernel leaves are zeros."""
    _check_like(params, curvature, "curvature")
    if gradient_sum is None:
        return _per_kernel(lambda w, c: layer_scale(w) ** 2 * c.astype(jnp.float32), params, curvature)
    _check_like(params, gradient_sum, "gradient_sum")
    return _per_kernel(lambda w, c, g: (layer_scale(w) ** 2 * c.astype(jnp.float32)
                                        + 2.0 * layer_scale(w) * g.astype(jnp.float32)),
                       params, curvature, gradient_sum)


# ----------------------------------------------------------------------------------- scoring
def sensitivity_scores(params: PyTree, method: str = "SM", buffer: PyTree | None = None, *,
                       alpha: float | None = None, key: jax.Array | None = None) -> PyTree:
    """Per-weight scores (higher = verify first), a pytree like params (non-kernel leaves zero).

    buffer: the second-order buffer of `second_order_buffer` (needed by SM, second, saliency).
    alpha: SM's curvature weight (default 1e6) or saliency's exponent (default 2).
    key: a typed key, needed by random.
    """
    method = canonical_method(method)
    alpha = _check_alpha(method, alpha)
    if method in NEEDS_CURVATURE:
        if buffer is None:
            raise JaxfaultError(f"method {method} needs the second-order buffer (curvature)")
        _check_like(params, buffer, "buffer")
    if method == "magnitude":
        return _per_kernel(lambda w: jnp.abs(w).astype(jnp.float32) / layer_scale(w), params)
    if method == "random":
        if key is None:
            raise JaxfaultError("method random needs a typed key (jax.random.key(seed))")
        key = check_typed_key(key, "the random selection's key")
        scores = map_kernels_with_index(
            lambda i, w: jax.random.normal(jax.random.fold_in(key, i), w.shape, jnp.float32), params)
        return _per_kernel(lambda w, r: r, params, scores)
    if method == "second":
        return _per_kernel(lambda w, b: jnp.abs(b), params, buffer)
    if method == "saliency":
        return _per_kernel(lambda w, b: jnp.abs(b) * jnp.abs(w.astype(jnp.float32) / layer_scale(w)) ** alpha,
                           params, buffer)
    return _per_kernel(lambda w, b: jnp.abs(b) * alpha + jnp.abs(w).astype(jnp.float32) / layer_scale(w),
                       params, buffer)


def select_top_fraction(scores: PyTree, params: PyTree, mask_p: float, *,
                        threshold: str = "count") -> tuple[PyTree, float, float]:
    """Boolean mask of the highest-scoring kernel weights over all layers (one global threshold).

    threshold "count": exactly round(mask_p * n) weights, ties broken by flatten order.
    threshold "quantile": the weights whose score is strictly above the (1 - mask_p) quantile of
    all scores with linear interpolation (the SWIM code's rule; ties at the threshold stay out).
    Returns (mask, fraction_protected, threshold value); mask is a pytree like params (kernel
    leaves bool arrays, other leaves all-False).
    """
    mask_p = check_probability("mask_p", mask_p)
    if threshold not in THRESHOLDS:
        raise JaxfaultError(f"unknown threshold rule {threshold!r}; choose one of {', '.join(THRESHOLDS)}")
    flat = flatten_kernels(scores)
    n = int(flat.shape[0])
    if n == 0:
        raise JaxfaultError("params contain no conv/dense kernels to protect")
    if not bool(jnp.all(jnp.isfinite(flat))):
        raise JaxfaultError("sensitivity scores contain NaN or infinity")
    if threshold == "count":
        k = int(math.floor(mask_p * n + 0.5))
        order = jnp.argsort(-flat, stable=True)
        sel = jnp.zeros((n,), bool).at[order[:k]].set(True)
        thr = float(flat[order[k - 1]]) if k > 0 else float("inf")
    else:
        values = np.asarray(flat)
        thr = float(np.quantile(values, 1.0 - mask_p))
        sel = jnp.asarray(values > values.dtype.type(thr))
        k = int(sel.sum())
    mask = unflatten_kernels(jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), bool), params), sel)
    return mask, k / n, thr


def protection_mask(params: PyTree, method: str, mask_p: float, buffer: PyTree | None = None, *,
                    alpha: float | None = None, key: jax.Array | None = None,
                    threshold: str = "count") -> tuple[PyTree, float]:
    """Scores with `method`, then the global top mask_p fraction: returns (mask, fraction protected)."""
    check_probability("mask_p", mask_p)
    scores = sensitivity_scores(params, method, buffer, alpha=alpha, key=key)
    mask, frac, _ = select_top_fraction(scores, params, mask_p, threshold=threshold)
    return mask, frac


def selection_buffer(model, variables: PyTree, images, labels, *, batch_size: int = 128,
                     curvature: str = "becker-lecun", gradient_term: bool = True, key: jax.Array | None = None,
                     hutchinson_samples: int = 200) -> PyTree:
    """The second-order buffer s^2 * C + 2 * s * G of the model on (images, labels).

    C = loss_curvature(kind=curvature) (summed cross-entropy), G = batch_mean_gradient_sum with
    batch_size; gradient_term=False leaves G out.
    """
    params, _ = _split_variables(variables)
    c = loss_curvature(model, variables, images, labels, kind=curvature, key=key,
                       hutchinson_samples=hutchinson_samples)
    g = batch_mean_gradient_sum(model, variables, images, labels, batch_size=batch_size) if gradient_term else None
    return second_order_buffer(params, c, g)


def write_verify_mask(model, variables: PyTree, images, labels, *, method: str = "SM", mask_p: float = 0.05,
                      batch_size: int = 128, alpha: float | None = None, key: jax.Array | None = None,
                      curvature: str = "becker-lecun", gradient_term: bool = True,
                      threshold: str = "count") -> PyTree:
    """Which kernel weights to write-verify, as the SWIM code selects them.

    Returns a pytree of bools shaped like variables["params"]: True = write-verified; biases and
    other non-kernel leaves are all False. (images, labels) are the data of the selection pass
    (the code uses the whole training set) and batch_size the batches of its gradient term.
    method: SM, second, magnitude, saliency or random (random needs a typed key). mask_p: the
    fraction of all kernel weights verified, with one global threshold (see select_top_fraction).
    """
    method = canonical_method(method)
    mask_p = check_probability("mask_p", mask_p)
    _check_positive_int("batch_size", batch_size)
    if threshold not in THRESHOLDS:
        raise JaxfaultError(f"unknown threshold rule {threshold!r}; choose one of {', '.join(THRESHOLDS)}")
    params, _ = _split_variables(variables)
    buffer = None
    if method in NEEDS_CURVATURE:
        buffer = selection_buffer(model, variables, images, labels, batch_size=batch_size, curvature=curvature,
                                  gradient_term=gradient_term, key=key)
    mask, _ = protection_mask(params, method, mask_p, buffer, alpha=alpha, key=key, threshold=threshold)
    return mask


def full_mask(params: PyTree, value: bool) -> PyTree:
    """Mask with every kernel weight set to value (True = all write-verified)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full(jnp.shape(x), bool(value) and is_kernel(p, x), bool), params)


def mask_fraction(mask: PyTree, params: PyTree) -> float:
    """Fraction of kernel weights that mask marks as protected."""
    flat = flatten_kernels(jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), mask))
    return float(jnp.mean(flat)) if flat.shape[0] else 0.0
