"""Error-injected inference under ECC schemes: the library behind `python -m eval.sparrow`.

For each scheme, one engine evaluation over all BERs (one compiled program): the selected
leaves are truncated to bf16, encoded, hit by stuck-at (or flip) faults in their stored cells,
decoded and evaluated in bf16. Reported per (scheme, BER): top-1 (and top-5 with more than 5
classes) over the trials, the realised BER, the fraction of weights whose decoded value changed,
and the accuracy of the scheme's fault-free decoded weights (what encoding alone costs).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from jaxfault import engine
from jaxfault.ecc import SCHEMES, check_scheme_block_size
from jaxfault.ecc.hbm import LEAF_SELECTORS, MODES, HBMFaults
from jaxfault.errors import JaxfaultError, check, check_probability
from jaxfault.keys import root_key, trial_keys
from jaxfault.precision import check_precision, precision_scope
from jaxfault.stats import check_sequential, run_until_width


@dataclasses.dataclass(frozen=True)
class SparrowEvalConfig:
    """Settings of an ECC evaluation (validated on construction)."""

    bers: tuple
    schemes: tuple = ("sparrow",)
    zero_to_one: float = 0.01
    block_size: int = 64
    trials: int = 20
    seed: int = 0
    mode: str = "stuck-at"
    leaves: str = "kernels"
    compat: bool = False
    strategy: str = "auto"
    precision: str = "highest"
    batch_size: int = 1000
    limit: Optional[int] = None
    checkpoint: Optional[str] = None
    ci_width: Optional[float] = None        # trials in chunks of `trials` until top-1's half-width <= this
    max_trials: Optional[int] = None        # the cap of such a run (default 10 x trials)

    def __post_init__(self):
        bers = tuple(float(check_probability("ber", b)) for b in self.bers)
        check(len(bers) >= 1, "give at least one BER")
        check(len(set(bers)) == len(bers), f"BERs repeat: {', '.join(f'{b:g}' for b in bers)}")
        object.__setattr__(self, "bers", bers)
        for s in self.schemes:
            SCHEMES.get(s)
        if "sparrow" in self.schemes:
            check_scheme_block_size("sparrow", self.block_size)
        check_probability("zero_to_one", self.zero_to_one)
        check(self.mode in MODES, f"unknown fault mode {self.mode!r}; choose one of {', '.join(MODES)}")
        check(self.leaves in LEAF_SELECTORS, f"leaves must be one of {', '.join(LEAF_SELECTORS)}, got {self.leaves!r}")
        for name in ("trials", "batch_size"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        check(self.limit is None or (isinstance(self.limit, int) and self.limit >= 1), f"limit must be >= 1, got {self.limit!r}")
        check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        engine.resolve_strategy(self.strategy)
        check_precision(self.precision)
        object.__setattr__(self, "max_trials", check_sequential(self.trials, self.ci_width, self.max_trials))

    def fault_model(self, scheme: str) -> HBMFaults:
        block = self.block_size if SCHEMES.get(scheme).info["block_sizes"] else 64
        return HBMFaults(scheme=scheme, block_size=block, zero_to_one=self.zero_to_one, mode=self.mode,
                         leaves=self.leaves, compat=self.compat, rate_bound=max(self.bers))


def evaluate_schemes(config: SparrowEvalConfig, model, variables, images, labels, topk=(1,)) -> dict:
    """Report dict: header fields, 'clean_bf16', and 'rows' (one per scheme x BER)."""
    keys = trial_keys(root_key(config.seed), config.max_trials or config.trials)
    rows, clean = [], None
    for name in config.schemes:
        fm = config.fault_model(name)
        if config.ci_width is None:
            res = engine.evaluate(model, variables, images, labels, fm, config.bers, keys, strategy=config.strategy,
                                  precision=config.precision, batch_size=config.batch_size, topk=topk)
            clean, summaries = res.clean, [res.summary(i) for i in range(len(config.bers))]
            seconds = [res.seconds / len(config.bers)] * len(config.bers)
        else:
            clean, summaries, seconds = _until_width(config, fm, model, variables, images, labels, keys, topk)
        free = fault_free_accuracy(fm, model, variables, images, labels, config, topk)
        scheme = fm.get_scheme()
        prepared = engine.prepare(model, variables, images, fm)[1]
        words, layout = fm.encode(prepared["params"])
        for i, ber in enumerate(config.bers):
            r = {"scheme": name, "block_size": scheme.block_size, "stored_bits_per_weight": scheme.stored_bits,
                 "ber": ber, "zero_to_one": config.zero_to_one, "fault_model": config.mode, "trials": config.trials,
                 "protected_weights": layout.n_values, "stored_words": int(words.shape[0]),
                 "seconds": seconds[i], "fault_free": free, **summaries[i]}
            r["drop_vs_clean_points"] = 100 * (clean["top1"] - r["top1"]["mean"])
            rows.append(r)
    return {"test_examples": int(len(labels)), "strategy": engine.resolve_strategy(config.strategy),
            "precision": config.precision, "backend": jax.default_backend(), "seed": config.seed,
            "params": config.leaves, "compat": config.compat, "evaluation_dtype": "bfloat16",
            "clean_bf16": clean, "rows": rows}


def _until_width(config: SparrowEvalConfig, fm, model, variables, images, labels, keys, topk):
    """(clean, per-BER summaries, per-BER seconds) of a run until a target width: per BER, chunks of
    `trials` keys (trial i uses key i of the max_trials keys) through one compiled program until
    top-1's interval half-width <= ci_width or max_trials ran; each summary records its trials and
    why it stopped."""
    import time

    import numpy as np

    eval_model, prepared, x = engine.prepare(model, variables, images, fm)
    y = jnp.asarray(labels)
    metric = engine.make_metric_fn(eval_model, batch_size=min(config.batch_size, int(y.shape[0])), topk=topk)
    with precision_scope(config.precision):
        clean = {k: float(v) for k, v in jax.jit(metric)(prepared, x, y).items()}
    prog = engine.make_trial_program(metric, fm, strategy=config.strategy, precision=config.precision)
    summaries, seconds = [], []
    for ber in config.bers:
        t0 = time.perf_counter()
        rate = jnp.asarray([ber], jnp.float32)

        def chunk(start, count):
            ks = keys[start:start + count]
            if count < config.trials:      # the last chunk of a capped run: padded to the compiled shape
                ks = jnp.concatenate([ks, jnp.repeat(ks[-1:], config.trials - count)])
            metrics, stats = jax.device_get(prog.run(prepared, x, y, rate, ks[None]))
            return {k: np.asarray(v)[0, :count] for k, v in {**metrics, **stats}.items()}

        values, run = run_until_width(chunk, chunk=config.trials, ci_width=config.ci_width,
                                      max_trials=config.max_trials, target="top1")
        s = {k: {**engine.summarize(v, k, horizon=run["horizon"]), **({"values": v.tolist()} if k in metric_names(topk)
                                                                        else {})}
             for k, v in values.items()}
        summaries.append({**s, "trials": run["trials"], "stop": run["stop"], "ci_width": config.ci_width,
                          "max_trials": config.max_trials})
        seconds.append(time.perf_counter() - t0)
    return clean, summaries, seconds


def metric_names(topk) -> tuple:
    """Names of the metrics an evaluation with these top-k reports ('top1', 'top5', ...)."""
    return tuple(f"top{k}" for k in topk)


def fault_free_accuracy(fm: HBMFaults, model, variables, images, labels, config, topk) -> dict:
    """Accuracy of the scheme's decoded weights without faults (rate 0)."""
    eval_model, prepared, x = engine.prepare(model, variables, images, fm)
    y = jnp.asarray(labels)
    metric = engine.make_metric_fn(eval_model, batch_size=min(config.batch_size, int(y.shape[0])), topk=topk)
    with precision_scope(config.precision):
        out = jax.jit(lambda v: metric(fm.perturb(jax.random.key(0), v, 0.0)[0], x, y))(prepared)
    return {k: float(v) for k, v in out.items()}


