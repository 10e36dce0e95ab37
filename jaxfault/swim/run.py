"""The SWIM experiment: accuracy under device variation with no weight, every weight and a
selected fraction of the weights write-verified (the library behind ``python -m eval.swim``).

``run(SwimConfig(...)) -> report`` loads the classifier and data, measures the clean accuracy,
runs the Monte Carlo over noise instances for "none" and "all" verified and for every
(method, mask_p), and returns a JSON-ready report; ``format_table`` and ``plot_sweep`` render it.
Every configuration uses the same noise keys (common random numbers), so differences between
methods are not draw-to-draw luck. Summary std over instances uses ddof = 0.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core import keys as jkeys
from jaxfault.core.batching import resolve_strategy
from jaxfault.core.config import setting
from jaxfault.core.precision import PRECISIONS, check_precision
from jaxfault.core.progress import RunClock
from jaxfault.core.errors import JaxfaultError, check_probability
from jaxfault.core.pytree import count_kernel_weights
from jaxfault.swim.selection import (CURVATURES, METHODS, NEEDS_CURVATURE, THRESHOLDS, canonical_method, full_mask,
                                     protection_mask, selection_buffer)
from jaxfault.core.rows import ROW_SCHEMA, fault_config, make_row
from jaxfault.swim.variation import WRITE_VERIFY, CiMVariation, check_bits_per_device, check_variances

STD_DDOF = 0


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise JaxfaultError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SwimConfig:
    """Everything one SWIM run needs, validated at construction.

    checkpoint None: the cached default LeNet on Fashion-MNIST. curvature_examples: the first N
    training images of the selection pass (None: the whole training set, as the SWIM code does);
    selection_batch: the batches of its gradient term. threshold: "count" (exactly
    round(mask_p * n) weights) or "quantile" (the code's rule).
    """

    checkpoint: str | None = setting(None, "classifier checkpoint (default: cached LeNet on Fashion-MNIST)")
    data_dir: str | None = setting(None, "dataset folder (default: TFDS / the local IDX files)")
    methods: tuple = ("SM",)
    mask_ps: tuple = (0.05,)
    alpha: float | None = setting(None, "SM: 1e6 by default; saliency: 2 by default", kind="positive_float")
    dev_var: float = setting(0.1, "device variation sigma (not verified)", kind="nonneg_float")
    write_var: float = setting(0.03, "variation sigma after write-verify", kind="nonneg_float")
    n_bits: int = setting(8, "bits per weight N", kind="positive_int")
    m_bits: int = setting(1, "bits per device m (N must be a multiple)", kind="positive_int")
    noise_instances: int = setting(100, "Monte Carlo noise draws", kind="positive_int")
    curvature: str = setting("becker-lecun", f"d2L/dw2 estimator: {', '.join(CURVATURES)}")
    curvature_examples: int | None = None
    selection_batch: int = setting(128, "batch size of the gradient term", kind="positive_int")
    gradient_term: bool = True
    threshold: str = setting("count", f"mask threshold rule: {', '.join(THRESHOLDS)}")
    hutchinson_samples: int = setting(200, "probe vectors of the hutchinson curvature", kind="positive_int")
    strategy: str = setting("auto", "noise-instance batching: auto, map, map:B, vmap, loop", kind="strategy")
    precision: str = setting("highest", "float32 matmul/conv precision of the evaluation", choices=PRECISIONS)
    eval_batch: int = setting(1000, "test images per forward pass", kind="positive_int")
    test_examples: int | None = setting(None, "evaluate on the first N test images", kind="positive_int")
    seed: int = setting(0, "root seed of the noise keys", kind="nonneg_int")

    @classmethod
    def from_command(cls, *, method: str = "SM", methods: str | None = None, mask_p: float = 0.05,
                     sweep_mask_p: str | None = None, curvature_examples: str = "all", gradient_term: bool = True,
                     **settings) -> "SwimConfig":
        """The config of one ``eval.swim`` command.

        Args:
          method: the selection method of a one-mask_p run.
          methods: comma-separated methods instead (default: `method`; every method for a sweep).
          mask_p: the fraction of kernel weights write-verified.
          sweep_mask_p: comma-separated mask_p values instead: every method compared at each.
          curvature_examples: 'all' training images of the selection pass, or the first N.
          gradient_term: score with the gradient term (else s^2 * curvature only).
          **settings: the other fields.
        Returns:
          The validated config (a one-line JaxfaultError naming the setting on bad input).
        """
        from jaxfault.core.config import parse_probability_list

        examples = None
        if curvature_examples != "all":
            try:
                examples = int(curvature_examples)
            except ValueError:
                raise JaxfaultError(f"`curvature_examples` must be a positive integer or 'all', "
                                    f"got {curvature_examples!r}") from None
        mask_ps = (mask_p,) if sweep_mask_p is None else tuple(parse_probability_list(sweep_mask_p, "`sweep_mask_p`"))
        if methods is not None:
            chosen = tuple(m.strip() for m in methods.split(","))
            if not (all(chosen) and len(set(chosen)) == len(chosen)):
                raise JaxfaultError(f"`methods` needs distinct comma-separated method names, got {methods!r}")
        else:
            chosen = METHODS if sweep_mask_p is not None else (method,)
        return cls(methods=chosen, mask_ps=mask_ps, curvature_examples=examples, gradient_term=gradient_term,
                   **settings)

    def __post_init__(self):
        methods = tuple(canonical_method(m) for m in self.methods)
        if not methods:
            raise JaxfaultError("methods: empty list")
        object.__setattr__(self, "methods", methods)
        mask_ps = tuple(check_probability("mask_p", p) for p in self.mask_ps)
        if not mask_ps:
            raise JaxfaultError("mask_ps: empty list")
        object.__setattr__(self, "mask_ps", mask_ps)
        check_variances(self.dev_var, self.write_var)
        object.__setattr__(self, "dev_var", float(self.dev_var))
        object.__setattr__(self, "write_var", float(self.write_var))
        check_bits_per_device(self.n_bits, self.m_bits)
        if self.curvature not in CURVATURES:
            raise JaxfaultError(f"unknown curvature {self.curvature!r}; choose one of {', '.join(CURVATURES)}")
        if self.threshold not in THRESHOLDS:
            raise JaxfaultError(f"unknown threshold rule {self.threshold!r}; choose one of {', '.join(THRESHOLDS)}")
        for name in ("noise_instances", "selection_batch", "hutchinson_samples", "eval_batch"):
            _positive_int(name.replace("_", "-"), getattr(self, name))
        for name in ("curvature_examples", "test_examples"):
            _positive_int(name.replace("_", "-"), getattr(self, name), allow_none=True)
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise JaxfaultError(f"alpha must be finite, got {self.alpha!r}")
        jkeys.check_seed(self.seed)
        resolve_strategy(self.strategy)
        check_precision(self.precision)


def load_model(checkpoint: str | None = None, data_dir: str | None = None):
    """(model, variables, checkpoint config, path) in the form faults see them
    (jaxfault.engine.evaluation_form: a QAT model's kernels fake-quantized once, quantization
    off), so the variation perturbs the stored weights."""
    from jaxfault.training.checkpoints import load_checkpoint
    from jaxfault.engine import evaluation_form

    if checkpoint is None:
        from jaxfault.training.zoo import default_classifier

        path = default_classifier(data_dir=data_dir)
    else:
        path = checkpoint
    ckpt = load_checkpoint(path)
    model, variables = evaluation_form(ckpt.model, dict(ckpt.variables))
    return model, variables, ckpt.config, str(path)


def make_monte_carlo(model, variables, images, labels, noise_keys, *, dev_var: float, write_var: float = 0.03,
                     n_bits: int = 8, m_bits: int = 1, strategy: str = "auto", precision: str = "highest",
                     eval_batch: int = 1000) -> Callable[[Any], np.ndarray]:
    """fn(mask) -> per-instance top-1 accuracies (float64 numpy): the engine's evaluation of the
    CiM variation fault model at dev_var, one compiled program for every mask (the mask travels
    as data in the variables' "write_verify" collection)."""
    from jaxfault import engine
    from jaxfault.core import tasks

    fm = CiMVariation(write_var=write_var, n_bits=n_bits, m_bits=m_bits)
    check_variances(dev_var, write_var)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    metric = tasks.make_metric_fn(model, batch_size=min(eval_batch, len(images)))
    program = engine.make_trial_program(metric, fm, strategy=strategy, precision=precision)
    rates = jnp.asarray([dev_var], jnp.float32)
    keys = jnp.asarray(noise_keys)[None]

    def evaluate_mask(mask):
        metrics, _ = program.run({**variables, WRITE_VERIFY: mask}, x, y, rates, keys)
        return np.asarray(metrics["top1"][0], np.float64)

    return evaluate_mask


def summary(accs: np.ndarray) -> dict:
    """mean, std (ddof 0), min and max of per-instance accuracies."""
    accs = np.asarray(accs, np.float64)
    return {"mean": float(accs.mean()), "std": float(accs.std(ddof=STD_DDOF)), "min": float(accs.min()),
            "max": float(accs.max())}


def run(config: SwimConfig, *, log: Callable[[str], None] = print) -> dict:
    """Run one SWIM experiment and return its report (nothing is written)."""
    from jaxfault.data import load_dataset
    from jaxfault.training import evaluate

    if not isinstance(config, SwimConfig):
        raise JaxfaultError(f"run needs a SwimConfig, got {type(config).__name__}")
    c = config
    model, variables, ck_config, ckpt_path = load_model(c.checkpoint, c.data_dir)
    data = load_dataset(ck_config["dataset"], data_dir=c.data_dir,
                        value_range=ck_config.get("value_range", "symmetric"))
    test_x, test_y = data.test_images, data.test_labels
    if c.test_examples is not None:
        test_x, test_y = test_x[:c.test_examples], test_y[:c.test_examples]
    params = variables["params"]
    n_weights = count_kernel_weights(params)
    root = jkeys.root_key(c.seed)
    noise_keys = jkeys.trial_keys(jkeys.stream(root, "trials"), c.noise_instances)
    selection_key = jkeys.stream(root, "selection")

    clean = float(evaluate(model, variables, test_x, test_y, batch_size=min(c.eval_batch, len(test_x)))["top1"])
    log(f"clean accuracy {100 * clean:.2f} %  ({ckpt_path})")
    mc = make_monte_carlo(model, variables, test_x, test_y, noise_keys, dev_var=c.dev_var, write_var=c.write_var,
                          n_bits=c.n_bits, m_bits=c.m_bits, strategy=c.strategy, precision=c.precision,
                          eval_batch=c.eval_batch)
    timings = {}
    n_configs = 2 + len(c.methods) * len(c.mask_ps)
    clock = RunClock(n_configs, "Monte Carlo configurations")
    t0 = time.perf_counter()
    none = mc(full_mask(params, False))
    timings["mc_seconds_per_config"] = time.perf_counter() - t0
    log(f"no write-verify: {100 * none.mean():.2f} +- {100 * none.std(ddof=STD_DDOF):.2f} %  "
        f"({timings['mc_seconds_per_config']:.1f} s for {c.noise_instances} instances)" + clock.done())
    allv = mc(full_mask(params, True))
    log(f"all write-verified: {100 * allv.mean():.2f} +- {100 * allv.std(ddof=STD_DDOF):.2f} %" + clock.done())

    buffer = None
    n_sel = len(data.train_images) if c.curvature_examples is None else min(c.curvature_examples,
                                                                             len(data.train_images))
    if any(m in NEEDS_CURVATURE for m in c.methods):
        log(f"selection pass over {n_sel} training images: one compiled pass, no lines until it ends; "
            f"after it, {n_configs - 2} configuration(s) of about {clock.left() / max(1, n_configs - 2):.0f} s each")
        t0 = time.perf_counter()
        buffer = selection_buffer(model, variables, data.train_images[:n_sel], data.train_labels[:n_sel],
                                  batch_size=c.selection_batch, curvature=c.curvature,
                                  gradient_term=c.gradient_term, key=jkeys.stream(selection_key, "curvature"),
                                  hutchinson_samples=c.hutchinson_samples)
        buffer = jax.block_until_ready(buffer)
        timings["selection_pass_seconds"] = time.perf_counter() - t0
        clock.exclude(timings["selection_pass_seconds"])
        log(f"selection pass ({c.curvature}{' + gradient term' if c.gradient_term else ''}, {n_sel} training "
            f"images): {timings['selection_pass_seconds']:.1f} s")

    selected = []
    for method in c.methods:
        for p in c.mask_ps:
            mask, frac = protection_mask(params, method, p, buffer, alpha=c.alpha,
                                         key=jkeys.stream(selection_key, "random"), threshold=c.threshold)
            accs = mc(mask)
            r = {"method": method, "mask_p": p, "fraction_protected": frac,
                 "weights_verified": int(round(frac * n_weights)),
                 "write_verify_saved_fraction": 1.0 - frac, **summary(accs), "accuracies": accs.tolist()}
            selected.append(r)
            log(f"{method:>10} mask_p {p:.3f}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} %" + clock.done())

    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
    return {"checkpoint": ckpt_path, "model": ck_config.get("model"), "dataset": data.name,
            "test_examples": int(len(test_x)), "n_kernel_weights": n_weights,
            "selection_examples": n_sel if buffer is not None else 0,
            "config": fields | {"resolved_strategy": resolve_strategy(c.strategy), "backend": jax.default_backend(),
                                "std_ddof": STD_DDOF},
            "clean_accuracy": clean,
            "none": {**summary(none), "accuracies": none.tolist()},
            "all": {**summary(allv), "accuracies": allv.tolist()},
            "selected": selected, "timings": timings,
            "schema": ROW_SCHEMA, "rows": result_rows(c, none, allv, selected)}


def result_rows(c: SwimConfig, none, allv, selected: list[dict]) -> list[dict]:
    """The run's operating points in the row schema (jaxfault.core.rows): none and all verified
    (selection 'none' / 'all', fractions 0 and 1) and every (selection, mask_p); each the CiM fault
    model at the run's dev_var, scored by the mean top-1 over the noise instances with its interval."""
    from jaxfault.engine import summarize

    fault = fault_config(CiMVariation(write_var=c.write_var, n_bits=c.n_bits, m_bits=c.m_bits))
    points = [("none", 0.0, none), ("all", 1.0, allv)] + [(r["method"], r["mask_p"], r["accuracies"]) for r in selected]
    return [make_row(fault_model="cim", method="swim", fault=fault, rate_name="dev_var", rate=c.dev_var,
                     trials=len(accs), metric="top1", summary=summarize(np.asarray(accs), "accuracy"),
                     selection=sel, mask_p=float(p)) for sel, p, accs in points]



def write_report(report: dict, out, *, sweep: bool) -> list[Path]:
    """Write a run's report atomically in folder `out`: swim.json, swim.txt (the table) and, for a
    sweep of mask_p, the plot swim_sweep.png. Returns the paths written."""
    from jaxfault.core.io import atomic_write_json, atomic_write_text

    out = Path(out)
    atomic_write_json(out / "swim.json", report)
    atomic_write_text(out / "swim.txt", format_table(report))
    return [out / "swim.json", out / "swim.txt"] + ([plot_sweep(report, out / "swim_sweep.png")] if sweep else [])

def format_table(report: dict) -> str:
    """The report as a fixed-width text table."""
    n = report["n_kernel_weights"]
    c = report["config"]
    lines = [f"SWIM on {report['model']} / {report['dataset']} ({report['test_examples']} test images, "
             f"{c['noise_instances']} noise instances, dev_var {c['dev_var']}, write_var {c['write_var']}, "
             f"N={c['n_bits']} m={c['m_bits']}, curvature {c['curvature']}"
             f"{' + gradient term' if c.get('gradient_term', True) else ''}, "
             f"{report.get('selection_examples', '?')} selection images)",
             f"clean accuracy {100 * report['clean_accuracy']:.2f} %", "",
             f"{'verify':<24}{'mask_p':>8}{'protected':>11}{'verified':>10}{'writes saved':>14}"
             f"{'acc mean %':>12}{'std':>7}"]
    rows = [("none", 0.0, report["none"]), ("all", 1.0, report["all"])]
    rows += [(r["method"], r["mask_p"], r) for r in report["selected"]]
    for name, p, r in rows:
        frac = r.get("fraction_protected", p)
        lines.append(f"{name:<24}{p:>8.3f}{frac:>11.4f}{int(round(frac * n)):>10d}{1 - frac:>13.1%} "
                     f"{100 * r['mean']:>11.2f}{100 * r['std']:>7.2f}")
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict, path) -> Path:
    """Accuracy against the fraction verified, one line per method (error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list] = {}
    for r in report["selected"]:
        by_method.setdefault(r["method"], []).append(r)
    for m, rs in by_method.items():
        rs = sorted(rs, key=lambda r: r["fraction_protected"])
        ax.errorbar([100 * r["fraction_protected"] for r in rs], [100 * r["mean"] for r in rs],
                    yerr=[100 * r["std"] for r in rs], marker="o", capsize=3, label=m)
    ax.axhline(100 * report["clean_accuracy"], color="k", ls=":", label="clean")
    ax.axhline(100 * report["all"]["mean"], color="g", ls="--", label="all verified")
    ax.axhline(100 * report["none"]["mean"], color="r", ls="--", label="none verified")
    ax.set_xlabel("weights write-verified (%)")
    ax.set_ylabel("test accuracy under variation (%)")
    c = report["config"]
    ax.set_title(f"SWIM {report['model']}/{report['dataset']}: dev_var {c['dev_var']}, "
                 f"{c['noise_instances']} instances", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return out
