"""Run a campaign: every unfinished grid point, its trials sharded over all devices.

Points are grouped by everything but their rate; each group is one compiled program of the
evaluation engine, sized for the group's largest rate, so a sweep over rates compiles once.
Each point's record is appended to the results file as soon as it finishes (a kill loses at
most the point in flight), and a resumed run skips the points already there.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxfault import engine
from jaxfault.core import stats, tasks
from jaxfault.campaign import methods
from jaxfault.campaign.grid import GridPoint
from jaxfault.core.keys import stream, trial_keys


def trial_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'trials' over the given (default: all visible) devices."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.array(devices), ("trials",))


@dataclasses.dataclass
class EvalData:
    """What every point needs: the model, its variables and the evaluation data."""

    model: Any
    variables: dict
    images: Any
    labels: Any
    batch_size: int = 1000
    task: Any = None                     # a jaxfault.core.tasks.Task; None: classification (top-1)


@dataclasses.dataclass
class Campaign:
    """A validated campaign: grid points, trials per point, seed and run settings."""

    points: list[GridPoint]
    trials: int
    seed: int
    strategy: str = "auto"
    precision: str = "highest"
    ci_width: float | None = None        # trials in chunks of `trials` until the accuracy's half-width <= this
    max_trials: int | None = None        # the cap of such a run (default 10 x trials)
    level: float = 0.95                  # confidence level of every interval in the records


class ProgramCache:
    """The compiled programs of one campaign run, one per group of points (explicit, local)."""

    def __init__(self, data: EvalData, campaign: Campaign, mesh: Mesh):
        self.data, self.campaign, self.mesh = data, campaign, mesh
        self.bounds: dict[str, float] = {}
        for p in campaign.points:
            g = methods.group_key(p.params)
            self.bounds[g] = max(self.bounds.get(g, 0.0), methods.split_point(p.params)[3])
        self.programs: dict[str, tuple] = {}

    @property
    def compiled(self) -> int:
        """Programs built so far (each compiles once, on its first point)."""
        return len(self.programs)

    def program_for(self, params: dict):
        g = methods.group_key(params)
        if g not in self.programs:
            fm, _, _ = methods.build_point(params, self.bounds[g])
            model, prepared, x = engine.prepare(self.data.model, self.data.variables, self.data.images, fm)
            y = jnp.asarray(self.data.labels)
            metric = tasks.make_metric_fn(model, batch_size=min(self.data.batch_size, int(y.shape[0])),
                                          task=self.data.task)
            prog = engine.make_trial_program(metric, fm, strategy=self.campaign.strategy,
                                             precision=self.campaign.precision, mesh=self.mesh)
            self.programs[g] = (prog, prepared, x, y)
        return self.programs[g]


def run_point(point: GridPoint, cache: ProgramCache) -> dict:
    """Evaluate one point's trials; returns its record (without file bookkeeping).

    With ``ci_width``, trials run in chunks of ``trials`` (one compiled program) until the
    accuracy's interval half-width is at most ci_width or ``max_trials`` ran; trial i always uses
    key i of ``trial_keys(point key, max_trials)``, so a resumed run redraws the same trials."""
    c = cache.campaign
    t0 = time.perf_counter()
    prog, prepared, x, y = cache.program_for(point.params)
    name, _, rate_name, rate, data = methods.split_point(point.params)
    pkey = point.key(c.seed)
    variables = methods.add_fault_data(name, data, prepared, stream(pkey, "selection"))
    cap = stats.check_sequential(c.trials, c.ci_width, c.max_trials)
    all_keys = trial_keys(pkey, cap or c.trials)
    rates = jnp.asarray([rate], jnp.float32)
    if cache.data.task is not None and cache.data.task.name == "language_model":
        return _language_model_record(point, cache, prog, variables, x, y, rates, all_keys, t0)

    def chunk(start, count):
        ks = all_keys[start:start + count]
        if count < c.trials:           # the last chunk of a capped run: padded to the compiled shape
            ks = jnp.concatenate([ks, jnp.repeat(ks[-1:], c.trials - count)])
        metrics, st = jax.device_get(prog.run(variables, x, y, rates, engine.shard_keys(ks[None], cache.mesh)))
        acc = np.asarray(metrics["top1"], np.float64)[0, :count]
        realised = (np.asarray(st["realised_ber"], np.float64)[0, :count] if "realised_ber" in st
                    else np.zeros_like(acc))     # fault models without a realised BER (activation sites)
        return {"accuracy": acc, "fault_rate": realised}

    values, run = stats.run_until_width(chunk, chunk=c.trials, ci_width=c.ci_width, max_trials=cap,
                                        target="accuracy", level=c.level)
    acc, realised = values["accuracy"], values["fault_rate"]
    s = engine.summarize(acc, "accuracy", level=c.level, horizon=run["horizon"])
    rec = {"point_id": point.point_id, "config": point.params, "seed": c.seed, "trials": run["trials"],
           "accuracy": acc.tolist(), "accuracy_mean": s["mean"], "accuracy_std": s["std"],
           "accuracy_min": s["min"], "accuracy_ci_lo": s["ci_lo"], "accuracy_ci_hi": s["ci_hi"],
           "accuracy_summary": s, "fault_rate": realised.tolist(),
           "fault_rate_mean": float(realised.mean()), "seconds": time.perf_counter() - t0,
           "devices": int(cache.mesh.devices.size)}
    if c.ci_width is not None:
        rec.update(stop=run["stop"], ci_width=c.ci_width, max_trials=cap)
    rec.update(methods.row_fields(point.params, run["trials"], "top1", s))
    return rec


def _language_model_record(point: GridPoint, cache: ProgramCache, prog, variables, x, y, rates, keys, t0) -> dict:
    """A language-model point: its fixed trials' perplexities, summarised by the median with its
    order-statistic interval (a trial whose logits overflow has perplexity inf), the fraction of
    trials that diverged, and next-token top-1."""
    c = cache.campaign
    metrics, st = jax.device_get(prog.run(variables, x, y, rates, engine.shard_keys(keys[None], cache.mesh)))
    ppl = np.asarray(metrics["perplexity"], np.float64)[0]
    top1 = np.asarray(metrics["top1"], np.float64)[0]
    diverged = np.asarray(metrics["diverged"], np.float64)[0] > 0
    realised = (np.asarray(st["realised_ber"], np.float64)[0] if "realised_ber" in st else np.zeros_like(ppl))
    s = stats.summarize(ppl, bounds=None, level=c.level)
    lo, hi = stats.proportion_ci(int(diverged.sum()), int(ppl.size), c.level)
    return {**methods.row_fields(point.params, int(ppl.size), "perplexity", s),
            "point_id": point.point_id, "config": point.params, "seed": c.seed, "trials": int(ppl.size),
            "metric": "perplexity", "perplexity": ppl.tolist(), "perplexity_median": s["median"],
            "perplexity_median_lo": s["median_lo"], "perplexity_median_hi": s["median_hi"],
            "perplexity_summary": s, "top1": top1.tolist(), "top1_mean": float(top1.mean()),
            "diverged_fraction": float(diverged.mean()), "diverged_lo": float(lo), "diverged_hi": float(hi),
            "fault_rate": realised.tolist(), "fault_rate_mean": float(realised.mean()),
            "seconds": time.perf_counter() - t0, "devices": int(cache.mesh.devices.size)}


def run_campaign(campaign: Campaign, data: EvalData, *, done: dict | None = None,
                 record: Callable[[dict], None] = lambda r: None, mesh: Mesh | None = None,
                 on_point: Callable[[dict, int, int], None] | None = None) -> tuple[list[dict], int]:
    """Run every point not in `done` (id -> record), calling record(rec) as each finishes.

    Returns (all records in grid order, number of programs compiled).
    """
    mesh = mesh or trial_mesh()
    done = dict(done or {})
    cache = ProgramCache(data, campaign, mesh)
    todo = [p for p in campaign.points if p.point_id not in done]
    for i, point in enumerate(todo):
        rec = run_point(point, cache)
        record(rec)
        done[point.point_id] = rec
        if on_point is not None:
            on_point(rec, i + 1, len(todo))
    return [done[p.point_id] for p in campaign.points], cache.compiled
