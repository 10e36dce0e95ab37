"""A toy weight fault model with a knob relation, registered from outside the library.

The fault model: each conv/dense kernel weight held in a hot memory has its sign flipped with
probability ``p_sign``, independently (a stored-value fault, one faulty instance per key).

The plan stage ``toy_thermal``: its knob is the memory's temperature in degrees Celsius, and the
relation is the rule of thumb that a failure rate doubles every ``doubling_c`` degrees:
``p_sign = p_sign_at_25c * 2 ** ((T - 25) / doubling_c)``, capped at 0.5. Cooling costs energy:
``cooling_per_degree`` of the network's energy per inference for every degree below the
uncooled 85 degrees, the nominal design.

It is one new file: a frozen dataclass FaultModel, its registration, and the plan stage's
registration (docs/extending.md)."""
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault.core.config import Field
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.plan import PlanStage, register_plan_stage
from jaxfault.core.protocol import FaultModel
from jaxfault.core.pytree import is_kernel, map_kernels_with_index

UNCOOLED_C = 85.0


@dataclasses.dataclass(frozen=True)
class SignFlips(FaultModel):
    """Kernel weights with their sign flipped, each with probability rate."""

    rate_name: ClassVar[str] = "p_sign"

    def perturb(self, key, variables, rate):
        kernels = [w for path, w in jax.tree_util.tree_flatten_with_path(variables["params"])[0] if is_kernel(path, w)]
        flips = [jax.random.bernoulli(jax.random.fold_in(key, i), rate, w.shape) for i, w in enumerate(kernels)]
        params = map_kernels_with_index(lambda i, w: jnp.where(flips[i], -w, w), variables["params"])
        n = sum(w.size for w in kernels)
        count = sum(jnp.sum(f) for f in flips)
        return {**variables, "params": params}, {"realised_ber": count / n, "faults": count}


register_fault_model("toy-sign-flips", SignFlips, rate_name="p_sign",
                     description="toy: kernel weights with their sign flipped with probability p_sign")


def thermal_rate(knobs: dict, section: dict) -> float:
    return min(0.5, section["p_sign_at_25c"] * 2.0 ** ((knobs["temperature_c"] - 25.0) / section["doubling_c"]))


def cooling_energy(knobs: dict, section: dict, terms: dict) -> dict:
    return {"cooling": section["cooling_per_degree"] * max(0.0, UNCOOLED_C - knobs["temperature_c"]) * terms["network"]}


register_plan_stage(PlanStage(
    name="toy_thermal", fault_model="toy-sign-flips",
    knobs=(Field("temperature_c", list, items=float, nonempty=True, unique=True, min=-40, max=125),),
    settings=(Field("p_sign_at_25c", float, 1e-5, min=0, max=0.5),
              Field("doubling_c", float, 10.0, min=0, min_open=True),
              Field("cooling_per_degree", float, 0.002, min=0)),
    rate=thermal_rate, nominal={"temperature_c": UNCOOLED_C},
    label=lambda k: f"{k['temperature_c']:g} C", energy=cooling_energy))
