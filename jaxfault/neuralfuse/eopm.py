"""EOPM (expectation over perturbed models) training of a NeuralFuse generator.

Per batch: ``loss = CE(f(G(x)), y) + lam * mean_k CE(f_k(G(x)), y)`` with f the clean (QAT,
fake-quantized) base model and f_1..f_N perturbed models drawn fresh every step. Only the
generator G is trained; the base model is frozen.

The project's step (:func:`make_eopm_step`) computes G(x) once and evaluates the N perturbed
models of the step inside one jitted computation, batched over their N keys; the batching
strategy is a measured per-backend choice (see bench/eopm.py):

* ``"map"``   - ``lax.map`` over the models (sequential inside one compiled loop; fastest on XLA CPU),
* ``"vmap"``  - ``vmap`` over the models (XLA folds the N weight sets into grouped convolutions /
  batched matmuls; best on accelerators, several times slower on CPU),
* ``"map:B"`` - ``lax.map`` over chunks of B models with vmap inside (a mix of both),
* ``"auto"``  - "map" on CPU, "vmap" on GPU/TPU.

:func:`reference_step_grads` is the reference's algorithm (a Python loop of N full steps, each
recomputing G(x) and backpropagating separately, gradients averaged): it gives the same loss
and gradient and is used by the tests and the benchmark.

Perturbed models are identified by integer seeds, like the reference's: training draws N seeds
uniformly in [0, TRAIN_SEED_HIGH) per step, evaluation uses seeds from EVAL_SEED_BASE on, which can
never collide with training's. Seed s's fault map is drawn with the typed key

    perturbed_model_key(s) = fold_in(PERTURBED_MODELS_ROOT, s),
    PERTURBED_MODELS_ROOT  = jaxfault.core.keys.stream(jax.random.key(0), "neuralfuse/perturbed_models"),

so a seed names the same perturbed model in every run, process and CLI, and no other stream of
the project (run roots ``key(seed)``, named streams) coincides with it.

Generator batch-norm statistics. The reference calls G(x) once per perturbed model, N times per
batch in train mode, and each call moves the running statistics towards the same batch statistics
s: r <- m r + (1 - m) s, N times, i.e. r_N = m^N r + (1 - m^N) s (m = 0.9 in flax's convention).
jaxfault computes G(x) once; with ``batch_stats_update="reference"`` (default) it applies that
N-fold update, with ``"once"`` a single update r <- m r + (1 - m) s (jaxfault's earlier behaviour,
(1 - m^N)/(1 - m) times smaller a step: 6.5x at N = 10).

Convolutions: the generator and the base model are traced with ``conv_impl="xla"`` (module clones,
see jaxfault.models.layers): in these backprop-heavy steps XLA's convolution is faster on CPU than
the shift-add path that ``auto`` picks for one-input-channel layers (see docs/neuralfuse.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxfault.core.batching import map_over, parse_strategy
from jaxfault.core.errors import check, check_probability
from jaxfault.core.keys import stream
from jaxfault.models.generators import BN_MOMENTUM
from jaxfault.models.layers import with_conv_impl
from jaxfault.neuralfuse.faults import check_placement, perturb_variables, resolve_layout
from jaxfault.core.quant import check_bits

TRAIN_SEED_HIGH = 30000
EVAL_SEED_BASE = 50000
BATCH_STATS_UPDATES = ("reference", "once")
PERTURBED_MODELS_ROOT = stream(jax.random.key(0), "neuralfuse/perturbed_models")

PyTree = Any


@dataclass(frozen=True)
class EOPMConfig:
    """Fault model and loss settings of EOPM training."""
    ber: float = 0.01
    ber0: float = 0.5
    bits: int = 8
    placement: str = "independent"
    layout: str | None = None  # weight order in the SRAM words; None: the placement's default (resolve_layout)
    n_models: int = 10
    lam: float = 5.0
    strategy: str = "auto"
    base_range: str = "symmetric"  # value range the base model expects: "symmetric" [-1,1] or "unit" [0,1]
    batch_stats_update: str = "reference"  # generator BN running stats: N updates per step, or "once"
    # any fault model (jaxfault.core.protocol.FaultModel, e.g. build_fault_model("hbm", ...)) instead
    # of the SRAM bit errors of ber0/bits/placement/layout; its rate is `ber`
    fault_model: Any = None

    def validate(self) -> "EOPMConfig":
        check_probability("ber", self.ber)
        check_probability("ber0", self.ber0)
        check_bits(self.bits)
        check_placement(self.placement)
        resolve_layout(self.layout, self.placement)
        check(isinstance(self.n_models, int) and self.n_models >= 1, f"n_models must be >= 1, got {self.n_models!r}")
        check(self.lam >= 0, f"lam must be >= 0, got {self.lam!r}")
        parse_strategy(self.strategy)
        check(self.base_range in ("symmetric", "unit"), f"unknown value range {self.base_range!r}")
        check(self.batch_stats_update in BATCH_STATS_UPDATES,
              f"unknown batch_stats_update {self.batch_stats_update!r}; choose {', '.join(BATCH_STATS_UPDATES)}")
        if self.fault_model is not None:
            from jaxfault.core.protocol import FaultModel

            check(isinstance(self.fault_model, FaultModel),
                  f"fault_model must be a FaultModel, got {type(self.fault_model).__name__}")
            check("activations" not in self.fault_model.sites,
                  "EOPM perturbs the base model's stored weights; an activation fault model has no weights to draw")
        return self


PREPARED = "eopm_prepared"    # variables collection: the fault model's prepared weights (base_variables)


def base_variables(model, cfg: EOPMConfig, variables: dict) -> dict:
    """The base model's variables as EOPM's loss functions take them. With ``cfg.fault_model``,
    its ``prepare`` is applied once, here, outside the compiled step, to the weights as evaluated
    (a QAT model's kernels fake-quantized: jaxfault.engine.evaluation_form); the result travels
    as the extra collection ``eopm_prepared``, so the clean model still runs its own weights.
    Without one, the variables are returned as they are."""
    if cfg.fault_model is None:
        return variables
    from jaxfault.engine import evaluation_form

    return {**variables, PREPARED: cfg.fault_model.prepare(evaluation_form(model, variables)[1])["params"]}


def perturbation(cfg: EOPMConfig) -> Callable:
    """perturb(base_vars, key) -> the variables of one perturbed model, as the faulty model runs them.

    Without ``cfg.fault_model``: the SRAM bit errors of NeuralFuse (ber, ber0, bits, placement,
    layout) on the quantized kernels, as the reference draws them. With one: that fault model's
    ``perturb`` at rate ``ber``, exactly as the engine draws it, of the prepared weights that
    :func:`base_variables` put beside the base variables."""
    if cfg.fault_model is None:
        return lambda v, key: perturb_variables(v, key, cfg.ber, cfg.ber0, cfg.bits, cfg.placement, layout=cfg.layout)
    fm = cfg.fault_model.with_rate_bound(max(cfg.ber, getattr(cfg.fault_model, "rate_bound", cfg.ber)))

    def perturb(v, key):
        if PREPARED not in v:
            raise ValueError("EOPM with a fault_model takes base_variables(model, cfg, variables)")
        plain = {k: x for k, x in v.items() if k != PREPARED}
        return fm.perturb(key, {**plain, "params": v[PREPARED]}, jnp.float32(cfg.ber))[0]

    return perturb


def batch_over(fn: Callable, xs: jax.Array, strategy: str) -> Any:
    """Stack fn(x) over the leading axis of xs with the chosen strategy (inside a jit)."""
    return map_over(fn, xs, strategy)


def perturbed_model_key(seed) -> jax.Array:
    """The typed key of perturbed model `seed` (an integer, traced or not; see the module docstring)."""
    return jax.random.fold_in(PERTURBED_MODELS_ROOT, jnp.asarray(seed, jnp.uint32))


def seeds_to_keys(seeds: jax.Array) -> jax.Array:
    """Integer seeds -> typed keys, one perturbed model per seed."""
    return jax.vmap(perturbed_model_key)(jnp.asarray(seeds))


def train_seeds(step_key: jax.Array, n: int) -> jax.Array:
    """N fresh training seeds in [0, TRAIN_SEED_HIGH) drawn with the step's key."""
    return jax.random.randint(step_key, (n,), 0, TRAIN_SEED_HIGH)


def eval_seeds(m: int, offset: int = 0) -> jax.Array:
    """M evaluation seeds EVAL_SEED_BASE + offset + [0, M): disjoint from every training seed."""
    return jnp.arange(m, dtype=jnp.int32) + EVAL_SEED_BASE + offset


def to_base_range(x: jax.Array, base_range: str) -> jax.Array:
    """Generator images live in [-1, 1]; map them to the range the base model was trained on."""
    return x if base_range == "symmetric" else (x + 1.0) * 0.5


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def _models(model):
    clean = with_conv_impl(model, "xla")
    faulty = clean.clone(quant_bits=None) if hasattr(clean, "quant_bits") else clean
    return clean, faulty


def n_fold_update(old: PyTree, once: PyTree, n: int, momentum: float = BN_MOMENTUM) -> PyTree:
    """Running statistics after n identical updates, from the state after one.

    One update is once = m * old + (1 - m) * s; n of them give m^n * old + (1 - m^n) * s
    = old + (once - old) * (1 - m^n) / (1 - m)."""
    factor = (1.0 - momentum ** n) / (1.0 - momentum)
    return jax.tree_util.tree_map(lambda o, u: o + (u - o) * jnp.asarray(factor, o.dtype), old, once)


def make_loss_fns(generator, model, cfg: EOPMConfig):
    """(eopm_loss, single_loss): pure loss functions of the generator params.

    eopm_loss(gparams, gstats, base_vars, x, y, seeds) -> (loss, aux) computes G(x) once and all
    len(seeds) perturbed models batched; single_loss(..., seed) is one reference step's loss
    CE(f(G(x))) + lam * CE(f_seed(G(x))) (its mean over seeds equals eopm_loss); its batch_stats
    are one train-mode update of gstats. eopm_loss's batch_stats follow cfg.batch_stats_update.
    Both trace the generator and the base model with XLA's convolution.
    """
    cfg.validate()
    clean_model, faulty_model = _models(model)
    generator = with_conv_impl(generator, "xla")
    perturb = perturbation(cfg)

    def gen(gparams, gstats, x):
        return generator.apply({"params": gparams, "batch_stats": gstats}, x, train=True,
                               mutable=["batch_stats"])

    def perturbed_ce(base_vars, xb, y, seed):
        pv = perturb(base_vars, perturbed_model_key(seed))
        logits = faulty_model.apply(pv, xb, train=False)
        return cross_entropy(logits, y), accuracy(logits, y)

    def eopm_loss(gparams, gstats, base_vars, x, y, seeds):
        base_vars = jax.lax.stop_gradient(base_vars)
        xg, new_state = gen(gparams, gstats, x)
        xb = to_base_range(xg, cfg.base_range)
        clean_logits = clean_model.apply(base_vars, xb, train=False)
        clean_ce = cross_entropy(clean_logits, y)
        pce, pacc = batch_over(lambda s: perturbed_ce(base_vars, xb, y, s), seeds, cfg.strategy)
        loss = clean_ce + cfg.lam * jnp.mean(pce)
        stats = new_state["batch_stats"]
        if cfg.batch_stats_update == "reference":
            stats = n_fold_update(gstats, stats, seeds.shape[0])
        aux = {"batch_stats": stats, "clean_ce": clean_ce, "perturbed_ce": jnp.mean(pce),
               "clean_acc": accuracy(clean_logits, y), "perturbed_acc": jnp.mean(pacc)}
        return loss, aux

    def single_loss(gparams, gstats, base_vars, x, y, seed):
        base_vars = jax.lax.stop_gradient(base_vars)
        xg, new_state = gen(gparams, gstats, x)
        xb = to_base_range(xg, cfg.base_range)
        clean_logits = clean_model.apply(base_vars, xb, train=False)
        clean_ce = cross_entropy(clean_logits, y)
        pce, pacc = perturbed_ce(base_vars, xb, y, seed)
        aux = {"batch_stats": new_state["batch_stats"], "clean_ce": clean_ce, "perturbed_ce": pce,
               "clean_acc": accuracy(clean_logits, y), "perturbed_acc": pacc}
        return clean_ce + cfg.lam * pce, aux

    return eopm_loss, single_loss


def make_optimizer(learning_rate: float = 1e-3, decay_steps: int = 1000, decay_rate: float = 0.5) -> optax.GradientTransformation:
    """Adam(b1=0.5, b2=0.999) with step decay: lr * decay_rate ** (step // decay_steps)."""
    check(learning_rate > 0, f"learning rate must be > 0, got {learning_rate!r}")
    check(decay_steps >= 1, f"decay steps must be >= 1, got {decay_steps!r}")
    schedule = optax.exponential_decay(learning_rate, transition_steps=decay_steps, decay_rate=decay_rate,
                                       staircase=True)
    return optax.adam(schedule, b1=0.5, b2=0.999)


def init_train_state(gen_variables: dict, optimizer: optax.GradientTransformation) -> dict:
    """{"params", "batch_stats", "opt_state", "step"} for the generator."""
    return {"params": gen_variables["params"], "batch_stats": gen_variables.get("batch_stats", {}),
            "opt_state": optimizer.init(gen_variables["params"]), "step": jnp.zeros((), jnp.int32)}


def make_eopm_step(generator, model, cfg: EOPMConfig, optimizer: optax.GradientTransformation):
    """Jitted step(state, base_vars, x, y, key) -> (state, metrics): N fresh seeds from key,
    G(x) once, the N perturbed models batched, one Adam update of G."""
    eopm_loss, _ = make_loss_fns(generator, model, cfg)
    grad_fn = jax.value_and_grad(eopm_loss, has_aux=True)

    @jax.jit
    def step(state, base_vars, x, y, key):
        seeds = train_seeds(key, cfg.n_models)
        (loss, aux), grads = grad_fn(state["params"], state["batch_stats"], base_vars, x, y, seeds)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates), "batch_stats": aux.pop("batch_stats"),
                     "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, **aux}

    return step


