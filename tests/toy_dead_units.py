"""A toy activation fault, registered from outside the library: each output unit of a Dense layer
is dead (reads 0) for one input with probability ``rate``, a transient compute fault.

It is one new file: a frozen dataclass FaultModel acting on the "activations" site, and one
registration call (docs/extending.md)."""
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault.faults.fault_models import register_fault_model
from jaxfault.core.protocol import FaultModel


@dataclasses.dataclass(frozen=True)
class DeadUnits(FaultModel):
    """Outputs of Dense layers set to 0 independently with probability rate."""

    layers: str = "Dense_*"

    rate_name: ClassVar[str] = "p_dead"
    sites: ClassVar[tuple] = ("activations",)

    def perturb_output(self, key, path, module_type, value, rate):
        import fnmatch

        if module_type != "Dense" or not fnmatch.fnmatchcase(path, self.layers):
            return None
        dead = jax.random.bernoulli(key, rate, value.shape)
        return jnp.where(dead, jnp.zeros_like(value), value), jnp.sum(dead)


register_fault_model("toy-dead-units", DeadUnits, rate_name="p_dead",
                     description="toy: Dense outputs dead with probability p_dead")
