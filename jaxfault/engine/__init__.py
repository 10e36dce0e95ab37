"""One evaluation engine: a model under a fault model over a grid of rates x trial keys.

    result = evaluate(model, variables, images, labels, fault_model, rates=[1e-4, 1e-3], keys=keys)
    result.accuracy["top1"]   # numpy (len(rates), len(keys))

Every method (HBM faults under an ECC scheme, SRAM bit errors, CiM variation, compositions of
these) goes through the same pipe:

1. ``evaluation_form(model, variables)``: the one policy for preparing a checkpoint for fault
   evaluation. A QAT model's kernels are replaced by their fake-quantized values and the model
   runs without re-quantizing (faulty weights are evaluated as stored).
2. ``fault_model.prepare(variables)``: the clean form the fault model perturbs (bf16 truncation,
   ...), then a cast to ``fault_model.eval_dtype`` (inputs too).
3. One compiled program per (model, fault model, shapes, strategy, precision): rates are
   traced, so a sweep compiles once; the rate axis runs as ``lax.map``, the trial axis as
   ``vmap`` or ``lax.map`` (``resolve_strategy``), sharded over a device mesh when one is given.

``strategy``: "vmap" batches trials into one computation (fast on GPU/TPU), "map" runs them
sequentially inside one compiled loop (fast on XLA's CPU backend, where vmapping per-trial
convolution weights is slow), "loop" is a Python loop of jitted single trials (the reference in
tests and benchmarks), "auto" is "map" on CPU and "vmap" elsewhere.

``precision``: float32 matmul/convolution precision during evaluation ("highest" by default, so
results do not depend on the backend's fast modes such as TF32; "default" selects the backend's
fast setting). It is applied while the program is traced and is part of jit's cache key.
"""
from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.batching import map_over, resolve_strategy
from jaxfault.core.errors import check
from jaxfault.core.precision import check_precision, precision_scope
from jaxfault.core.protocol import stats_dict
from jaxfault.core.tasks import make_metric_fn

PyTree = Any


# ------------------------------------------------------------------------------------ policies
def summarize(values, name: str | None = None, **kw) -> dict:
    """The one summary of per-trial values (``jaxfault.core.stats.summarize``): n, mean, std (ddof=0),
    min, max, the mean's confidence interval (ci_lo, ci_hi, half_width, level, method: the
    bounded betting interval for figures in [0, 1] such as accuracies, named by `name`, else
    Student-t), the median with its interval and the fraction of non-finite trials."""
    from jaxfault.core.stats import summarize as stats_summary

    return stats_summary(values, name=name, **kw)


def evaluation_form(model, variables: PyTree) -> tuple[Any, PyTree]:
    """(model, variables) as faults see them: a QAT model's conv/dense kernels replaced by their
    fake-quantized values and the model cloned without quantization, so faulty weights are
    evaluated as stored. Non-QAT models are returned unchanged."""
    bits = getattr(model, "quant_bits", None)
    if not bits:
        return model, variables
    from jaxfault.core.pytree import map_kernels
    from jaxfault.core.quant import fake_quant

    params = map_kernels(lambda w: fake_quant(jnp.asarray(w), bits), variables["params"])
    return model.clone(quant_bits=None), {**variables, "params": params}


@partial(jax.jit, static_argnums=1)
def _cast_floats(tree: PyTree, dtype) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def cast_floats(tree: PyTree, dtype) -> PyTree:
    """Every floating leaf of a pytree cast to dtype (None: unchanged), in one compiled program."""
    if dtype is None:
        return tree
    return _cast_floats(tree, np.dtype(dtype))


# ------------------------------------------------------------------------------------ the program
ACTIVATION_KEY_SALT = 0x61637473   # folds a trial key into its activation-fault stream ("acts")


