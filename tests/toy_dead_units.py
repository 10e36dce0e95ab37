"""A toy activation fault, registered from outside the library: each output unit of a Dense layer
is dead (reads 0) for one input with probability ``rate``, a transient compute fault.

It is one new file: a frozen dataclass FaultModel acting on the "activations" site, its
registration, and the registration of its plan stage (docs/extending.md)."""
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault.core.config import Field
from jaxfault.core.protocol import FaultModel
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.plan import PlanStage, register_plan_stage


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


# As a plan stage: Dense outputs die when the MAC array's supply is lowered (timing errors), ten
# times as often for every 0.05 V_nom below nominal; the lower supply saves the datapath's share
# of the network's energy as V^2 (a toy share of 30 %).
def dead_rate(knobs: dict, section: dict) -> float:
    return min(0.5, section["p_dead_nominal"] * 10.0 ** ((1.0 - knobs["mac_voltage"]) / 0.05))


def datapath_energy(knobs: dict, section: dict, terms: dict) -> dict:
    return {"mac_datapath_saving": -section["datapath_share"] * (1.0 - knobs["mac_voltage"] ** 2) * terms["network"]}


register_plan_stage(PlanStage(
    name="toy_mac", fault_model="toy-dead-units",
    knobs=(Field("mac_voltage", list, items=float, nonempty=True, unique=True, min=0.5, max=1.0),),
    settings=(Field("p_dead_nominal", float, 1e-6, min=0, max=0.5),
              Field("datapath_share", float, 0.3, min=0, max=1),
              Field("layers", str, "Dense_*")),
    rate=dead_rate, nominal={"mac_voltage": 1.0}, label=lambda k: f"MAC at {k['mac_voltage']:g} V_nom",
    energy=datapath_energy))
