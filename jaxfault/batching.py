"""Evaluate a function over many PRNG keys (fault draws) in one compiled call.

The strategy is a measured per-backend choice: ``vmap`` batches the instances into one
computation (fast on GPU/TPU), ``map`` runs them sequentially inside one compiled ``lax.map``
(fastest on XLA's CPU backend, where vmap over per-instance conv weights is several times slower),
``loop`` is the plain Python loop of jitted calls used as the reference in tests and benchmarks.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxfault.errors import JaxfaultError

STRATEGIES = ("auto", "vmap", "map", "loop")


def resolve_strategy(strategy: str = "auto") -> str:
    """Turn 'auto' into 'map' on CPU and 'vmap' on accelerators; validate the name."""
    if strategy not in STRATEGIES:
        raise JaxfaultError(f"unknown batching strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def map_over_keys(fn: Callable[[jax.Array], Any], keys: jax.Array, strategy: str = "auto",
                  batch_size: int | None = None) -> Any:
    """Stack fn(key) for every key along a new leading axis.

    fn must be a pure, jittable function of one key. With strategy 'map' and batch_size > 1,
    lax.map processes batch_size keys at a time with vmap inside (a mix of both).
    """
    strategy = resolve_strategy(strategy)
    if strategy == "vmap":
        return jax.jit(jax.vmap(fn))(keys)
    if strategy == "map":
        return jax.jit(lambda ks: jax.lax.map(fn, ks, batch_size=batch_size))(keys)
    jitted = jax.jit(fn)
    outs = [jitted(k) for k in keys]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