def activation_hook(fault_model, key: jax.Array, rate) -> Callable:
    """hook(batch_index) -> (interceptor, counts) for a fault model with activation sites.

    The interceptor replaces the output of every module ``__call__`` that the fault model names as
    a site by its faulty value; the fault key of a call is
    ``fold_in(fold_in(fold_in(key, ACTIVATION_KEY_SALT), batch_index), crc32(module path))``, so
    every batch and every module draws independent transient faults, the same for the same trial.
    """
    import zlib

    base = jax.random.fold_in(key, ACTIVATION_KEY_SALT)

    def hook(batch_index):
        bkey = jax.random.fold_in(base, batch_index)
        counts = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return out
            path = "/".join(str(p) for p in context.module.path)
            mkey = jax.random.fold_in(bkey, zlib.crc32(path.encode()) & 0x7FFFFFFF)
            r = fault_model.perturb_output(mkey, path, type(context.module).__name__, out, rate)
            if r is None:
                return out
            out, n = r
            counts.append(jnp.asarray(n, jnp.float32))
            return out

        return interceptor, counts

    return hook


@dataclasses.dataclass(frozen=True)
class TrialProgram:
    """A compiled evaluation of one (model, fault model) pair over (rates, keys).

    ``run(variables, images, labels, rates, keys)`` takes the prepared variables and inputs,
    rates of shape (R,) and keys of shape (R, T), and returns ({metric: (R, T)}, {stat: (R, T)}).
    """

    fault_model: Any
    strategy: str
    precision: str
    run: Callable
    jitted: Any          # the underlying jax.jit function (its cache holds the compiled programs)

    def compiled_programs(self) -> int:
        """How many programs this evaluation has compiled so far (1 for any number of rates)."""
        return int(self.jitted._cache_size())


def make_trial_program(metric_fn: Callable, fault_model, *, strategy: str = "auto", precision: str = "highest",
                       mesh=None) -> TrialProgram:
    """Build the jitted rates x trials program of a fault model (compiled on first call).

    The program runs ``metric_fn(perturbed variables, images, labels)`` for every rate and key.

    With a ``mesh`` (1-D, axis 'trials'), the trial axis is sharded over its devices; T must then
    be a multiple of the device count (``evaluate`` pads it).
    """
    strategy = resolve_strategy(strategy)
    check_precision(precision)

    acts = "activations" in fault_model.sites

    def one(variables, images, labels, rate, key):
        faulty, stats = fault_model.perturb(key, variables, rate)
        stats = stats_dict(stats)
        if not acts:
            return metric_fn(faulty, images, labels), stats
        metrics = dict(metric_fn(faulty, images, labels, output_hook=activation_hook(fault_model, key, rate)))
        return metrics, {**stats, "activation_faults": metrics.pop("activation_faults")}

    if strategy == "loop":
        single = jax.jit(one)

        def run_loop(variables, images, labels, rates, keys):
            with precision_scope(precision):
                rows = [[single(variables, images, labels, r, k) for k in ks] for r, ks in zip(rates, keys)]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs).reshape(keys.shape), *[o for row in rows for o in row])

        return TrialProgram(fault_model, strategy, precision, run_loop, single)

    def trials_of_rate(variables, images, labels, rate, ks):
        return map_over(lambda k: one(variables, images, labels, rate, k), ks, strategy)

    def grid(variables, images, labels, rates, keys):
        if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.wrap_key_data(keys)      # raw key data of a multi-process global array
        return jax.lax.map(lambda rk: trials_of_rate(variables, images, labels, rk[0], rk[1]), (rates, keys))

    if mesh is not None:
        from jax.sharding import PartitionSpec as P

        grid = jax.shard_map(grid, mesh=mesh, in_specs=(P(), P(), P(), P(), P(None, "trials")),
                             out_specs=P(None, "trials"), check_vma=False)
    jitted = jax.jit(grid)

    def run(variables, images, labels, rates, keys):
        if mesh is not None and multi_process():
            # replicated inputs travel as host values; the sharded result is gathered on every process
            from jax.experimental import multihost_utils

            variables, images, labels, rates = jax.device_get((variables, images, labels, rates))
            with precision_scope(precision):
                out = jitted(variables, images, labels, rates, keys)
            return multihost_utils.process_allgather(out, tiled=True)
        with precision_scope(precision):
            return jitted(variables, images, labels, rates, keys)

    return TrialProgram(fault_model, strategy, precision, run, jitted)


