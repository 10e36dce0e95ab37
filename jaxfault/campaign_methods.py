"""Trial functions for campaigns: for each method, (context, point params) -> TrialSpec whose
fn(key, args) returns {"accuracy", "fault_rate"} for one fault draw. Arrays travel in `args`
(never as constants baked into the compiled program); fn is pure and jittable in the key."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxfault.campaign import TrialSpec
from jaxfault.errors import JaxfaultError, check_probability
from jaxfault.pytree import count_kernel_weights, map_kernels_with_index


@dataclasses.dataclass
class EvalContext:
    """What every method needs: the model, its variables and the evaluation data on device."""

    model: Any
    variables: dict
    images: jax.Array
    labels: jax.Array
    accuracy_fn: Callable  # (variables, images, labels) -> {"top1": ...}
    extras: dict = dataclasses.field(default_factory=dict)

    def data_args(self) -> dict:
        return {"variables": self.variables, "images": self.images, "labels": self.labels}


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

        variables = args["variables"]
        p = map_kernels_with_index(perturb, variables["params"])
        acc = ctx.accuracy_fn(dict(variables, params=p), args["images"], args["labels"])["top1"]
        return {"accuracy": acc, "fault_rate": sum(flips) / n_bits}

    return TrialSpec(trial, {"ber": jnp.float32(ber), **ctx.data_args()}, ("bitflip",))


def sparrow_trial(ctx: EvalContext, params: dict) -> TrialSpec:
    """HBM retention faults (stuck-at, SPEC 1.4) in the stored words of an ECC scheme
    ('scheme': sparrow | secded | none, 'block_size', 'zero_to_one'), decoded, evaluated in bf16."""
    from jaxfault.ecc import get_scheme
    from jaxfault.ecc.pipeline import cast_floats, faulty_params, protect

    ber = check_probability("ber", params.get("ber"))
    q = check_probability("zero_to_one", params.get("zero_to_one", 0.01))
    name, block = params.get("scheme", "sparrow"), int(params.get("block_size", 64))
    cache = ctx.extras.setdefault("protected", {})
    if (name, block) not in cache:
        cache[(name, block)] = protect(ctx.variables["params"], get_scheme(name, block))
    prot = cache[(name, block)]
    base = cast_floats(ctx.variables, jnp.bfloat16)

    def trial(key, args):
        p = prot._replace(encoded=args["encoded"], clean=args["clean"])
        new, stats = faulty_params(key, args["variables"]["params"], p, ber, q, dtype=jnp.bfloat16)
        acc = ctx.accuracy_fn(dict(args["variables"], params=new), args["images"], args["labels"])["top1"]
        return {"accuracy": acc, "fault_rate": stats["realised_ber"]}

    args = {"encoded": prot.encoded, "clean": prot.clean, "variables": base,
            "images": ctx.images.astype(jnp.bfloat16), "labels": ctx.labels}
    return TrialSpec(trial, args, ("sparrow", name, block, ber, q))


METHODS: dict[str, Callable[[EvalContext, dict], TrialSpec]] = {"bitflip": bitflip_trial, "sparrow": sparrow_trial}


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
    if method in ("bitflip", "sparrow", "neuralfuse") and "ber" not in params:
        raise JaxfaultError(f"method {method!r} needs a 'ber' in its grid entry")
    if method == "sparrow":
        from jaxfault.ecc import SCHEMES

        if params.get("scheme", "sparrow") not in SCHEMES:
            raise JaxfaultError(f"unknown ECC scheme {params.get('scheme')!r}; choose one of {', '.join(SCHEMES)}")
        if params.get("block_size", 64) not in (16, 32, 64):
            raise JaxfaultError(f"block_size must be 16, 32 or 64, got {params.get('block_size')!r}")
    for name in ("dev_var", "write_var"):
        if name in params and not (isinstance(params[name], (int, float)) and params[name] >= 0):
            raise JaxfaultError(f"{name} must be a non-negative number, got {params[name]!r}")
