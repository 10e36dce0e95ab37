"""Trial functions for campaigns: for each method, (context, point params) -> fn(key) returning
{"accuracy", "fault_rate"} for one fault draw. Every function is pure and jittable in the key."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxfault.campaign import TrialSpec
from jaxfault.errors import JaxfaultError, check_probability
from jaxfault.pytree import map_kernels_with_index, count_kernel_weights


@dataclasses.dataclass
class EvalContext:
    """What every method needs: the model, its variables and the evaluation data on device."""

    model: Any
    variables: dict
    images: jax.Array
    labels: jax.Array
    accuracy_fn: Callable  # (variables, images, labels) -> {"top1": ...}
    extras: dict = dataclasses.field(default_factory=dict)

    def accuracy(self, params) -> jax.Array:
        variables = dict(self.variables, params=params)
        return self.accuracy_fn(variables, self.images, self.labels)["top1"]


def flip_bits_fp32(w: jax.Array, key: jax.Array, ber) -> tuple[jax.Array, jax.Array]:
    """XOR every bit of the fp32 words of w independently with probability ber; return (w', flips)."""
    bits = jax.random.bernoulli(key, ber, w.shape + (32,))
    shifts = jnp.arange(32, dtype=jnp.uint32)
    mask = jnp.sum(jnp.where(bits, jnp.uint32(1) << shifts, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
    words = jax.lax.bitcast_convert_type(w.astype(jnp.float32), jnp.uint32) ^ mask
    return jax.lax.bitcast_convert_type(words, jnp.float32).astype(w.dtype), jnp.sum(bits)


def bitflip_trial(ctx: EvalContext, params: dict) -> TrialSpec:
    """Plain transient bit flips (XOR) in every bit of the fp32 kernels at rate 'ber'; no protection."""
    ber = check_probability("ber", params.get("ber"))
    n_bits = 32 * count_kernel_weights(ctx.variables["params"])

    def trial(key, args):
        flips = []

        def perturb(i, w):
            w2, f = flip_bits_fp32(w, jax.random.fold_in(key, i), args["ber"])
            flips.append(f)
            return w2

        p = map_kernels_with_index(perturb, ctx.variables["params"])
        return {"accuracy": ctx.accuracy(p), "fault_rate": sum(flips) / n_bits}

    return TrialSpec(trial, {"ber": jnp.float32(ber)}, ("bitflip",))


METHODS: dict[str, Callable[[EvalContext, dict], TrialSpec]] = {"bitflip": bitflip_trial}


def make_trial_fn(ctx: EvalContext, params: dict) -> TrialSpec:
    """Dispatch a grid point to its method's trial spec."""
    method = params.get("method")
    if method not in METHODS:
        raise JaxfaultError(f"unknown campaign method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[method](ctx, params)


def validate_point(params: dict) -> None:
    """Check a grid point's values before any work starts (method known, rates in range)."""
    method = params.get("method")
    if method not in METHODS:
        raise JaxfaultError(f"unknown campaign method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    for name in ("ber", "zero_to_one", "mask_p", "ber0"):
        if name in params:
            check_probability(name, params[name])
    for name in ("dev_var", "write_var"):
        if name in params and not (isinstance(params[name], (int, float)) and params[name] >= 0):
            raise JaxfaultError(f"{name} must be a non-negative number, got {params[name]!r}")
