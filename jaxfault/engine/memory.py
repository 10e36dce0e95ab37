"""Memory-bounded trials: how many faulty instances one evaluation may hold at once.

Every trial builds one faulty copy of the model's stored variables (plus the fault model's words
and the activations of one evaluation batch). Batching T trials with ``vmap`` holds T such copies;
``lax.map`` over chunks of B trials (the engine's strategy ``map:B``) holds B. The clean model and
the inputs are shared by all trials and held once.

``trial_memory`` measures one trial's working set from the compiled single-trial program (XLA's
memory analysis: its temporaries and outputs), and the shared part from its arguments.
``bounded_strategy`` turns a batching strategy into one whose chunk fits a byte budget:
``(budget - shared) // per_trial`` trials at a time, at least one. The default budget is
``DEFAULT_FRACTION`` of the device's memory (the accelerator's ``bytes_limit``, or the host's
physical memory on CPU).
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError, check

DEFAULT_FRACTION = 0.5


def device_memory_bytes(device=None) -> int:
    """Memory of a device in bytes: an accelerator's allocator limit, else the host's physical memory."""
    d = device or jax.devices()[0]
    try:
        stats = d.memory_stats() or {}
    except Exception:  # backends without allocator statistics (the CPU backend on some versions)
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_budget(device=None) -> int:
    """The default memory budget of an evaluation: DEFAULT_FRACTION of the device's memory."""
    return int(DEFAULT_FRACTION * device_memory_bytes(device))


def check_budget(budget) -> int:
    """A positive integer byte budget."""
    check(isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0,
          f"memory budget must be a positive number of bytes, got {budget!r}")
    return int(budget)


def trial_memory(one: Callable, *args) -> tuple[int, int]:
    """(per-trial bytes, shared bytes) of a single-trial function one(*args), from XLA's memory
    analysis of its compiled program: temporaries plus outputs per trial; arguments (the clean
    variables, the inputs, the key) shared."""
    compiled = jax.jit(one).lower(*args).compile()
    m = compiled.memory_analysis()
    if m is None:
        raise JaxfaultError(f"the {jax.default_backend()} backend reports no memory analysis of compiled programs")
    per = int(m.temp_size_in_bytes + m.output_size_in_bytes)
    return max(per, 1), int(m.argument_size_in_bytes)


def trials_per_chunk(per_trial: int, shared: int, budget: int, trials: int) -> int:
    """How many trials fit the budget at once (at most `trials`); a JaxfaultError when not even
    one does."""
    budget = check_budget(budget)
    if shared + per_trial > budget:
        raise JaxfaultError(f"one trial needs {(shared + per_trial) / 2**30:.2f} GiB "
                            f"({shared / 2**30:.2f} GiB shared + {per_trial / 2**30:.2f} GiB per trial), "
                            f"more than the memory budget of {budget / 2**30:.2f} GiB")
    return int(max(1, min(trials, (budget - shared) // per_trial)))


def bounded_strategy(strategy: str, per_trial: int, shared: int, budget: int, trials: int) -> str:
    """A batching strategy whose chunk of trials fits the budget: 'vmap' becomes 'map:B' when
    fewer than all trials fit, 'map:B0' gets B = min(B0, what fits); 'map' (one trial at a time)
    and 'loop' are returned unchanged (after checking that one trial fits)."""
    from jaxfault.core.batching import parse_strategy

    kind, chunk = parse_strategy(strategy)
    fit = trials_per_chunk(per_trial, shared, budget, trials)
    if kind == "vmap":
        return "vmap" if fit >= trials else f"map:{fit}"
    if kind == "map" and chunk:
        return f"map:{min(chunk, fit)}"
    return kind


def evaluation_trial_memory(model, variables, inputs, targets, fault_model, rate: float, *, task=None,
                            batch_size: int = 1000, precision: str = "highest") -> tuple[int, int]:
    """(per-trial bytes, shared bytes) of one trial of jaxfault.evaluate with these arguments:
    the fault model sized for `rate`, the model's prepared variables and the task's metric."""
    from jaxfault import engine
    from jaxfault.core import tasks
    from jaxfault.core.precision import precision_scope

    task = tasks.classification() if task is None else task
    fm = fault_model.with_rate_bound(rate)
    eval_model, prepared, x = engine.prepare(model, variables, inputs, fm)
    y = jnp.asarray(targets)
    metric = tasks.make_metric_fn(eval_model, batch_size=min(batch_size, int(y.shape[0])), task=task)
    acts = "activations" in fm.sites

    def one(v, xx, yy, key):
        faulty, _ = fm.perturb(key, v, jnp.float32(rate))
        if acts:
            return metric(faulty, xx, yy, output_hook=engine.activation_hook(fm, key, jnp.float32(rate)))
        return metric(faulty, xx, yy)

    with precision_scope(precision):
        return trial_memory(one, prepared, x, y, jax.random.key(0))


__all__ = ["DEFAULT_FRACTION", "bounded_strategy", "check_budget", "default_budget", "device_memory_bytes",
           "evaluation_trial_memory", "trial_memory", "trials_per_chunk"]
