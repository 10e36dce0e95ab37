"""Diagonal curvature of a loss over any parameter pytree (for SWIM's write-verify selection).

Four estimators, each returning a pytree shaped like the params:

- ``hessian_diag_exact``: exact diag of the Hessian, one Hessian-vector product (forward-over-
  reverse) per parameter against the basis vector e_i, chunked with ``lax.map(batch_size=...)``
  so only ``chunk_size`` HVPs are live at once. Cost: n_params HVPs; for small models.
- ``hessian_diag_hutchinson``: unbiased estimate E[v * Hv], v Rademacher, any model size.
- ``ggn_diag_exact``: exact diag of the generalized Gauss-Newton matrix sum_n J_n^T H_n J_n,
  with H_n the Hessian of the per-example loss at the outputs, factorised H_n = A_n A_n^T so
  diag = sum_n sum_k (J_n^T a_nk)^2: one vector-Jacobian product per example and output.
- ``becker_lecun_diag``: the SWIM code's diagonal second-order backward pass, done
  generically for Flax linen models by intercepting nn.Dense / nn.Conv / nn.BatchNorm calls
  with custom VJPs that carry curvature instead of gradients (see its docstring).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxfault.core.errors import JaxfaultError

PyTree = Any


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise JaxfaultError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def hessian_diag_exact(loss_fn: Callable[..., jax.Array], params: PyTree, *,
                       chunk_size: int = 64, data: tuple = ()) -> PyTree:
    """Exact diag of the Hessian of loss_fn at params, via one HVP per basis vector.

    loss_fn(params, *data) -> scalar (data, e.g. (images, labels), is passed to the compiled
    function as arguments: closing over large arrays would bake them in as constants and make
    XLA's compile slow). chunk_size HVPs are vmapped together; lax.map walks the chunks, so peak
    memory is about chunk_size gradients regardless of the parameter count.
    """
    flat, unravel = ravel_pytree(params)
    if flat.shape[0] == 0:
        return params
    return unravel(hessian_diag_entries(loss_fn, params, jnp.arange(flat.shape[0]), chunk_size=chunk_size,
                                        data=data))


def hessian_diag_entries(loss_fn: Callable[..., jax.Array], params: PyTree, indices, *,
                         chunk_size: int = 64, data: tuple = ()) -> jax.Array:
    """H_ii for the given indices into ravel_pytree(params) (spot checks, timing extrapolation)."""
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    flat, unravel = ravel_pytree(params)
    indices = jnp.asarray(indices, jnp.int32)
    if indices.ndim != 1 or indices.shape[0] == 0:
        raise JaxfaultError(f"indices must be a non-empty 1-D array, got shape {indices.shape}")

    @jax.jit
    def run(flat, indices, data):
        grad = jax.grad(lambda v: loss_fn(unravel(v), *data))

        def diag_entry(i):
            e = jnp.zeros_like(flat).at[i].set(1.0)
            return jax.jvp(grad, (flat,), (e,))[1][i]

        return jax.lax.map(diag_entry, indices, batch_size=min(chunk_size, indices.shape[0]))

    return run(flat, indices, tuple(data))


def _rademacher_like(key: jax.Array, params: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.rademacher(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)])


def hessian_diag_hutchinson(loss_fn: Callable[..., jax.Array], params: PyTree, key: jax.Array, *,
                            num_samples: int = 100, chunk_size: int = 10, data: tuple = ()) -> PyTree:
    """Hutchinson estimate of diag(H): mean over num_samples Rademacher v of v * (H v).

    loss_fn(params, *data) -> scalar, as for hessian_diag_exact.

    Unbiased (E[v v^T] = I); the error of one entry shrinks like sqrt(sum_{j!=i} H_ij^2 / S).
    chunk_size probes are vmapped together and a scan accumulates the sum, so memory does not
    grow with num_samples.
    """
    num_samples = _check_positive_int("num_samples", num_samples)
    chunk = min(_check_positive_int("chunk_size", chunk_size), num_samples)
    n_full, rem = divmod(num_samples, chunk)
    keys = jax.random.split(key, num_samples)

    @jax.jit
    def run(params, keys, data):
        grad = jax.grad(lambda p: loss_fn(p, *data))

        def probe(k):
            v = _rademacher_like(k, params)
            hv = jax.jvp(grad, (params,), (v,))[1]
            return jax.tree_util.tree_map(jnp.multiply, v, hv)

        def chunk_sum(ks):
            return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), jax.vmap(probe)(ks))

        zero = jax.tree_util.tree_map(jnp.zeros_like, params)

        def body(acc, ks):
            return jax.tree_util.tree_map(jnp.add, acc, chunk_sum(ks)), None

        acc, _ = jax.lax.scan(body, zero, keys[:n_full * chunk].reshape((n_full, chunk) + keys.shape[1:]))
        if rem:
            acc = jax.tree_util.tree_map(jnp.add, acc, chunk_sum(keys[n_full * chunk:]))
        return jax.tree_util.tree_map(lambda x: x / num_samples, acc)

    return run(params, keys, tuple(data))


def _psd_factor(h: jax.Array) -> jax.Array:
    """A with A A^T = h for a symmetric PSD h (negative eigenvalues from rounding clipped to 0)."""
    lam, q = jnp.linalg.eigh(h)
    return q * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]


def ggn_diag_exact(output_fn: Callable[[PyTree, jax.Array], jax.Array],
                   loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   params: PyTree, inputs: jax.Array, targets: jax.Array, *,
                   chunk_size: int = 32) -> PyTree:
    """Exact diag of the GGN  G = sum_n J_n^T H_n J_n  of  L = sum_n loss_fn(output_fn(params, x_n), y_n).

    output_fn(params, x) maps a batch of inputs to a batch of outputs (B, C) (called here on
    batches of one example); loss_fn(out, y) is the loss of one example given its output vector
    (C,). H_n = d2 loss_fn / d out2 is factorised as A_n A_n^T (eigh), and
    diag(G) = sum_n sum_k (J_n^T A_n[:, k])^2, one VJP per example and output dimension.
    chunk_size examples are processed together (peak memory ~ chunk_size * C * n_params).
    """
    chunk = min(_check_positive_int("chunk_size", chunk_size), int(inputs.shape[0]))
    n = int(inputs.shape[0])
    if n == 0:
        raise JaxfaultError("ggn_diag_exact needs at least one example")
    if int(targets.shape[0]) != n:
        raise JaxfaultError(f"inputs and targets differ in length: {n} vs {targets.shape[0]}")
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    valid = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    xs = jnp.concatenate([inputs, jnp.repeat(inputs[:1], pad, axis=0)]) if pad else inputs
    ys = jnp.concatenate([targets, jnp.repeat(targets[:1], pad, axis=0)]) if pad else targets

    @jax.jit
    def run(params, xs, ys, valid):
        def per_example(x, y, w):
            f = lambda p: output_fn(p, x[None])[0]
            out, vjp = jax.vjp(f, params)
            a = _psd_factor(jax.hessian(loss_fn)(out, y)) * jnp.sqrt(w)
            cols = jax.vmap(lambda col: vjp(col)[0], in_axes=1)(a)  # one VJP per column of A
            return jax.tree_util.tree_map(lambda g: jnp.sum(g * g, axis=0), cols)

        def body(acc, batch):
            x, y, w = batch
            part = jax.vmap(per_example)(x, y, w)
            return jax.tree_util.tree_map(lambda s, p: s + jnp.sum(p, axis=0), acc, part), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, params)
        shape = lambda a: a.reshape((n_chunks, chunk) + a.shape[1:])
        acc, _ = jax.lax.scan(body, zero, (shape(xs), shape(ys), shape(valid)))
        return acc

    return run(params, xs, ys, valid)


# ------------------------------------------------------------------------------------------------
# Becker-LeCun diagonal second-order backward pass (as the SWIM code computes it)

def _split_square_kernel(p: dict) -> dict:
    return {k: (v * v if k == "kernel" else v) for k, v in p.items()}


def _linear_layer_curvature(lin: Callable, x: jax.Array, p: dict) -> jax.Array:
    """lin(x, p) is linear in x and in p['kernel']: forward as usual, curvature backward.

    Backward: dL2/dx = VJP_x of lin(., W^2) (squared weights), dL2/dW = VJP_W of lin(x^2, .),
    dL2/db = VJP_b (the bias Jacobian is 1, squaring changes nothing).
    """

    @jax.custom_vjp
    def f(x, p):
        return lin(x, p)

    def fwd(x, p):
        return lin(x, p), (x, p)

    def bwd(res, c):
        x, p = res
        cx = jax.vjp(lambda xx: lin(xx, _split_square_kernel(p)), x)[1](c)[0]
        cp = jax.vjp(lambda pp: lin(x * x, pp), p)[1](c)[0]
        return cx, cp

    f.defvjp(fwd, bwd)
    return f(x, p)


def _batchnorm_curvature(lin: Callable, x: jax.Array, p: dict, stats: dict) -> jax.Array:
    """Inference-mode batch norm y = k*x + c per channel: curvature backward multiplies by k^2.

    k^2 c is obtained by applying the (diagonal) VJP twice; scale gets sum c*xhat^2, bias sum c.
    """

    @jax.custom_vjp
    def f(x, p, stats):
        return lin(x, p, stats)

    def fwd(x, p, stats):
        return lin(x, p, stats), (x, p, stats)

    def bwd(res, c):
        x, p, stats = res
        vjp_x = jax.vjp(lambda xx: lin(xx, p, stats), x)[1]
        cx = vjp_x(vjp_x(c)[0])[0]
        unit = {k: (jnp.ones_like(v) if k == "scale" else jnp.zeros_like(v)) for k, v in p.items()}
        xhat = lin(x, unit, stats)
        vjp_p = jax.vjp(lambda pp: lin(x, pp, stats), p)[1]
        c_scaled = vjp_p(c * xhat)[0]
        c_plain = vjp_p(c)[0]
        cp = {k: (c_scaled[k] if k == "scale" else c_plain[k]) for k in p}
        return cx, cp, jax.tree_util.tree_map(jnp.zeros_like, stats)

    f.defvjp(fwd, bwd)
    return f(x, p, stats)


def _make_bl_interceptor():
    """A flax method interceptor for one Becker-LeCun pass.

    The replacement layers re-apply an unbound clone of the module; a depth counter lets those
    inner calls through unintercepted (trace-time Python state, private to this interceptor).
    """
    import flax.linen as nn

    from jaxfault.models import layers as jf_layers

    linear_types = (nn.Dense, nn.Conv, jf_layers.Dense, jf_layers.Conv)
    depth = [0]

    def inner(fn):
        def run(*a):
            depth[0] += 1
            try:
                return fn(*a)
            finally:
                depth[0] -= 1
        return run

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if depth[0] > 0 or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(mod, linear_types):
            if getattr(mod, "quant_bits", None) is not None:
                raise JaxfaultError("becker-lecun needs a model without fake-quantization: use "
                                    "model.clone(quant_bits=None) with the dequantized weights")
            if len(args) != 1 or kwargs:
                raise JaxfaultError(f"becker-lecun: unsupported call signature of {type(mod).__name__}")
            p = dict(mod.variables["params"])
            bare = mod.clone(parent=None)
            lin = inner(lambda xx, pp: bare.apply({"params": pp}, xx))
            return _linear_layer_curvature(lin, args[0], p)
        if isinstance(mod, nn.BatchNorm):
            ura = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
            ura = mod.use_running_average if ura is None else ura
            if not ura:
                raise JaxfaultError("becker-lecun needs batch norm in inference mode (train=False)")
            p = dict(mod.variables.get("params", {}))
            stats = dict(mod.variables["batch_stats"])
            bare = mod.clone(parent=None, use_running_average=True)
            lin = inner(lambda xx, pp, st: bare.apply({"params": pp, "batch_stats": st}, xx))
            return _batchnorm_curvature(lin, args[0], p, stats)
        if isinstance(mod, (nn.ConvTranspose, nn.ConvLocal, nn.DenseGeneral, nn.LayerNorm, nn.GroupNorm)):
            raise JaxfaultError(f"becker-lecun: layer type {type(mod).__name__} is not supported")
        return next_fun(*args, **kwargs)

    return interceptor


def becker_lecun_diag(model, variables: dict, inputs: jax.Array, *, batch_size: int = 1000,
                      apply_kwargs: dict | None = None) -> PyTree:
    """The reference's Becker-LeCun curvature of the cross-entropy, summed over inputs.

    At the logits the curvature is p(1-p) (softmax p; the off-diagonal terms of the softmax
    Hessian are dropped; summed over examples, not averaged). It flows backwards with squared
    weights through nn.Dense / nn.Conv (dL2/dx = W^2 . dL2/dy), reaches each kernel as
    dL2/dW = dL2/dy . x^2, is multiplied by (gamma/sqrt(var+eps))^2 by inference-mode
    nn.BatchNorm, and by the 0/1 mask of ReLU; pooling and reshapes use their ordinary VJP,
    i.e. average pooling is applied as to values (1/k) and max pooling routes to the argmax.

    Generic for linen models built from those pieces: Dense/Conv (flax.linen's and
    jaxfault.models.layers', without fake-quantization) and nn.BatchNorm calls are
    intercepted (flax.linen.intercept_methods) and replaced by custom VJPs; everything else
    uses JAX's own VJP, which is the right rule for piecewise-linear ops with 0/1 slopes (ReLU,
    max pool) and for linear ops that the reference treats as values (avg pool, reshape, add).
    Not right for smooth activations (tanh, GELU...): their slope is not squared. Unsupported
    layer types (DenseGeneral, ConvTranspose, LayerNorm, ...) raise JaxfaultError.
    """
    import flax.linen as nn

    batch_size = _check_positive_int("batch_size", batch_size)
    kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    n = int(inputs.shape[0])
    if n == 0:
        raise JaxfaultError("becker_lecun_diag needs at least one input")

    @jax.jit
    def batch_curv(params, x, w):
        def fwd(p):
            with nn.intercept_methods(_make_bl_interceptor()):
                return model.apply({"params": p, **rest}, x, **kwargs)

        logits, vjp = jax.vjp(fwd, params)
        prob = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
        return vjp((prob * (1.0 - prob) * w[:, None]).astype(logits.dtype))[0]

    total = None
    for start in range(0, n, batch_size):
        x = jnp.asarray(inputs[start:start + batch_size])
        w = jnp.ones((x.shape[0],), jnp.float32)
        if x.shape[0] < batch_size and n > batch_size:  # pad the last batch: one compiled shape
            pad = batch_size - x.shape[0]
            x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
            w = jnp.concatenate([w, jnp.zeros((pad,), jnp.float32)])
        part = batch_curv(params, x, w)
        total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
    return total
