"""jaxfault: fault injection, protection and energy for deep networks, in JAX/Flax.

The main entry points:

    import jaxfault
    jaxfault.enable_compile_cache()                            # optional: compiled programs persist
    fm = jaxfault.hbm_faults(scheme="sparrow")                 # or bit_flips, sram_bit_errors, cim_variation
    res = jaxfault.evaluate(model, variables, images, labels, fm, rates=[1e-4, 1e-3],
                            keys=jax.random.split(jax.random.key(0), 20))
    res.accuracy                                               # (rates, trials)

`compose(...)` stacks fault models across the memory hierarchy; `build_fault_model(name, ...)`
builds one by registered name; `register_scheme`, `register_fault_model` and `register_preset`
extend the registries (docs/extending.md).
"""

__version__ = "0.3.0"   # the one version string (pyproject.toml reads it)

from jaxfault.core.errors import JaxfaultError  # noqa: E402,F401
from jaxfault.core.protocol import FaultModel  # noqa: E402,F401
from jaxfault.engine import EvalResult, evaluate, evaluation_form, summarize  # noqa: E402,F401
from jaxfault.faults.fault_models import (  # noqa: E402,F401
    FAULT_MODELS, BitFlips, Composed, bit_flips, build_fault_model, compose, register_fault_model, register_preset)
from jaxfault.engine.compile_cache import enable_compile_cache  # noqa: E402,F401
from jaxfault.ecc import SCHEMES, Scheme, get_scheme, register_scheme  # noqa: E402,F401
from jaxfault.ecc.hbm import HBMFaults, hbm_faults  # noqa: E402,F401
from jaxfault.neuralfuse.faults import SRAMBitErrors, sram_bit_errors  # noqa: E402,F401
from jaxfault.swim.variation import CiMVariation, cim_variation  # noqa: E402,F401
from jaxfault.core.tasks import Task, classification, language_model  # noqa: E402,F401
from jaxfault.faults.activations import ActivationBitFlips, activation_bit_flips  # noqa: E402,F401

_LAZY = {
    "write_verify_mask": ("jaxfault.swim", "write_verify_mask"),
    "create_model": ("jaxfault.models", "create_model"),
    "load_checkpoint": ("jaxfault.training.checkpoints", "load_checkpoint"),
    "load_dataset": ("jaxfault.data", "load_dataset"),
}


def __getattr__(name):
    """Entry points whose modules import more (models, data, NeuralFuse, SWIM) load on first use."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'jaxfault' has no attribute {name!r}")


__all__ = ["JaxfaultError", "FaultModel", "EvalResult", "evaluate", "evaluation_form", "summarize",
           "FAULT_MODELS", "BitFlips", "Composed", "bit_flips", "build_fault_model", "compose", "register_fault_model",
           "register_preset",
           "SCHEMES", "Scheme", "get_scheme", "register_scheme", "HBMFaults", "hbm_faults", "SRAMBitErrors", "sram_bit_errors",
           "CiMVariation", "cim_variation", "enable_compile_cache",
           "Task", "classification", "language_model", "ActivationBitFlips", "activation_bit_flips", *_LAZY]
