"""Rare faults: a metric as the sum over k of P(K = k) E[metric | K = k] (docs/rare.md).

At realistic BERs almost every plain Monte Carlo trial draws no fault that matters, so plain
sampling spends its trials on (near) fault-free models. When the count K of faults of a
*stratification class* (a set of stored bit positions and a direction, see
:mod:`jaxfault.ecc.conditional`) is Binomial(cells, p_class), the mean metric is

    mu = sum_k P(K = k) mu_k,   mu_k = E[metric | K = k],

and each mu_k is estimated from trials drawn conditioned on exactly k class faults. This module
holds the estimator (strata, tail bound, Neyman allocation, interval) as pure host functions,
and :func:`evaluate_stratified`, which runs it through :func:`jaxfault.engine.evaluate`.

Estimator (pilot, allocation round, main phase; the estimate unbiased for the truncated sum):

1. Strata k = 0 .. k_max, with k_max the smallest k whose upper tail P(K > k_max) is at most
   ``tail``. When the class holds every possible fault, k = 0 is the fault-free model and needs
   one evaluation, no trials.
2. Pilot: ``pilot`` trials in every sampled stratum give first standard deviations s_k.
3. Allocation round: ``refine`` times the pilot's planned trials, Neyman-allocated
   (n_k proportional to P(K = k) s_k, at least ``pilot`` per stratum); with the pilot's trials it
   re-estimates s_k, because a few pilot trials of a bimodal stratum (collapse or not) often agree.
4. Main phase: fresh trials, Neyman-allocated from those s_k (at least ``pilot`` per stratum, so
   every stratum's variance has pilot - 1 degrees of freedom), their total set by a target
   half-width when one is given. The estimate uses these only: the counts depend on the earlier
   rounds, whose trials are independent of the main phase's, so the stratum means are unbiased:
   mu_hat = sum_k P(K = k) mean_k + P(K > k_max) mean_{k_max}.
5. Interval: se^2 = sum_k P(K = k)^2 s_k^2 / n_k, a Student-t quantile with the Welch-Satterthwaite
   degrees of freedom, and the tail's unknown contribution added as its full range:
   [T - t se + tail lo_m, T + t se + tail hi_m] with T the truncated sum and the metric in
   [lo_m, hi_m]. The tail plug-in in mu_hat biases it by at most P(K > k_max) (hi_m - lo_m).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check, check_probability
from jaxfault.ecc import conditional as fc

ESTIMATORS = ("auto", "stratified", "plain")
AUTO_MAX_EXPECTED = 2.0     # "auto" stratifies when the class expects at most this many faults per trial
MAX_STRATA = 32             # k_max + 1 at most
MIN_PER_STRATUM = 2
REFINE = 0.25              # the allocation round: this fraction of the pilot's plan


# ------------------------------------------------------------------------------------ the law of K
def binomial_pmf(n: int, p: float, k_max: int) -> np.ndarray:
    """P(K = k) for k = 0 .. k_max, K ~ Binomial(n, p), in float64.

    Args:
      n: number of cells (>= 0).
      p: per-cell probability in [0, 1].
      k_max: last k (>= 0).
    Returns:
      float64 array of shape (k_max + 1,).
    """
    from scipy import stats  # scipy is a dependency of jax

    check(isinstance(n, (int, np.integer)) and n >= 0, f"cells must be a non-negative integer, got {n!r}")
    p = check_probability("p", p)
    return np.asarray(stats.binom.pmf(np.arange(k_max + 1), int(n), p), np.float64)


def binomial_tail(n: int, p: float, k) -> np.ndarray:
    """P(K > k) for K ~ Binomial(n, p) (the survival function, accurate for small tails)."""
    from scipy import stats

    return np.asarray(stats.binom.sf(k, int(n), check_probability("p", p)), np.float64)


def strata_for(n: int, p: float, tail: float, max_strata: int = MAX_STRATA) -> tuple[np.ndarray, float]:
    """(P(K = k) for k = 0 .. k_max, P(K > k_max)): the smallest k_max with a tail at most ``tail``.

    Args:
      n, p: the Binomial law of the class count.
      tail: the largest upper-tail mass left out of the strata (folded into the interval).
      max_strata: most strata allowed.
    Returns:
      (weights, tail mass). Raises JaxfaultError when more than max_strata strata would be needed.
    """
    tail = check_probability("tail", tail)
    tails = binomial_tail(n, p, np.arange(max_strata))
    hits = np.flatnonzero(tails <= tail)
    if not len(hits):
        raise JaxfaultError(f"the stratification class expects {n * p:.3g} faults per trial: more than {max_strata} "
                            f"strata would be needed for a tail of {tail:g}; use plain Monte Carlo")
    k_max = int(hits[0])
    return binomial_pmf(n, p, k_max), float(tails[k_max])


TAIL_SHARE = 1 / 3          # of a target half-width, the most the unsampled tail may take


def target_tail(tail: float, half_width: float | None, metric_range=(0.0, 1.0)) -> float:
    """The upper-tail mass P(K > k_max) left out of the strata: ``tail``, or, with a target
    half-width w, up to w / 3 over the metric's range. Strata that together can move the mean by
    at most a third of the target width are then bounded (their full range joins the interval)
    instead of sampled: sampling them would cost at least a pilot each and could not narrow the
    interval by more than that third. At BER 1e-7 this leaves only k = 0 (docs/rare.md)."""
    if half_width is None:
        return tail
    return max(tail, TAIL_SHARE * float(half_width) / (metric_range[1] - metric_range[0]))


def choose_estimator(estimator: str, expected_faults: float, threshold: float = AUTO_MAX_EXPECTED) -> str:
    """"stratified" or "plain": the given one, or for "auto" stratified when the stratification
    class expects at most ``threshold`` faults per trial.

    Args:
      estimator: "auto", "stratified" or "plain".
      expected_faults: n_cells * p_class of the class.
      threshold: the "auto" limit (default AUTO_MAX_EXPECTED).
    Returns:
      "stratified" or "plain".
    """
    check(estimator in ESTIMATORS, f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator != "auto":
        return estimator
    return "stratified" if expected_faults <= threshold else "plain"


# ------------------------------------------------------------------------------------ estimator
def neyman_allocation(weights, sds, total: int, minimum: int = MIN_PER_STRATUM) -> np.ndarray:
    """Trials per stratum: n_k proportional to w_k s_k (Neyman), at least ``minimum``.

    A stratum whose trials showed no spread gets the minimum only; when none showed any, the
    trials are shared equally. No floor is put on s_k itself: raising a heavy stratum's small s_k
    to a fraction of the largest would hand it the trials of the light strata that carry the
    variance.

    Args:
      weights: stratum probabilities (the sampled strata).
      sds: standard deviations seen so far.
      total: trials to share (the result may exceed it by the minimums and rounding up).
      minimum: trials every stratum gets.
    Returns:
      int64 array of trial counts.
    """
    w = np.asarray(weights, np.float64)
    share = w * np.asarray(sds, np.float64)
    share = share / share.sum() if share.sum() > 0 else np.full_like(w, 1.0 / len(w))
    return np.maximum(np.ceil(share * total).astype(np.int64), minimum)


def t_quantile(level: float, df: float) -> float:
    """Two-sided Student-t quantile t_{(1 + level) / 2, df} (normal for infinite df)."""
    from scipy import stats  # scipy is a dependency of jax

    if not np.isfinite(df):
        return float(stats.norm.ppf(0.5 + level / 2))
    return float(stats.t.ppf(0.5 + level / 2, max(df, 1.0)))


@dataclasses.dataclass(frozen=True)
class StratifiedEstimate:
    """A stratified estimate of a bounded metric and its interval.

    Fields: ``mean``, ``lo``, ``hi`` (the interval at ``level``), ``se`` (standard error of the
    truncated sum), ``df`` (Welch-Satterthwaite), ``tail`` (P(K > k_max), folded into lo/hi),
    per stratum ``k``, ``weights``, ``means``, ``sds``, ``trials`` (of the averaged trials),
    ``pilot_sds`` and ``plan_sds`` (the spreads seen by the pilot, and by the pilot with the
    allocation round, that the main phase was allocated by), and ``passes`` (forward passes
    spent: pilot, allocation round, main phase and fault-free evaluations).
    """

    mean: float
    lo: float
    hi: float
    se: float
    df: float
    level: float
    tail: float
    k: tuple
    weights: tuple
    means: tuple
    sds: tuple
    trials: tuple
    passes: int
    pilot_sds: tuple = ()
    plan_sds: tuple = ()

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.hi - self.lo) / 2

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return {**dataclasses.asdict(self), "half_width": self.half_width}


def combine_strata(weights, values: Sequence, tail: float, *, level: float = 0.95,
                   metric_range=(0.0, 1.0), passes: int = 0, k=None) -> StratifiedEstimate:
    """The stratified estimate from per-stratum samples (module docstring, steps 3-4).

    Args:
      weights: P(K = k) of each stratum.
      values: per stratum, a 1-D array of metric values (a stratum with zero variance by
        construction, e.g. the fault-free k = 0, may hold one value).
      tail: P(K > k_max), left out of the strata.
      level: interval level.
      metric_range: (lo, hi) bounds of the metric.
      passes: forward passes spent, recorded in the result.
      k: stratum labels (default 0, 1, ...).
    Returns:
      StratifiedEstimate.
    """
    w = np.asarray(weights, np.float64)
    check(len(values) == len(w) and len(w) >= 1, f"give one value array per stratum: {len(values)} for {len(w)}")
    vals = [np.asarray(v, np.float64).ravel() for v in values]
    check(all(v.size >= 1 for v in vals), "every stratum needs at least one value")
    means = np.array([v.mean() for v in vals])
    sds = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in vals])
    n = np.array([v.size for v in vals], np.float64)
    truncated = float(np.sum(w * means))
    parts = w ** 2 * sds ** 2 / n
    var = float(parts.sum())
    denom = float(np.sum(np.where(n > 1, parts ** 2 / np.maximum(n - 1, 1), 0.0)))
    df = var ** 2 / denom if denom > 0 else math.inf
    se = math.sqrt(var)
    t = t_quantile(level, df)
    lo_m, hi_m = (float(metric_range[0]), float(metric_range[1]))
    mean = truncated + tail * float(means[-1])
    return StratifiedEstimate(mean, truncated - t * se + tail * lo_m, truncated + t * se + tail * hi_m, se, df, level,
                              float(tail), tuple(range(len(w))) if k is None else tuple(int(x) for x in k),
                              tuple(w.tolist()), tuple(means.tolist()), tuple(sds.tolist()),
                              tuple(int(x) for x in n), int(passes))


def plain_estimate(values, level: float = 0.95) -> dict:
    """Plain Monte Carlo: mean, Student-t interval, per-trial sd and trials of 1-D values.

    Args:
      values: per-trial metric values.
      level: interval level.
    Returns:
      dict with mean, lo, hi, half_width, sd, trials.
    """
    v = np.asarray(values, np.float64).ravel()
    check(v.size >= 2, f"plain Monte Carlo needs at least 2 trials, got {v.size}")
    sd = float(v.std(ddof=1))
    hw = t_quantile(level, v.size - 1) * sd / math.sqrt(v.size)
    return {"mean": float(v.mean()), "lo": float(v.mean() - hw), "hi": float(v.mean() + hw), "half_width": hw,
            "sd": sd, "trials": int(v.size)}


def plain_trials_needed(sd: float, half_width: float, level: float = 0.95) -> float:
    """Trials plain Monte Carlo needs for a half-width: (z sd / half_width)^2 (normal quantile)."""
    check(half_width > 0, f"half_width must be > 0, got {half_width!r}")
    return (t_quantile(level, math.inf) * sd / half_width) ** 2


def plan_total(weights, sds, trials: int, floor: int, half_width: float | None, tail: float, level: float,
               metric_range) -> int:
    """Main-phase trials for a target half-width: the Neyman formula (z sum_k w_k s_k / room)^2 with
    room = half_width - tail (b - a) / 2, at least ``floor`` and at most ``trials``; ``trials``
    without a target."""
    if half_width is None:
        return trials
    check(half_width > 0, f"half_width must be > 0, got {half_width!r}")
    room = half_width - tail * (metric_range[1] - metric_range[0]) / 2
    check(room > 0, f"half_width {half_width:g} is below the tail bound's share {tail:g}: lower the tail")
    need = (t_quantile(level, math.inf) * float(np.sum(np.asarray(weights) * np.asarray(sds))) / room) ** 2
    return int(min(trials, max(math.ceil(need), floor)))


def stratified(sample: Callable, weights, tail: float, key, *, complete: bool, trials: int = 64, pilot: int = 4,
               refine: float = REFINE, half_width: float | None = None, level: float = 0.95,
               metric_range=(0.0, 1.0), log: Callable[[str], None] | None = None) -> StratifiedEstimate:
    """The stratified estimator over any conditional sampler (module docstring, docs/rare.md).

    Args:
      sample: sample(ks, keys) -> 1-D metric values, one per (k, key) pair (ks int array, keys a
        typed key array of the same length): trials conditioned on exactly k class faults.
      weights: P(K = k) for k = 0 .. k_max; tail: P(K > k_max).
      key: typed PRNG key of the estimate (pilot, allocation round and main phase take independent
        streams).
      complete: the class holds every fault, so k = 0 is one deterministic evaluation.
      trials: main-phase trials to allocate (the most spent there when ``half_width`` is given).
      pilot: pilot trials per sampled stratum (>= 2), also the least any stratum gets in a round.
      refine: the allocation round's size as a fraction of the pilot's plan (0: no such round).
        Its trials and the pilot's re-estimate the s_k the main phase is allocated by; neither
        enters the estimate.
      half_width: when given, the main phase is sized to reach it (capped at ``trials``).
      level: interval level; metric_range: the metric's bounds.
      log: progress lines (None: quiet).
    Returns:
      StratifiedEstimate (passes counts every evaluation: pilot, allocation round, main phase).
    """
    check(isinstance(pilot, int) and pilot >= 2, f"pilot must be an integer >= 2, got {pilot!r}")
    check(isinstance(trials, int) and trials >= 1, f"trials must be an integer >= 1, got {trials!r}")
    check(isinstance(refine, (int, float)) and 0 <= refine <= 10, f"refine must be in [0, 10], got {refine!r}")
    w = np.asarray(weights, np.float64)
    ks = np.arange(len(w))
    sampled = ks[1:] if complete else ks
    passes = 0
    fixed = []
    if complete:
        fixed = [np.asarray(sample(np.zeros(1, np.int64), jax.random.split(jax.random.fold_in(key, 0), 1)))]
        passes += 1
    if not len(sampled):
        return combine_strata(w, fixed, tail, level=level, metric_range=metric_range, passes=passes)

    def run(phase: int, counts):
        kk = np.repeat(sampled, counts)
        idx = np.concatenate([np.arange(c) for c in counts])
        base = jax.random.fold_in(key, phase)
        keys = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(
            jnp.asarray(kk, jnp.uint32), jnp.asarray(idx, jnp.uint32))
        out = np.asarray(sample(kk, keys), np.float64)
        return [out[kk == k] for k in sampled]

    def sds_of(vals):
        return np.array([v.std(ddof=1) for v in vals])

    t0 = time.perf_counter()
    ws = w[sampled]
    floor = pilot * len(sampled)
    seen = run(1, np.full(len(sampled), pilot))
    passes += floor
    pilot_sds = sds_of(seen)
    plan_sds = pilot_sds
    if refine > 0:
        n_ref = int(math.ceil(refine * plan_total(ws, pilot_sds, trials, floor, half_width, tail, level, metric_range)))
        extra = neyman_allocation(ws, pilot_sds, n_ref, minimum=pilot)
        more = run(3, extra)
        passes += int(extra.sum())
        seen = [np.concatenate([a, b]) for a, b in zip(seen, more)]
        plan_sds = sds_of(seen)
    total = plan_total(ws, plan_sds, trials, floor, half_width, tail, level, metric_range)
    counts = neyman_allocation(ws, plan_sds, total, minimum=pilot)     # df >= pilot - 1 in every stratum
    if log:
        log(f"pilot and allocation round: {passes} trials in {time.perf_counter() - t0:.1f} s; main phase "
            f"{int(counts.sum())} trials: " + ", ".join(f"k={k}:{c} (s {s:.3g})"
                                                       for k, c, s in zip(sampled, counts, plan_sds)))
    main = run(2, counts)
    passes += int(counts.sum())
    est = combine_strata(w, fixed + main, tail, level=level, metric_range=metric_range, passes=passes)
    pad = (0.0,) if complete else ()
    return dataclasses.replace(est, pilot_sds=pad + tuple(pilot_sds.tolist()), plan_sds=pad + tuple(plan_sds.tolist()))


# ------------------------------------------------------------------------------------ the engine path
@dataclasses.dataclass(frozen=True)
class RareResult:
    """The result of :func:`evaluate_stratified`: the estimate and how it was made."""

    estimate: StratifiedEstimate
    estimator: str
    ber: float
    positions: tuple
    direction: str
    class_cells: int
    class_probability: float
    expected_class_faults: float
    clean: dict
    forward_passes: int
    seconds: float

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "estimate"},
                "estimate": self.estimate.as_dict()}


def evaluate_stratified(model, variables, images, labels, fault_model, ber: float, key, *, trials: int = 64,
                        pilot: int = 4, refine: float = REFINE, half_width: float | None = None, positions=None,
                        direction: str = "any",
                        tail: float = 1e-6, level: float = 0.95, metric: str = "top1", metric_range=(0.0, 1.0),
                        max_strata: int = MAX_STRATA, chunk: int = 16, strategy: str = "auto",
                        precision: str = "highest", batch_size: int = 1000, topk: Sequence[int] = (1,),
                        task=None, log: Callable[[str], None] | None = None) -> RareResult:
    """Stratified estimate of a metric of ``model`` under HBM faults at one BER (module docstring).

    Args:
      model, variables, images, labels: as for :func:`jaxfault.engine.evaluate`.
      fault_model: a :class:`jaxfault.ecc.hbm.HBMFaults` (its scheme, 0->1 share, mode, leaves).
      ber: the per-cell fault probability.
      key: typed PRNG key of the estimate.
      trials, pilot, refine, half_width, level: see :func:`stratified`.
      positions, direction: the stratification class (None: every stored cell; "any" direction).
      tail: the largest P(K > k_max) left out of the strata (with ``half_width``, at least a third
        of it over the metric's range: :func:`target_tail`).
      metric: the engine metric to estimate ("top1"); metric_range: its bounds.
      max_strata: most strata allowed (more raises an error: use plain Monte Carlo then).
      chunk: trials per engine call (every call has this shape, so one program is compiled).
      strategy, precision, batch_size, topk, task: the engine's (``metric`` must be one of the
        task's metrics, bounded by ``metric_range``).
      log: progress lines (None: quiet).
    Returns:
      RareResult.
    """
    from jaxfault import engine
    from jaxfault.core import tasks
    from jaxfault.ecc.hbm import HBMFaults

    check(isinstance(fault_model, HBMFaults), f"stratified estimation needs HBMFaults, got {type(fault_model).__name__}")
    ber = check_probability("ber", ber)
    check(isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key),
          f"key must be a typed JAX key, got {type(key).__name__}")
    check(isinstance(chunk, int) and chunk >= 1, f"chunk must be an integer >= 1, got {chunk!r}")
    t_start = time.perf_counter()
    base = fault_model.with_rate_bound(max(ber, float(np.float32(ber)), 1e-12))   # bounds the float32 rate
    prepared = base.prepare(variables)
    probe = fc.ConditionedHBM(base, positions, direction, 1)
    n_cls = probe.class_cells(prepared)
    p32 = float(np.float32(ber))
    q = 0.0 if base.mode == "flip" else fc.effective_zero_to_one(base.zero_to_one)
    p_cls = fc.class_probability(p32, q, direction)
    weights, tail_mass = strata_for(n_cls, p_cls, target_tail(tail, half_width, metric_range), max_strata)
    k_bound = max(1, len(weights) - 1)
    cfm = fc.ConditionedHBM(base, probe.positions, direction, k_bound)
    program = [None]
    clean = {}
    evaluated = [0]

    def sample(ks, keys):
        out = []
        n = len(ks)
        for s in range(0, n, chunk):
            kk = np.asarray(ks[s:s + chunk])
            kt = keys[s:s + chunk]
            pad = chunk - len(kk)
            if pad:
                kk = np.concatenate([kk, np.repeat(kk[-1:], pad)])
                kt = jnp.concatenate([kt, jnp.repeat(kt[-1:], pad)])
            rates = np.stack([kk.astype(np.float64), np.full(chunk, ber)], axis=1)
            if program[0] is None:
                metric_fn = tasks.make_metric_fn(engine.evaluation_form(model, variables)[0],
                                                 batch_size=min(batch_size, int(len(labels))), topk=topk,
                                                 task=task)
                program[0] = engine.make_trial_program(metric_fn, cfm, strategy=strategy, precision=precision)
            res = engine.evaluate(model, variables, images, labels, cfm, rates, kt[:, None], strategy=strategy,
                                  precision=precision, batch_size=batch_size, topk=topk, task=task,
                                  program=program[0])
            clean.update(res.clean)
            evaluated[0] += chunk + 1          # the chunk's trials and the engine's clean pass
            out.append(np.asarray(res.metrics[metric])[:chunk - pad, 0] if pad else np.asarray(res.metrics[metric])[:, 0])
            if log:
                log(f"  {min(s + chunk, n)}/{n} trials")
        return np.concatenate(out)

    est = stratified(sample, weights, tail_mass, key, complete=cfm.is_complete(), trials=trials, pilot=pilot,
                     refine=refine, half_width=half_width, level=level, metric_range=metric_range, log=log)
    return RareResult(est, "stratified", ber, cfm.positions, direction, n_cls, p_cls, n_cls * p_cls, clean,
                      evaluated[0], time.perf_counter() - t_start)
