"""Compute-in-memory device variation and Monte Carlo accuracy under it.

Each conv/dense weight is stored with ``n_bits`` bits over ``n_bits / m_bits`` devices of
``m_bits`` bits. Programming noise on a weight of layer W is

    noise = max|W| * sum_{i=1..N/m} 2^(-i*m) * g_i,   g_i ~ Normal(0, sigma^2),

with sigma = ``write_var`` where the weight is write-verified (mask True) and ``dev_var``
elsewhere. Biases and batch-norm leaves are never perturbed. The device draws g_i are sampled
explicitly (not collapsed into one Gaussian), so the sampled process is the one written above.

``CiMVariation`` is the same noise as a fault model of ``jaxfault.core.protocol``: the rate is dev_var
(traced), and the write-verify mask travels with the variables as the collection
``variables["write_verify"]``, so one compiled program serves every mask and every dev_var.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.core.protocol import FaultModel
from jaxfault.core.pytree import count_kernel_weights, flatten_kernels, is_kernel, map_kernels_with_index

PyTree = Any


def _concrete_float(name: str, value) -> float | None:
    """float(value) if value is concrete (not a tracer), else None (cannot validate under jit)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise JaxfaultError(f"{name} must be a number, got {value!r}") from None


def check_variances(dev_var, write_var) -> None:
    """Raise JaxfaultError unless both variation strengths are finite and >= 0."""
    for name, value in (("dev_var", dev_var), ("write_var", write_var)):
        v = _concrete_float(name, value)
        if v is not None and not (math.isfinite(v) and v >= 0.0):
            raise JaxfaultError(f"{name} must be a finite number >= 0, got {value!r}")


