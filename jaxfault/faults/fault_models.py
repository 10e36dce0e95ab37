"""The fault-model registry, composition, and the plain fp32 bit-flip model.

Every fault model is built by name from `FAULT_MODELS`, whose entries say what their rate is
and which configuration fields they take, so campaigns, plans and CLIs need no per-method code:

    fm = build_fault_model("hbm", scheme="sparrow", zero_to_one=0.01)

Each fault model registers itself where it is defined (``register_fault_model`` at the bottom of
jaxfault/ecc/hbm.py, neuralfuse/faults.py, swim/variation.py, activations.py), and ``import
jaxfault`` imports those modules, so the registry is complete whatever a caller imports.

Composition applies several fault models to one model in one trial:

    fm = compose(build_fault_model("hbm", scheme="sparrow"), build_fault_model("sram", bits=8))
    variables, stats = fm.perturb(key, variables, jnp.array([1e-6, 1e-2]))

Stage i gets the key ``fold_in(trial_key, i)`` and ``rate[i]``, and sees the variables that
stage i - 1 produced: stages are given in the order the data flows through the memory
hierarchy (HBM words -> SRAM buffers -> compute array). Each stage's ``prepare`` is applied in
order, and the composition is evaluated in the dtype of the first stage that sets one.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.protocol import FaultModel, Registry, check_rate_bound
from jaxfault.core.pytree import is_kernel, map_kernels_with_index

FAULT_MODELS = Registry("fault model")


def register_fault_model(name: str, factory, *, rate_name: str, method: str | None = None,
                         description: str = "") -> None:
    """Register factory(**config) -> FaultModel; `method` is the campaign/CLI alias, if any."""
    FAULT_MODELS.register(name, factory, rate_name=rate_name, method=method or name, description=description)


def register_preset(name: str, fault_model: str, *, description: str = "", **fixed) -> None:
    """Register a method preset: a registered fault model with some of its fields fixed, in the
    way optax's aliases name recipes built from primitives. The preset is a fault-model name like
    any other: ``eval.run --fault-model NAME``, a campaign's ``method``, a plan section's
    ``fault_model`` (for a stage whose fault model it presets). Its other fields stay settable;
    giving a fixed one is a one-line error. The fixed values are checked now, by building it.

    Args:
      name: the preset's registry name.
      fault_model: the registered fault model (or campaign alias) it presets.
      description: one line for listings.
      **fixed: the fields it fixes, by the fault model's field names.
    """
    base = FAULT_MODELS.get(resolve_name(fault_model))
    fields = config_fields(base.name)
    for k in fixed:
        if k not in fields:
            raise JaxfaultError(f"preset {name!r}: fault model {base.name!r} has no field {k!r}; "
                                f"its fields are {', '.join(fields)}")
    base.factory(**fixed)

    def factory(**config):
        check_not_fixed(name, config)
        return base.factory(**{**fixed, **config})

    FAULT_MODELS.register(name, factory, rate_name=base.info["rate_name"], method=name, description=description,
                          preset_of=base.name, fixed=dict(fixed))


def fixed_fields(name: str) -> dict:
    """The fields a preset fixes, with their values ({} for a fault model that is not a preset)."""
    return FAULT_MODELS.get(resolve_name(name)).info.get("fixed", {})


def check_not_fixed(name: str, config) -> None:
    """A one-line error when `config` sets a field that the preset `name` fixes."""
    reg = FAULT_MODELS.get(resolve_name(name))
    fixed = fixed_fields(name)
    for k in config:
        if k in fixed:
            raise JaxfaultError(f"fault model {reg.name!r} is a preset with {k} = {fixed[k]!r}; use "
                                f"{reg.info['preset_of']!r} to set {k}")


def base_fault_model(name: str) -> str:
    """The registered fault model behind a name: itself, or the one a preset fixes fields of."""
    reg = FAULT_MODELS.get(resolve_name(name))
    return reg.info.get("preset_of", reg.name)


def build_fault_model(name: str, **config) -> FaultModel:
    """A fault model by registered name (or campaign method alias) and its configuration."""
    return FAULT_MODELS.get(resolve_name(name)).factory(**config)


def resolve_name(name: str) -> str:
    """Registered name for a name or a campaign method alias."""
    if name in FAULT_MODELS:
        return name
    for n in FAULT_MODELS.names():
        if FAULT_MODELS.get(n).info["method"] == name:
            return n
    FAULT_MODELS.get(name)  # raises the one-line error listing the names
    return name


def config_fields(name: str) -> tuple[str, ...]:
    """The configuration fields a registered fault model's factory takes (a preset's: those it
    does not fix)."""
    fixed = fixed_fields(name)
    return tuple(f.name for f in dataclasses.fields(FAULT_MODELS.get(resolve_name(name)).factory())
                 if f.name not in fixed)


# ------------------------------------------------------------------------------------ composition
@dataclasses.dataclass(frozen=True)
class Composed(FaultModel):
    """Several fault models applied one after the other in one trial (see module docstring)."""

    stages: tuple

    rate_name: ClassVar[str] = "rates"

    def __post_init__(self):
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, FaultModel) for s in stages):
            raise JaxfaultError("compose needs at least one fault model")
        object.__setattr__(self, "stages", stages)

    @property
    def eval_dtype(self):  # type: ignore[override]
        return next((s.eval_dtype for s in self.stages if s.eval_dtype is not None), None)

    @property
    def sites(self):  # type: ignore[override]
        return tuple(dict.fromkeys(site for s in self.stages for site in s.sites))

    def perturb_output(self, key, path, module_type, value, rate):
        rate = jnp.asarray(rate)
        total = None
        for i, s in enumerate(self.stages):
            r = s.perturb_output(jax.random.fold_in(key, i), path, module_type, value, rate[i])
            if r is not None:
                value, n = r
                total = n if total is None else total + n
        return None if total is None else (value, total)

    def prepare(self, variables):
        for s in self.stages:
            variables = s.prepare(variables)
        return variables

    def perturb(self, key, variables, rate):
        rate = jnp.asarray(rate)
        stats = []
        for i, s in enumerate(self.stages):
            variables, st = s.perturb(jax.random.fold_in(key, i), variables, rate[i])
            stats.append(st)
        return variables, tuple(stats)

    def with_rate_bound(self, rate_bound) -> "Composed":
        import numpy as np

        bounds = np.broadcast_to(np.asarray(rate_bound, np.float64), (len(self.stages),))
        return Composed(tuple(s.with_rate_bound(float(b)) for s, b in zip(self.stages, bounds)))


def compose(*stages: FaultModel) -> Composed:
    """One fault model that applies `stages` in order; its rate is a vector, one per stage."""
    return Composed(tuple(stages))


# ------------------------------------------------------------------------------------ evaluation dtype
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class InDtype(FaultModel):
    """A fault model evaluated in another dtype than its own (e.g. HBM bf16 weights evaluated in
    float32 on CPUs, where bf16 convolutions are slower). The weights are the same values; only
    the arithmetic of the forward pass changes."""

    inner: FaultModel
    dtype: str = "float32"

    rate_name: ClassVar[str] = "rates"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise JaxfaultError(f"evaluation dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def eval_dtype(self):  # type: ignore[override]
        return DTYPES[self.dtype]

    def prepare(self, variables):
        return self.inner.prepare(variables)

    @property
    def sites(self):  # type: ignore[override]
        return self.inner.sites

    def perturb(self, key, variables, rate):
        return self.inner.perturb(key, variables, rate)

    def perturb_output(self, key, path, module_type, value, rate):
        return self.inner.perturb_output(key, path, module_type, value, rate)

    def with_rate_bound(self, rate_bound):
        return InDtype(self.inner.with_rate_bound(rate_bound), self.dtype)


# ------------------------------------------------------------------------------------ bit flips
@dataclasses.dataclass(frozen=True)
class BitFlips(FaultModel):
    """Transient XOR bit flips in every bit of the fp32 conv/dense kernels, no protection."""

    rate_bound: float = 1e-2

    rate_name: ClassVar[str] = "ber"

    def __post_init__(self):
        object.__setattr__(self, "rate_bound", check_rate_bound(self.rate_bound))

    def perturb(self, key, variables, rate):
        from jaxfault import faults

        leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        words = [jax.lax.bitcast_convert_type(w.astype(jnp.float32), jnp.uint32).ravel()
                 for path, w in leaves if is_kernel(path, w)]
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(len(words), dtype=jnp.uint32))
        bad, st = faults.inject_flips_each(keys, words, rate, rate_bound=self.rate_bound)
        params = map_kernels_with_index(
            lambda i, w: jax.lax.bitcast_convert_type(bad[i], jnp.float32).reshape(w.shape).astype(w.dtype),
            variables["params"])
        return {**variables, "params": params}, st


def bit_flips(rate_bound: float = 1e-2) -> BitFlips:
    """Factory: transient XOR flips of the fp32 conv/dense kernels' bits, each bit independently
    with probability ``rate`` (the BER), no protection, evaluated in float32.

    Args:
      rate_bound: the largest BER it will be evaluated at (sizes the fault sampler's chunks;
        ``evaluate`` sets it from its rates).
    Returns:
      A BitFlips fault model.
    """
    return BitFlips(rate_bound=rate_bound)


register_fault_model("bitflip", BitFlips, rate_name="ber",
                     description="transient XOR bit flips in every bit of the fp32 kernels")