def load_model_and_data(checkpoint: Optional[str], limit: Optional[int], log=print):
    """(checkpoint path, model, variables, test images, test labels, topk) of a classifier
    checkpoint (the cached default LeNet when None)."""
    from jaxfault.checkpoints import load_checkpoint
    from jaxfault.data import load_dataset

    if checkpoint is None:
        from jaxfault.zoo import default_classifier

        checkpoint = default_classifier(log=log)
    ck = load_checkpoint(checkpoint, kind="classifier")
    cfg = ck.config
    ds = load_dataset(cfg.get("dataset", "fashion_mnist"), value_range=cfg.get("value_range", "symmetric"))
    images, labels = ds.test_images, ds.test_labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    topk = (1, 5) if ds.num_classes > 5 else (1,)
    return str(checkpoint), ck.model, ck.variables, images, labels, topk


def run(config: SparrowEvalConfig, log=print) -> dict:
    """Load the checkpoint and data, evaluate every scheme at every BER; the report dict."""
    path, model, variables, images, labels, topk = load_model_and_data(config.checkpoint, config.limit, log)
    report = evaluate_schemes(config, model, variables, images, labels, topk)
    return {"checkpoint": path, **report}


def format_row(r: dict) -> str:
    """One line of a (scheme, BER) result."""
    t5 = f"  top5 {100 * r['top5']['mean']:6.2f}" if "top5" in r else ""
    t = r["top1"]
    stop = f" ({r['stop']})" if r.get("stop") else ""
    return (f"{r['scheme']:8s} ber {r['ber']:.1e}  top1 {100 * t['mean']:6.2f} [{100 * t['ci_lo']:.2f}, {100 * t['ci_hi']:.2f}] "
            f"over {t['n']} trials{stop} (std {100 * t['std']:5.2f}, min {100 * t['min']:6.2f}){t5}  realised ber {r['realised_ber']['mean']:.3e}  "
            f"changed {100 * r['changed_fraction']['mean']:.4f}%")


