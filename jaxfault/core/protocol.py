"""The fault-model protocol: one small interface that every perturbation implements.

A fault model is a frozen dataclass (hashable, so it is a static argument of a compiled
program and the key of a compilation cache) whose fields are its whole configuration,
validated once in ``__post_init__``. It provides:

* ``prepare(variables) -> variables``: the clean form in which the model is evaluated and
  perturbed (bf16 truncation for HBM words, dequantized QAT kernels for SRAM words, ...). Run once
  on the host, outside the compiled trial.
* ``perturb(key, variables, rate) -> (variables, FaultStats)``: one faulty instance, pure and
  jittable. ``rate`` is a traced float32 scalar (a BER, a dev_var, ...); the largest rate the
  model will see is the static field ``rate_bound``, which fixes any sampler capacity, so one
  compiled program serves a whole sweep.
* ``rate_name``: what the rate is ("ber", "dev_var"), for tables, files and errors.
* ``eval_dtype``: the dtype inputs and float variables are evaluated in (None: unchanged).

* ``sites``: where the faults land. ``"stored"``: the stored variables (weights in HBM, SRAM, a
  compute-in-memory array), through ``perturb``. ``"activations"``: the outputs of chosen layers
  while the model runs (activation or transient compute faults), through ``perturb_output``,
  which the engine calls on every module call of every batch (``flax.linen.intercept_methods``)
  with a key derived from the trial key, the batch index and the module's path. A fault model may
  act on both sites.

Composition (``jaxfault.compose``) builds a fault model from several; it receives a vector
of per-stage rates and derives each stage's key from the trial key with ``fold_in``.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, ClassVar

import jax

PyTree = Any


class FaultModel(abc.ABC):
    """Base class of every fault model (subclasses are frozen dataclasses)."""

    rate_name: ClassVar[str] = "rate"
    eval_dtype: ClassVar[Any] = None
    sites: ClassVar[tuple[str, ...]] = ("stored",)

    def prepare(self, variables: PyTree) -> PyTree:
        """Clean evaluation form of the variables (default: unchanged)."""
        return variables

    def perturb(self, key: jax.Array, variables: PyTree, rate) -> tuple[PyTree, Any]:
        """One faulty instance of the prepared variables and its FaultStats (default, for fault
        models that act on activations only: the variables unchanged, no stats)."""
        return variables, None

    def perturb_output(self, key: jax.Array, path: str, module_type: str, value, rate):
        """A layer's output under activation faults: ``(faulty value, number of faults)``, or
        None when this module is not a site of this fault model (the default). ``path`` is the
        module's '/'-joined path in the model, ``module_type`` its class name; called while
        tracing, so the decision to return None is static."""
        return None

    def with_rate_bound(self, rate_bound: float) -> "FaultModel":
        """The same fault model sized for rates up to rate_bound (a new frozen value)."""
        if not any(f.name == "rate_bound" for f in dataclasses.fields(self)):
            return self
        return dataclasses.replace(self, rate_bound=float(rate_bound))

    def describe(self) -> dict:
        """JSON-ready configuration (class name and every field)."""
        out = {"fault_model": type(self).__name__}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.describe() if hasattr(v, "describe") else v
        return out


def check_rate_bound(rate_bound: float, name: str = "rate_bound", upper: float | None = 1.0) -> float:
    """A finite rate bound in (0, upper]."""
    from jaxfault.core.errors import JaxfaultError

    try:
        v = float(rate_bound)
    except (TypeError, ValueError):
        raise JaxfaultError(f"{name} must be a number, got {rate_bound!r}") from None
    if not (math.isfinite(v) and v >= 0.0 and (upper is None or v <= upper)):
        rng = f"[0, {upper:g}]" if upper is not None else ">= 0"
        raise JaxfaultError(f"{name} must be finite and in {rng}, got {rate_bound!r}")
    return v


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Registration:
    """A named entry of the registry: how to build it and what the rest of the library needs."""

    name: str
    factory: Callable[..., Any]
    info: dict


class Registry:
    """Name -> Registration for one kind of thing (schemes, fault models). Registering twice
    with the same name is an error; lookups of unknown names list the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Registration] = {}

    def register(self, name: str, factory: Callable[..., Any], **info) -> Callable[..., Any]:
        from jaxfault.core.errors import JaxfaultError

        if name in self._entries and self._entries[name].factory is not factory:
            raise JaxfaultError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Registration(name, factory, dict(info))
        return factory

    def get(self, name: str) -> Registration:
        from jaxfault.core.errors import JaxfaultError, nearest_hint

        if name not in self._entries:
            raise JaxfaultError(f"unknown {self.kind} {name!r}{nearest_hint(name, self.names())}; "
                                f"choose one of {', '.join(self.names())}")
        return self._entries[name]

    def build(self, name: str, **config):
        return self.get(name).factory(**config)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries


def stats_dict(stats) -> dict:
    """Flatten a fault model's stats (NamedTuple, dict, or tuple of them for compositions) into
    {name: array}; stage i of a composition is prefixed 'stage{i}.'."""
    if stats is None:
        return {}
    if hasattr(stats, "_asdict"):
        return dict(stats._asdict())
    if isinstance(stats, dict):
        return dict(stats)
    if isinstance(stats, (tuple, list)):
        out = {}
        for i, s in enumerate(stats):
            out.update({f"stage{i}.{k}": v for k, v in stats_dict(s).items()})
        return out
    raise TypeError(f"fault-model stats must be a NamedTuple, dict or tuple, got {type(stats).__name__}")
