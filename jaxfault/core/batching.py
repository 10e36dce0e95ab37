"""How a run batches its trials: the one strategy resolver and the map over instances.

``"vmap"`` batches instances into one computation (fast on GPU/TPU); ``"map"`` runs them one
after another inside one compiled loop (fast on XLA's CPU backend, where vmapping per-instance
convolution weights is slow); ``"map:B"`` runs ``lax.map`` over chunks of B instances with vmap
inside; ``"loop"`` is a Python loop of jitted single instances (the reference in tests and
benchmarks); ``"auto"`` is ``"map"`` on CPU and ``"vmap"`` elsewhere.
"""
from __future__ import annotations

from typing import Callable

import jax

from jaxfault.core.errors import JaxfaultError, nearest_hint

STRATEGIES = ("auto", "vmap", "map", "loop")


def parse_strategy(strategy: str = "auto", backend: str | None = None) -> tuple[str, int | None]:
    """The one batching resolver: (kind, chunk) for 'auto' | 'vmap' | 'map' | 'map:B' | 'loop'.

    'auto' is 'map' on CPU (vmapping per-instance convolution weights is slow on XLA's CPU
    backend) and 'vmap' on GPU/TPU; 'map:B' runs lax.map over chunks of B instances with vmap
    inside (a mix of both)."""
    if not isinstance(strategy, str):
        raise JaxfaultError(f"batching strategy must be a string, got {strategy!r}")
    if strategy == "auto":
        return ("map" if (backend or jax.default_backend()) == "cpu" else "vmap"), None
    if strategy in ("vmap", "map", "loop"):
        return strategy, None
    if strategy.startswith("map:") and strategy[4:].isdigit() and int(strategy[4:]) >= 1:
        return "map", int(strategy[4:])
    raise JaxfaultError(f"unknown batching strategy {strategy!r}{nearest_hint(strategy, STRATEGIES)}; "
                        f"choose one of {', '.join(STRATEGIES)} or map:B (B >= 1)")


def resolve_strategy(strategy: str = "auto", backend: str | None = None) -> str:
    """The strategy a run uses, as a name ('vmap', 'map', 'map:B' or 'loop'); see parse_strategy."""
    kind, chunk = parse_strategy(strategy, backend)
    return f"{kind}:{chunk}" if chunk else kind


def map_over(fn: Callable, xs, strategy: str = "auto"):
    """Stack fn(x) over the leading axis of xs (a pytree) inside a compiled program, batched by
    the strategy ('loop' runs as 'map' inside a program)."""
    kind, chunk = parse_strategy(strategy)
    if kind == "vmap":
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk)
