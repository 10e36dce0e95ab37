"""The precision policy: which float32 matmul/conv precision evaluation and training steps trace
with ('highest' makes results independent of the batching strategy and of TF32 on GPUs;
'default' is the backend's fast mode). engine and training both use it."""
from __future__ import annotations

import contextlib

import jax

from jaxfault.core.errors import JaxfaultError, nearest_hint

PRECISIONS = ("highest", "high", "default")


def check_precision(precision: str) -> str:
    """Validate a float32 matmul precision name."""
    if precision not in PRECISIONS:
        raise JaxfaultError(f"unknown precision {precision!r}{nearest_hint(precision, PRECISIONS)}; "
                            f"choose one of {', '.join(PRECISIONS)}")
    return precision


def precision_scope(precision: str):
    """Context that sets float32 matmul/conv precision while tracing ('default': backend's own)."""
    check_precision(precision)
    if precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)
