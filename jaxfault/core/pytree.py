"""Parameter-pytree helpers shared by every fault method: which leaves are weight kernels, and
deterministic flatten/unflatten of those leaves."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def path_to_str(path) -> str:
    """'/'-joined readable name of a pytree key path, e.g. 'Conv_0/kernel'."""
    parts = []
    for k in path:
        if hasattr(k, "key"):
            parts.append(str(k.key))
        elif hasattr(k, "name"):
            parts.append(str(k.name))
        elif hasattr(k, "idx"):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def is_kernel(path, leaf) -> bool:
    """True for conv/dense weight kernels: leaves named 'kernel' with at least 2 dimensions."""
    name = path_to_str(path).split("/")[-1]
    return name == "kernel" and getattr(leaf, "ndim", 0) >= 2


def kernel_names(params: PyTree) -> list[str]:
    """Names of the kernel leaves in the deterministic (tree_flatten) order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [path_to_str(p) for p, leaf in leaves if is_kernel(p, leaf)]


def map_kernels(fn: Callable[[jax.Array], jax.Array], params: PyTree) -> PyTree:
    """Apply fn to every kernel leaf, leaving biases, batch-norm scales etc. unchanged."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(x) if is_kernel(p, x) else x, params)


def map_kernels_with_index(fn: Callable[[int, jax.Array], jax.Array], params: PyTree) -> PyTree:
    """Like map_kernels, but fn also receives the kernel's index in flatten order (for key folding)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, i = [], 0
    for p, x in leaves:
        if is_kernel(p, x):
            out.append(fn(i, x))
            i += 1
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def count_kernel_weights(params: PyTree) -> int:
    """Total number of scalar weights in all kernel leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return int(sum(x.size for p, x in leaves if is_kernel(p, x)))


def flatten_kernels(params: PyTree) -> jax.Array:
    """Concatenate all kernel leaves (flatten order, row-major) into one 1-D array."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    parts = [jnp.ravel(x) for p, x in leaves if is_kernel(p, x)]
    if not parts:
        return jnp.zeros((0,), jnp.float32)
    return jnp.concatenate(parts)


def unflatten_kernels(params: PyTree, flat: jax.Array) -> PyTree:
    """Inverse of flatten_kernels: put consecutive slices of flat back into the kernel leaves."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, offset = [], 0
    for p, x in leaves:
        if is_kernel(p, x):
            out.append(jnp.reshape(flat[offset:offset + x.size], x.shape).astype(x.dtype))
            offset += x.size
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def same_bits(a: PyTree, b: PyTree) -> bool:
    """True when two pytrees have the same structure, and every leaf the same shape, dtype and
    bit pattern (so any deterministic function of them gives the same result; NaNs compare by
    their bits, +0 and -0 differ). Compared on the host."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(jax.device_get(la), jax.device_get(lb)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.tobytes() != y.tobytes():
            return False
    return True
