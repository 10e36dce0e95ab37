"""Protect a parameter pytree with a scheme, inject faults into the stored words, decode back.

protect() runs once per model and scheme (flatten the selected leaves in tree_flatten order,
truncate to bf16, zero-pad to whole blocks, encode); faulty_params() is a pure jittable function of
a PRNG key, so T fault draws can be mapped over keys (jaxfault.batching) inside one computation.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault import faults
from jaxfault.bits import WordLayout, pytree_to_words, words_to_pytree
from jaxfault.ecc import Scheme
from jaxfault.errors import JaxfaultError, check
from jaxfault.pytree import is_kernel, path_to_str

FAULT_MODELS = ("stuck-at", "flip")


def is_float_param(path, leaf) -> bool:
    """Every floating-point leaf (kernels, biases, normalisation parameters)."""
    return jnp.issubdtype(getattr(leaf, "dtype", np.int32), jnp.floating)


class Protected(NamedTuple):
    """Encoded weights of one model under one scheme (arrays + static metadata)."""

    encoded: jax.Array      # stored words, uint32 (n_words,)
    clean: jax.Array        # fault-free decoded words (what the scheme returns without faults)
    layout: WordLayout
    scheme: Scheme


def check_finite_leaves(params, select: Callable = is_kernel) -> None:
    """JaxfaultError naming the first selected leaf holding NaN or Inf."""
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if select(p, x):
            arr = np.asarray(jnp.asarray(x, jnp.float32))
            bad = ~np.isfinite(arr)
            if bad.any():
                i = int(np.flatnonzero(bad.ravel())[0])
                raise JaxfaultError(f"weights of {path_to_str(p)} contain {int(bad.sum())} NaN/Inf value(s), "
                                    f"first {arr.ravel()[i]} at flat index {i}")


def protect(params, scheme: Scheme, *, select: Callable = is_kernel, extra_block: bool = False) -> Protected:
    """Flatten, bf16-truncate, pad to whole blocks (of the scheme's group and block size) and encode."""
    check_finite_leaves(params, select)
    unit = math.lcm(scheme.group, scheme.block_size)
    words, layout = pytree_to_words(params, unit, select=select, extra_block=extra_block)
    check(layout.n_values > 0, "no weights selected for protection")
    encoded = jax.jit(scheme.encode)(words)
    clean = jax.jit(scheme.decode)(encoded)
    return Protected(encoded, clean, layout, scheme)


def faulty_words(key, prot: Protected, ber: float, zero_to_one: float = 0.0, fault_model: str = "stuck-at"):
    """(decoded words after faults in the stored cells, stats dict). Pure and jittable."""
    s = prot.scheme
    if fault_model == "stuck-at":
        bad, st = faults.inject_stuck_at(key, prot.encoded, ber, zero_to_one, s.stored_mask)
    elif fault_model == "flip":
        bad, st = faults.inject_flips(key, prot.encoded, ber, s.stored_mask)
    else:
        raise JaxfaultError(f"unknown fault model {fault_model!r}; choose one of {', '.join(FAULT_MODELS)}")
    dec = s.decode(bad)
    n = prot.layout.n_values
    changed = jnp.mean((dec[:n] != prot.clean[:n]).astype(jnp.float32))
    stats = {"realised_ber": st.realised_ber, "zero_to_one_share": st.zero_to_one_share,
             "n_faults": st.n_faults, "changed_fraction": changed}
    return dec, stats


def faulty_params(key, params, prot: Protected, ber: float, zero_to_one: float = 0.0, *,
                  fault_model: str = "stuck-at", select: Callable = is_kernel, dtype=None):
    """(params with the protected leaves replaced by their faulty decoded values, stats dict)."""
    dec, stats = faulty_words(key, prot, ber, zero_to_one, fault_model)
    return words_to_pytree(params, dec, prot.layout, select=select, dtype=dtype), stats


def cast_floats(tree: Any, dtype) -> Any:
    """Cast every floating leaf of a pytree to dtype."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
