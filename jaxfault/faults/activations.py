"""Activation faults: transient bit flips in the outputs of chosen layers while the model runs.

A flip in a layer's output models a soft error in a compute unit or in the buffer that holds the
activation between layers: it lasts for one input, so every batch of every trial draws new flips
(the engine keys each call by trial, batch and module path). The outputs' bits are the bits of
their dtype as stored (16 for bf16/fp16, 32 for float32); each bit flips independently with
probability ``rate``, through the project's one exact sampler (:mod:`jaxfault.faults`).

Sites are chosen by module path and type: ``modules`` are shell-style patterns (``fnmatch``) over
the '/'-joined path of a module in the model (``"Dense_*"``, ``"blocks_*/mlp"``, ``"*"``), and
``module_types`` are class names (``("Dense", "Conv")``; empty: any type). Only a module's
``__call__`` output is a site, and only floating-point outputs.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.core.protocol import FaultModel, check_rate_bound


def _patterns(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise JaxfaultError(f"{name} must be a list of names, got {value!r}") from None
    if not all(isinstance(p, str) and p for p in out):
        raise JaxfaultError(f"{name} must be a list of non-empty names, got {value!r}")
    return out


@dataclasses.dataclass(frozen=True)
class ActivationBitFlips(FaultModel):
    """Transient XOR bit flips in the outputs of the selected layers (see the module docstring)."""

    modules: tuple = ("*",)
    module_types: tuple = ("Dense", "Conv")
    rate_bound: float = 1e-3

    rate_name: ClassVar[str] = "ber"
    sites: ClassVar[tuple[str, ...]] = ("activations",)

    def __post_init__(self):
        object.__setattr__(self, "modules", _patterns(self.modules, "modules"))
        object.__setattr__(self, "module_types", _patterns(self.module_types, "module_types")
                           if self.module_types else ())
        object.__setattr__(self, "rate_bound", check_rate_bound(self.rate_bound))

    def hits(self, path: str, module_type: str) -> bool:
        """True when a module at `path` of class `module_type` is a site of this fault model."""
        if self.module_types and module_type not in self.module_types:
            return False
        return any(fnmatch.fnmatchcase(path, p) for p in self.modules)

    def perturb_output(self, key, path, module_type, value, rate):
        if not self.hits(path, module_type) or not isinstance(value, jax.Array) \
                or not jnp.issubdtype(value.dtype, jnp.floating):
            return None
        from jaxfault import faults

        bits = jnp.finfo(value.dtype).bits
        uint = {16: jnp.uint16, 32: jnp.uint32}.get(bits)
        if uint is None:
            raise JaxfaultError(f"activation faults support 16- and 32-bit floats, got {value.dtype} at {path!r}")
        words = jax.lax.bitcast_convert_type(value, uint).astype(jnp.uint32).ravel()
        bad, st = faults.inject_flips(key, words, rate, stored_mask=(1 << bits) - 1, rate_bound=self.rate_bound)
        out = jax.lax.bitcast_convert_type(bad.astype(uint), value.dtype).reshape(value.shape)
        return out, st.n_faults


def activation_bit_flips(modules=("*",), module_types=("Dense", "Conv"), rate_bound: float = 1e-3) -> ActivationBitFlips:
    """Transient bit flips in layer outputs.

    Args:
      modules: fnmatch patterns over module paths ('/'-joined) selecting the faulty layers.
      module_types: module class names that can be hit (empty: any).
      rate_bound: the largest bit-error rate the model will be evaluated at (sizes the sampler).
    Returns:
      An ActivationBitFlips fault model; its rate is the per-bit flip probability.
    """
    return ActivationBitFlips(modules, module_types, rate_bound)


register_fault_model("activation", ActivationBitFlips, rate_name="ber",
                     description="transient bit flips in the outputs of chosen layers while the model runs")