def sweep_table(report: dict) -> str:
    """Markdown table: one row per BER, one column per scheme (top-1 mean and its 95 % interval,
    %, over the trials given in the header or per cell)."""
    schemes = list(dict.fromkeys(r["scheme"] for r in report["rows"]))
    bers = list(dict.fromkeys(r["ber"] for r in report["rows"]))
    counts = sorted({r["top1"]["n"] for r in report["rows"]})
    per_cell = len(counts) > 1
    head = "top-1 %, mean [95 % interval] (trials)" if per_cell else f"top-1 %, mean [95 % interval], {counts[0]} trials"
    lines = [head + ":", "", "| BER | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for b in bers:
        cells = [next(f"{100 * r['top1']['mean']:.2f} [{100 * r['top1']['ci_lo']:.2f}, {100 * r['top1']['ci_hi']:.2f}]"
                      + (f" ({r['top1']['n']})" if per_cell else "") for r in report["rows"]
                      if r["ber"] == b and r["scheme"] == s) for s in schemes]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict, path) -> None:
    """Accuracy (mean with its 95 % interval) vs BER, one line per scheme, the clean bf16 accuracy
    dashed, the trials per point in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.io import atomic_savefig

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in dict.fromkeys(r["scheme"] for r in rows):
        rs = [r for r in rows if r["scheme"] == name]
        m = [100 * r["top1"]["mean"] for r in rs]
        yerr = [[mi - 100 * r["top1"]["ci_lo"] for mi, r in zip(m, rs)], [100 * r["top1"]["ci_hi"] - mi for mi, r in zip(m, rs)]]
        ax.errorbar([r["ber"] for r in rs], m, yerr=yerr, marker="o", capsize=3, label=name)
    ax.axhline(100 * report["clean_bf16"]["top1"], color="gray", ls="--", lw=1, label="clean bf16")
    if all(r["ber"] > 0 for r in rows):
        ax.set_xscale("log")
    ax.set_xlabel("bit error rate (stored cells)")
    counts = sorted({r["top1"]["n"] for r in rows})
    ax.set_ylabel("top-1 accuracy (%), mean and 95 % interval")
    ax.set_title(f"trials per point: {counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else ""), fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