def check_bits_per_device(n_bits, m_bits) -> tuple[int, int]:
    """Validate N (bits per weight) and m (bits per device): positive ints, N a multiple of m."""
    for name, value in (("n_bits", n_bits), ("m_bits", m_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise JaxfaultError(f"{name} must be a positive integer, got {value!r}")
    if n_bits % m_bits != 0:
        raise JaxfaultError(f"n_bits ({n_bits}) must be a multiple of m_bits ({m_bits})")
    return int(n_bits), int(m_bits)


def device_weights(n_bits: int = 8, m_bits: int = 1) -> jax.Array:
    """The per-device factors 2^(-i*m), i = 1..N/m, as a float32 vector."""
    n_bits, m_bits = check_bits_per_device(n_bits, m_bits)
    i = jnp.arange(1, n_bits // m_bits + 1, dtype=jnp.float32)
    return jnp.exp2(-i * m_bits)


def _sigma_tree(params: PyTree, mask: PyTree | None, dev_var, write_var) -> PyTree:
    """Per-weight sigma for kernels (dev_var, or write_var where mask is True); None elsewhere."""
    if mask is None:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.full(x.shape, dev_var, jnp.float32) if is_kernel(p, x) else None, params)
    try:
        return jax.tree_util.tree_map_with_path(
            lambda p, x, m: (jnp.where(jnp.broadcast_to(jnp.asarray(m, bool), x.shape), write_var, dev_var)
                             .astype(jnp.float32) if is_kernel(p, x) else None), params, mask)
    except ValueError as e:  # tree structure mismatch
        raise JaxfaultError(f"mask must be a pytree shaped like params (kernels as bool arrays): {e}") from None


def variation_std(params: PyTree, mask: PyTree | None, dev_var, write_var, n_bits: int = 8,
                  m_bits: int = 1) -> PyTree:
    """Analytic std of the noise per kernel weight: max|W| * sigma * sqrt(sum_i 4^(-i*m)).

    Non-kernel leaves get zeros. Used by tests and docs to check the sampler against the formula.
    """
    check_variances(dev_var, write_var)
    c = jnp.sqrt(jnp.sum(device_weights(n_bits, m_bits) ** 2))
    sig = _sigma_tree(params, mask, dev_var, write_var)
    return jax.tree_util.tree_map_with_path(
        lambda p, x, s: (jnp.max(jnp.abs(x)) * s * c) if is_kernel(p, x) else jnp.zeros_like(x),
        params, sig, is_leaf=lambda v: v is None)


def apply_variation(params: PyTree, mask: PyTree | None, key: jax.Array, dev_var, write_var,
                    n_bits: int = 8, m_bits: int = 1) -> PyTree:
    """Return params with programming noise added to every conv/dense kernel.

    mask: None (nothing write-verified) or a pytree shaped like params whose kernel leaves are
    bool arrays (True = write-verified, noise std scaled by write_var instead of dev_var); its
    non-kernel leaves are ignored. Pure and jittable; vmap it over keys for many instances.
    Kernel i uses jax.random.fold_in(key, i), so a given key always gives the same noise.
    """
    check_variances(dev_var, write_var)
    n_bits, m_bits = check_bits_per_device(n_bits, m_bits)
    if mask is not None:
        check_masks_like(params, mask)
    return _apply_variation(params, mask, key, dev_var, write_var, n_bits, m_bits)


@partial(jax.jit, static_argnums=(5, 6))
def _apply_variation(params, mask, key, dev_var, write_var, n_bits, m_bits):
    scales = device_weights(n_bits, m_bits)
    n_dev = scales.shape[0]
    sig = _sigma_tree(params, mask, dev_var, write_var)
    sig_leaves = [s for s in jax.tree_util.tree_leaves(sig, is_leaf=lambda v: v is None) if s is not None]

    def perturb(i, w):
        g = jax.random.normal(jax.random.fold_in(key, i), (n_dev,) + w.shape, jnp.float32)
        dev_sum = jnp.tensordot(scales, g, axes=1)  # sum_i 2^(-i m) z_i
        noise = jnp.max(jnp.abs(w)) * sig_leaves[i] * dev_sum
        return (w + noise).astype(w.dtype)

    return map_kernels_with_index(perturb, params)


def check_masks_like(params: PyTree, mask: PyTree) -> None:
    """Raise JaxfaultError unless mask has params' structure and each kernel's shape."""
    try:
        pairs = jax.tree_util.tree_map_with_path(
            lambda p, x, m: (jnp.shape(m), x.shape) if is_kernel(p, x) else None, params, mask)
    except ValueError as e:
        raise JaxfaultError(f"mask must be a pytree shaped like params: {e}") from None
    for got, want in jax.tree_util.tree_leaves(pairs, is_leaf=lambda v: isinstance(v, tuple)):
        if got != want:
            raise JaxfaultError(f"mask leaf has shape {got}, kernel has shape {want}")


def make_training_noise_fn(train_var: float, n_bits: int = 8, m_bits: int = 1) -> Callable[[PyTree, jax.Array], PyTree]:
    """weight_noise_fn(params, key) for noise-aware training: a fresh variation draw (sigma =
    train_var, nothing verified) each call, added as a constant so gradients reach the clean weights.
    """
    v = _concrete_float("train_var", train_var)
    if v is None or not (math.isfinite(v) and v >= 0.0):
        raise JaxfaultError(f"train_var must be a finite number >= 0, got {train_var!r}")
    check_bits_per_device(n_bits, m_bits)

    def noise_fn(params: PyTree, key: jax.Array) -> PyTree:
        noisy = _apply_variation(params, None, key, train_var, 0.0, n_bits, m_bits)
        return jax.tree_util.tree_map(lambda p, q: p + jax.lax.stop_gradient(q - p), params, noisy)

    return noise_fn


# ------------------------------------------------------------------------------ the fault model
WRITE_VERIFY = "write_verify"  # the variables collection holding the write-verify mask


@dataclasses.dataclass(frozen=True)
class CiMVariation(FaultModel):
    """Compute-in-memory programming variation as a fault model (rate: dev_var).

    perturb(key, variables, dev_var) adds to every conv/dense kernel the noise
    max|W| * sum_{i=1..n_bits/m_bits} 2^(-i*m_bits) * g_i, g_i ~ Normal(0, sigma^2), with
    sigma = write_var where the weight is write-verified and dev_var elsewhere. Which weights are
    write-verified is data, not configuration: the optional collection
    variables["write_verify"] is a pytree of bools shaped like variables["params"] (True =
    verified; absent = nothing verified). The returned variables no longer hold it.

    Same key, same noise as ``apply_variation(params, mask, key, dev_var, write_var, ...)``.
    FaultStats: n_cells = kernel weights, n_faults = weights not write-verified (the ones exposed
    to dev_var), realised_ber = their fraction, n_zero_to_one = 0.
    """

    write_var: float = 0.03
    n_bits: int = 8
    m_bits: int = 1

    rate_name: ClassVar[str] = "dev_var"

    def __post_init__(self):
        v = _concrete_float("write_var", self.write_var)
        if v is None or not (math.isfinite(v) and v >= 0.0):
            raise JaxfaultError(f"write_var must be a finite number >= 0, got {self.write_var!r}")
        object.__setattr__(self, "write_var", v)
        check_bits_per_device(self.n_bits, self.m_bits)

    def perturb(self, key: jax.Array, variables: PyTree, dev_var) -> tuple[PyTree, Any]:
        from jaxfault.faults import FaultStats

        check_variances(dev_var, self.write_var)
        rest = {k: v for k, v in variables.items() if k != WRITE_VERIFY}
        params = rest["params"]
        mask = variables.get(WRITE_VERIFY)
        if mask is not None:
            check_masks_like(params, mask)
        noisy = _apply_variation(params, mask, key, jnp.asarray(dev_var, jnp.float32),
                                 jnp.float32(self.write_var), self.n_bits, self.m_bits)
        n_cells = count_kernel_weights(params)
        if mask is None:
            exposed = jnp.int32(n_cells)
        else:
            verified = flatten_kernels(jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.int32), mask))
            exposed = jnp.int32(n_cells) - jnp.sum(verified, dtype=jnp.int32)
        cells = jnp.float32(n_cells)
        stats = FaultStats(exposed, jnp.int32(0), cells, exposed.astype(jnp.float32) / jnp.maximum(cells, 1.0),
                           jnp.float32(0.0))
        return dict(rest, params=noisy), stats


def cim_variation(**config) -> CiMVariation:
    """Build a CiMVariation from keyword configuration (write_var, n_bits, m_bits), validated."""
    known = {f.name for f in dataclasses.fields(CiMVariation)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise JaxfaultError(f"unknown CiM variation setting(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
    return CiMVariation(**config)


def with_write_verify(variables: PyTree, mask: PyTree | None) -> dict:
    """variables with the write-verify mask attached as the collection CiMVariation reads
    (mask None: the collection is removed, i.e. nothing verified)."""
    out = {k: v for k, v in variables.items() if k != WRITE_VERIFY}
    if mask is not None:
        check_masks_like(out["params"], mask)
        out[WRITE_VERIFY] = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), mask)
    return out


register_fault_model("cim", CiMVariation, rate_name="dev_var", method="swim",
                     description="compute-in-memory device variation with a write-verify mask (SWIM)")