# ------------------------------------------------------------------------------------ evaluate
@dataclasses.dataclass
class EvalResult:
    """Accuracies and realised fault statistics of a rates x trials evaluation (numpy)."""

    rates: np.ndarray                 # (R,) or (R, stages)
    metrics: dict                     # name -> (R, T), e.g. "top1"
    stats: dict                       # name -> (R, T), e.g. "realised_ber"
    clean: dict                       # name -> float: prepared model, no faults ({} when not asked)
    seconds: float                    # wall time of the evaluation (compilation and clean pass included)
    strategy: str
    precision: str
    task: str = "classification"
    work: Any = None                  # trials per route of a reusing evaluation (jaxfault.engine.reuse), else None

    @property
    def accuracy(self) -> np.ndarray:
        """top-1 accuracy, shape (R, T)."""
        return self.metrics["top1"]

    def summary(self, i: int) -> dict:
        """JSON-ready summary of rate i: every metric and stat summarised over the trials."""
        out = {k: {**summarize(v[i], k), "values": [float(x) for x in v[i]]} for k, v in self.metrics.items()}
        out.update({k: summarize(v[i], k) for k, v in self.stats.items()})
        return out


def shard_keys(keys: jax.Array, mesh=None) -> jax.Array:
    """Keys (R, T) padded along T to a multiple of the mesh's devices (repeating the last key;
    the extra results are cut off by the caller) and placed with the trial axis sharded."""
    if mesh is None:
        return keys
    from jax.sharding import NamedSharding, PartitionSpec as P

    T = keys.shape[1]
    n_dev = int(mesh.devices.size)
    padded = -(-T // n_dev) * n_dev
    if padded != T:
        keys = jnp.concatenate([keys, jnp.repeat(keys[:, -1:], padded - T, axis=1)], axis=1)
    sharding = NamedSharding(mesh, P(None, "trials"))
    if multi_process():
        # every process holds the same keys; each contributes the shards of its own devices
        data = np.asarray(jax.random.key_data(keys))
        return jax.make_array_from_callback(data.shape, NamedSharding(mesh, P(None, "trials", None)),
                                            lambda idx: data[idx])
    return jax.device_put(keys, sharding)


def multi_process() -> bool:
    """True when this program is one of several JAX processes (jax.distributed.initialize)."""
    return jax.process_count() > 1


def _as_rates(rates) -> np.ndarray:
    r = np.atleast_1d(np.asarray(rates, np.float64))
    check(r.ndim in (1, 2) and r.size >= 1,
          f"rates must be a non-empty list (or a list of per-stage rate vectors), got shape {r.shape}")
    check(bool(np.all(np.isfinite(r))) and bool(np.all(r >= 0)), f"rates must be finite and >= 0, got {r.tolist()}")
    return r


def _as_keys(keys, n_rates: int) -> jax.Array:
    check(isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key),
          f"keys must be typed JAX keys (jax.random.key / split), got {type(keys).__name__}")
    if keys.ndim == 1:
        return jnp.broadcast_to(keys[None], (n_rates, keys.shape[0]))
    check(keys.ndim == 2 and keys.shape[0] == n_rates, f"keys must have shape (T,) or ({n_rates}, T), got {keys.shape}")
    return keys


def prepare(model, variables, images, fault_model):
    """(model, prepared variables, images) in the fault model's evaluation form and dtype."""
    model, variables = evaluation_form(model, variables)
    variables = cast_floats(fault_model.prepare(variables), fault_model.eval_dtype)
    images = jnp.asarray(images)
    if fault_model.eval_dtype is not None and jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(fault_model.eval_dtype)
    return model, variables, images


