"""Trial functions for campaigns: for each method, (context, point params) -> TrialSpec whose
fn(key, args) returns {"accuracy", "fault_rate"} for one fault draw. Arrays travel in `args`
(never as constants baked into the compiled program); fn is pure and jittable in the key.
Compilations are shared between points with the same `cache_key`, so every Python value a trial
closes over must be part of its cache_key (or travel in args)."""
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


def bitflip_trial(ctx: EvalContext, params: dict) -> TrialSpec:
    """Plain transient bit flips (XOR, jaxfault.faults.inject_flips) in every bit of the fp32
    kernels at rate 'ber'; no protection."""
    from jaxfault.faults import inject_flips

    ber = check_probability("ber", params.get("ber"))
    n_bits = 32 * count_kernel_weights(ctx.variables["params"])

    def trial(key, args):
        flips = []

        def perturb(i, w):
            words = jax.lax.bitcast_convert_type(w.astype(jnp.float32), jnp.uint32).ravel()
            bad, stats = inject_flips(jax.random.fold_in(key, i), words, ber)
            flips.append(stats.n_faults)
            return jax.lax.bitcast_convert_type(bad, jnp.float32).reshape(w.shape).astype(w.dtype)

        variables = args["variables"]
        p = map_kernels_with_index(perturb, variables["params"])
        acc = ctx.accuracy_fn(dict(variables, params=p), args["images"], args["labels"])["top1"]
        return {"accuracy": acc, "fault_rate": sum(flips) / n_bits}

    return TrialSpec(trial, ctx.data_args(), ("bitflip", ber))


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


def neuralfuse_trial(ctx: EvalContext, params: dict) -> TrialSpec:
    """Low-voltage SRAM stuck-at faults (SPEC 3.1) in the quantized kernels ('ber', 'ber0' = 0.5,
    'bits' = 8, 'placement' independent | memory_array), no generator; fault_rate = faulty cells
    / all cells."""
    from jaxfault.neuralfuse.faults import fault_masks, memory_array_codes, perturb_params

    ber = check_probability("ber", params.get("ber"))
    ber0 = check_probability("ber0", params.get("ber0", 0.5))
    bits = int(params.get("bits", 8))
    placement = params.get("placement", "independent")
    n_cells = bits * count_kernel_weights(ctx.variables["params"])

    def trial(key, args):
        v = args["variables"]
        faulty = perturb_params(v["params"], key, ber, ber0, bits, placement, straight_through=False)
        array_codes = memory_array_codes(key, ber, ber0) if placement == "memory_array" else None
        counts = []

        def count(i, w):
            m01, m10 = fault_masks(jax.random.fold_in(key, i), w.size, ber, ber0, bits, placement, array_codes)
            counts.append(jnp.sum(jax.lax.population_count(jnp.bitwise_or(m01, m10))))
            return w

        map_kernels_with_index(count, v["params"])
        acc = ctx.accuracy_fn(dict(v, params=faulty), args["images"], args["labels"])["top1"]
        return {"accuracy": acc, "fault_rate": sum(counts) / n_cells}

    return TrialSpec(trial, ctx.data_args(), ("neuralfuse", ber, ber0, bits, placement))


def swim_trial(ctx: EvalContext, params: dict) -> TrialSpec:
    """CiM device variation (SPEC 2.1: 'dev_var', 'write_var' = 0.03, 'n_bits' = 8, 'm_bits' = 1)
    with write-verify of a 'mask_p' fraction chosen by 'selection' (magnitude | random | none | all;
    curvature-based scores need training data: use eval.swim). fault_rate = the fraction of weights
    left unverified."""
    from jaxfault.swim.selection import full_mask, protection_mask
    from jaxfault.swim.variation import apply_variation

    selection = params.get("selection", "magnitude")
    mask_p = check_probability("mask_p", params.get("mask_p", 0.0))
    p0 = ctx.variables["params"]
    if selection == "none" or mask_p == 0.0:
        mask, frac = full_mask(p0, False), 0.0
    elif selection == "all":
        mask, frac = full_mask(p0, True), 1.0
    else:
        mask, frac = protection_mask(p0, selection, mask_p, key=jax.random.key(0))
    n_bits, m_bits = int(params.get("n_bits", 8)), int(params.get("m_bits", 1))

    def trial(key, args):
        v = args["variables"]
        noisy = apply_variation(v["params"], args["mask"], key, args["dev_var"], args["write_var"], n_bits, m_bits)
        acc = ctx.accuracy_fn(dict(v, params=noisy), args["images"], args["labels"])["top1"]
        return {"accuracy": acc, "fault_rate": 1.0 - args["protected"]}

    args = {"mask": mask, "protected": jnp.float32(frac), "dev_var": jnp.float32(params.get("dev_var", 0.1)),
            "write_var": jnp.float32(params.get("write_var", 0.03)), **ctx.data_args()}
    return TrialSpec(trial, args, ("swim", n_bits, m_bits))


METHODS: dict[str, Callable[[EvalContext, dict], TrialSpec]] = {
    "bitflip": bitflip_trial, "sparrow": sparrow_trial, "neuralfuse": neuralfuse_trial, "swim": swim_trial}
SWIM_SELECTIONS = ("magnitude", "random", "none", "all")


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
    if method == "neuralfuse":
        if params.get("bits", 8) not in (4, 8, 16):
            raise JaxfaultError(f"precision bits must be 4, 8 or 16, got {params.get('bits')!r}")
        if params.get("placement", "independent") not in ("independent", "memory_array"):
            raise JaxfaultError(f"placement must be 'independent' or 'memory_array', got {params.get('placement')!r}")
    if method == "swim":
        if params.get("selection", "magnitude") not in SWIM_SELECTIONS:
            raise JaxfaultError(f"unknown SWIM selection {params.get('selection')!r} for campaigns; choose one of "
                                f"{', '.join(SWIM_SELECTIONS)} (curvature-based ones: python -m eval.swim)")
        n, mb = params.get("n_bits", 8), params.get("m_bits", 1)
        if not (isinstance(n, int) and isinstance(mb, int) and n > 0 and mb > 0 and n % mb == 0):
            raise JaxfaultError(f"n_bits must be a positive multiple of m_bits, got n_bits={n!r}, m_bits={mb!r}")
    for name in ("dev_var", "write_var"):
        if name in params and not (isinstance(params[name], (int, float)) and params[name] >= 0):
            raise JaxfaultError(f"{name} must be a non-negative number, got {params[name]!r}")