def eopm_loss_and_grads(generator, model, cfg: EOPMConfig):
    """Jitted (gparams, gstats, base_vars, x, y, seeds) -> ((loss, aux), grads) of the batched step."""
    eopm_loss, _ = make_loss_fns(generator, model, cfg)
    return jax.jit(jax.value_and_grad(eopm_loss, has_aux=True))


def reference_step_grads(generator, model, cfg: EOPMConfig):
    """The reference's algorithm: fn(gparams, gstats, base_vars, x, y, seeds) -> ((loss, aux), grads)
    as a Python loop of len(seeds) jitted full steps (each recomputes G(x) in train mode and
    backpropagates through G separately), losses and gradients averaged. Each call starts from the
    previous call's running statistics, as the reference's N generator calls do, so aux's
    batch_stats hold N updates (with cfg.batch_stats_update="once": the first call's single one)."""
    _, single_loss = make_loss_fns(generator, model, cfg)
    one = jax.jit(jax.value_and_grad(single_loss, has_aux=True))

    def fn(gparams, gstats, base_vars, x, y, seeds):
        losses, auxes, grads = [], [], None
        stats = gstats
        for s in list(seeds):
            (loss, aux), g = one(gparams, stats, base_vars, x, y, s)
            if cfg.batch_stats_update == "reference" or not auxes:
                stats = aux["batch_stats"]
            losses.append(loss)
            auxes.append(aux)
            grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
        n = len(losses)
        grads = jax.tree_util.tree_map(lambda g: g / n, grads)
        aux = {k: jnp.mean(jnp.stack([a[k] for a in auxes])) for k in auxes[0] if k != "batch_stats"}
        aux["batch_stats"] = stats
        return (jnp.mean(jnp.stack(losses)), aux), grads

    return fn