def evaluate(model, variables: PyTree, inputs, targets, fault_model, rates, keys: jax.Array, *,
             strategy: str = "auto", precision: str = "highest", batch_size: int = 1000,
             topk: Sequence[int] = (1,), task=None, mesh=None, program: TrialProgram | None = None,
             clean: bool = True, reuse: bool = False, compute_dtype: str | None = None) -> EvalResult:
    """Evaluate `model` under `fault_model` at every rate for every trial key.

    inputs, targets: what ``task`` scores (default: classification of images (N, ...) by integer
    labels (N,) with top-k accuracies; :func:`jaxfault.core.tasks.language_model`: token ids (N, L)
    and next-token targets (N, L)); checked once here.

    rates: shape (R,), or (R, S) for a composition of S stages (one rate per stage).
    keys: typed keys of shape (T,) (the same trials at every rate: common random numbers, which
    makes sweeps smooth) or (R, T). The fault model is sized for the largest rate
    (``with_rate_bound``), so the whole grid is one compiled program, kept by jit's cache for
    later calls with the same shapes and fault-model structure. ``clean``: also evaluate the
    prepared model without faults (``EvalResult.clean``; {} when False). ``reuse`` (opt-in): on one
    device with strategy "map" and weight faults only, skip trials whose answer is known and
    start trials from shared clean activations (jaxfault.engine.reuse; the same numbers, bit for bit,
    but its one program compiles more slowly than the plain grid, so it pays off only when many
    trials are evaluated).
    ``compute_dtype``: "float32" or "bfloat16" to run the arithmetic in that dtype instead of the
    fault model's own (None). Returns an EvalResult whose arrays have shape (R, T); its
    ``seconds`` count everything but the input checks, the clean pass included.
    """
    from jaxfault.core import tasks

    task = tasks.classification(topk) if task is None else task
    check(isinstance(task, tasks.Task), f"task must be a jaxfault.core.tasks.Task, got {type(task).__name__}")
    task.check_data(inputs, targets)
    check(compute_dtype in (None, "float32", "bfloat16"),
          f"compute_dtype must be None, 'float32' or 'bfloat16', got {compute_dtype!r}")
    images, labels = inputs, targets
    rates = _as_rates(rates)
    keys = _as_keys(keys, rates.shape[0])
    t0 = time.perf_counter()
    bound = rates.max(axis=0)
    fm = (fault_model.with_rate_bound(float(bound) if bound.ndim == 0 else bound)
          if program is None else program.fault_model)
    if compute_dtype is not None and program is None:
        from jaxfault.faults.fault_models import InDtype

        fm = InDtype(fm, compute_dtype)
    eval_model, prepared, x = prepare(model, variables, images, fm)
    y = jnp.asarray(labels)
    bs = min(batch_size, int(y.shape[0]))
    T = keys.shape[1]
    if (program is None and mesh is None and resolve_strategy(strategy) != "loop"
            and "activations" not in getattr(fm, "sites", ()) + getattr(fault_model, "sites", ())):
        from jaxfault.engine import reuse as _reuse

        r32 = jnp.asarray(rates, jnp.float32)
        reusing = bool(reuse) and _reuse.strategy_reuses(strategy)
        spec = _reuse.Spec(eval_model, fm, precision, bs, task,
                           staged=reusing and bool(clean) and _reuse.can_stage(eval_model, prepared, x, bs),
                           clean=bool(clean))
        if _reuse.hashable(spec):
            with precision_scope(precision):
                if reusing:
                    try:
                        metrics, stats, clean_m, work = _reuse.evaluate_reusing(spec, prepared, x, y, r32, keys)
                    except _reuse.LayoutDiffers:   # found while tracing: nothing has run
                        reusing = False
                if not reusing:
                    (metrics, stats, clean_m), work = _reuse.evaluate_grid(spec, resolve_strategy(strategy), prepared,
                                                                           x, y, r32, keys, clean), None
            seconds = time.perf_counter() - t0
            return EvalResult(rates, {k: np.asarray(v) for k, v in metrics.items()},
                              {k: np.asarray(v) for k, v in stats.items()}, clean_m, seconds,
                              resolve_strategy(strategy), precision, task.name, work)
    metric_fn = make_metric_fn(eval_model, batch_size=bs, task=task)
    clean_m = {}
    if clean:
        with precision_scope(precision):
            clean_m = {k: float(v) for k, v in jax.jit(metric_fn)(prepared, x, y).items()}
    program = program or make_trial_program(metric_fn, fm, strategy=strategy, precision=precision, mesh=mesh)
    keys = shard_keys(keys, mesh)
    metrics, stats = program.run(prepared, x, y, jnp.asarray(rates, jnp.float32), keys)
    metrics, stats = jax.device_get((metrics, stats))
    seconds = time.perf_counter() - t0
    cut = lambda d: {k: np.asarray(v)[:, :T] for k, v in d.items()}  # noqa: E731
    return EvalResult(rates, cut(metrics), cut(stats), clean_m, seconds, program.strategy, precision, task.name)
