"""Error-injected inference under ECC schemes: the library behind `python -m eval.sparrow`.

For each scheme, one engine evaluation over all BERs (one compiled program): the selected
leaves are truncated to bf16, encoded, hit by stuck-at (or flip) faults in their stored cells,
decoded and evaluated in bf16. Reported per (scheme, BER): top-1 (and top-5 with more than 5
classes) over the trials, the realised BER, the fraction of weights whose decoded value changed,
and the accuracy of the scheme's fault-free decoded weights (what encoding alone costs).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault import engine
from jaxfault.core import batching, tasks
from jaxfault.engine.reuse import strategy_reuses
from jaxfault.ecc import SCHEMES, check_scheme_block_size
from jaxfault.ecc.hbm import LEAF_SELECTORS, MODES, HBMFaults
from jaxfault.core.config import parse_probability_list, setting
from jaxfault.core.errors import check, check_folder, check_probability
from jaxfault.core.keys import root_key, trial_keys
from jaxfault.core.precision import PRECISIONS, check_precision, precision_scope
from jaxfault.core.pytree import same_bits
from jaxfault.core.stats import check_sequential, run_until_width
from jaxfault.training.zoo import load_classifier_and_data


@dataclasses.dataclass(frozen=True)
class SparrowEvalConfig:
    """Settings of an ECC evaluation, validated on construction. The fields declared with
    ``setting`` are the command line's flags (jaxfault.cli.add_setting_flags)."""

    bers: tuple
    schemes: tuple = ("sparrow",)
    zero_to_one: float = setting(0.01, "share of faults stuck at 1", kind="probability")
    block_size: int = setting(64, "Sparrow block size: 16, 32 or 64", kind="positive_int")
    trials: int = setting(20, "fault draws per BER", kind="positive_int")
    seed: int = setting(0, "root seed of the trial keys", kind="seed")
    mode: str = setting("stuck-at", "stuck-at or XOR flips", choices=MODES)
    leaves: str = setting("kernels", "protected leaves: conv/dense kernels or all float parameters",
                          choices=tuple(LEAF_SELECTORS))
    compat: bool = setting(False, "bit-compatible zero-word quirk of the reference", kind="switch")
    strategy: str = setting("auto", "trial batching: auto, vmap, map, map:B or loop", kind="strategy")
    precision: str = setting("highest", "float32 matmul/conv precision", choices=PRECISIONS)
    batch_size: int = setting(1000, "evaluation batch size", kind="positive_int")
    limit: Optional[int] = setting(None, "evaluate only the first N test images, or N validation windows of a "
                                         "language model (default: all images; 32 windows)", kind="positive_int")
    checkpoint: Optional[str] = None        # None: the cached default model of the task
    ci_width: Optional[float] = setting(
        None, "run trials in chunks of `trials` until top-1's 95 % interval half-width is <= this, per BER "
              "(default: none, a fixed number of trials)", kind="positive_float")
    max_trials: Optional[int] = setting(None, "cap of a `ci_width` run (default: 10 x `trials`)", kind="positive_int")
    task: Optional[str] = None        # None: the checkpoint's ('classification' without one)
    tensors: Optional[str] = setting(
        None, "tensor groups hit: comma-separated embeddings, attention, mlp, norms, lm_head, other, or all "
              "(default: every protected leaf)")
    memory_budget: Optional[float] = None   # bytes for the trials held at once (None: jaxfault.engine.memory's default)
    estimator: str = setting(
        "plain", "plain Monte Carlo over `trials` fault draws (the default: the output the README shows); "
                 "stratified: the rare-fault estimator of docs/rare.md, strata by the number of bit-30 (bf16 "
                 "exponent MSB) stuck-at-1 faults, `trials` main-phase trials, reporting its mean, 95 % interval "
                 "and forward passes; auto: stratified where that class expects at most 2 faults per trial, plain "
                 "elsewhere. Not with `ci_width`, `tensors` or a language model", choices=("plain", "stratified", "auto"))
    compute_dtype: Optional[str] = setting(
        None, "arithmetic of the forward pass: the stored bf16 weights evaluated in bf16 (the Sparrow reference's, "
              "and the default) or in float32 (numbers differ slightly; speed and differences measured in "
              "bench/RESULTS.md)", choices=("bfloat16", "float32"))

    @classmethod
    def from_command(cls, *, ber: float | None = None, sweep: str | None = None, scheme: str = "sparrow",
                     compare: bool = True, **settings) -> "SparrowEvalConfig":
        """The config of one ``eval.sparrow`` command.

        Args:
          ber: one BER: `scheme` evaluated, with SEC-DED and no protection beside it when `compare`.
          sweep: instead, comma-separated BERs ('1e-5,1e-4'): every registered scheme at each.
          scheme: the scheme of a one-BER run.
          compare: evaluate the comparison schemes beside `scheme`.
          **settings: the other fields.
        Returns:
          The validated config (a one-line JaxfaultError naming the setting on bad input).
        """
        from jaxfault.ecc import scheme_names

        check((ber is None) != (sweep is None), "give exactly one of `ber` or `sweep`")
        if sweep is not None:
            bers = parse_probability_list(sweep, "`sweep`")
            schemes = scheme_names()
        else:
            bers, schemes = (ber,), with_comparison(scheme) if compare else (scheme,)
        return cls(bers=tuple(bers), schemes=tuple(schemes), **settings)

    def __post_init__(self):
        m, e = self.max_trials, self.estimator
        check(m is None or self.ci_width is not None, f"`max_trials` {m} needs `ci_width`")
        check(m is None or not isinstance(m, int) or m >= self.trials, f"`max_trials` {m} must be >= `trials` {self.trials}")
        if e != "plain":
            from jaxfault.training.lm import scores_language_model

            for given, what in ((self.ci_width is not None, "`ci_width`: it sizes its own trials"),
                                (self.tensors is not None, "`tensors`: it conditions HBM faults on every selected leaf"),
                                (scores_language_model(self.task, self.checkpoint),
                                 "a language model (`task` language_model): perplexity is not a bounded metric")):
                check(not given, f"`estimator` {e} cannot be combined with {what} (docs/rare.md)")
        check(self.compute_dtype is None or e == "plain",
              f"`compute_dtype` {self.compute_dtype} needs `estimator` plain: the stratified estimator evaluates in bf16")
        check_folder("checkpoint", self.checkpoint)
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
        batching.resolve_strategy(self.strategy)
        check_precision(self.precision)
        object.__setattr__(self, "max_trials", check_sequential(self.trials, self.ci_width, self.max_trials))
        check(self.memory_budget is None or (isinstance(self.memory_budget, (int, float)) and self.memory_budget > 0),
              f"memory budget must be a positive number of bytes, got {self.memory_budget!r}")
        check(self.task in (None, "classification", "language_model"),
              f"task must be classification or language_model, got {self.task!r}")
        if self.tensors is not None:
            from jaxfault.faults.select import parse_tensors

            parse_tensors(self.tensors)
        from jaxfault.experiment import rare

        check(self.estimator in rare.ESTIMATORS,
              f"unknown estimator {self.estimator!r}; choose one of {', '.join(rare.ESTIMATORS)}")
        check(self.compute_dtype in (None, "bfloat16", "float32"),
              f"compute dtype must be bfloat16 or float32, got {self.compute_dtype!r}")

    def evaluated(self, fm):
        """The fault model as the forward pass runs it: in ``compute_dtype`` when one is set."""
        from jaxfault.faults.fault_models import InDtype

        return fm if self.compute_dtype is None else InDtype(fm, self.compute_dtype)

    def fault_model(self, scheme: str) -> HBMFaults:
        block = self.block_size if SCHEMES.get(scheme).info["block_sizes"] else 64
        fm = HBMFaults(scheme=scheme, block_size=block, zero_to_one=self.zero_to_one, mode=self.mode,
                       leaves=self.leaves, compat=self.compat, rate_bound=max(self.bers))
        if self.tensors is None:
            return fm
        from jaxfault.faults.select import select_tensors

        return select_tensors(fm, self.tensors)


def evaluate_schemes(config: SparrowEvalConfig, model, variables, images, labels, topk=(1,), task=None,
                     log=None) -> dict:
    """Report dict: header fields, 'clean_bf16', and 'rows' (one per scheme x BER). With a
    language_model task (jaxfault.core.tasks) `images` are token ids and `labels` next tokens, and each
    row also carries the order-statistic summary of jaxfault.training.lm.summarize_trials. log, when given,
    gets one line per scheme evaluated, with the time left of the run."""
    from jaxfault.core.progress import RunClock

    if config.estimator != "plain":
        return _evaluate_rare(config, model, variables, images, labels, topk, log)
    keys = trial_keys(root_key(config.seed), config.max_trials or config.trials)
    rows, clean = [], None
    known = []       # (prepared variables, their clean metrics): the clean model is evaluated once
    lm = task is not None and task.name == "language_model"
    clock = RunClock(len(config.schemes), "schemes")
    for name in config.schemes:
        fm = config.fault_model(name)
        efm = config.evaluated(fm)
        triple = engine.prepare(model, variables, images, efm)
        prepared = triple[1]
        clean = next((m for v, m in known if same_bits(v, prepared)), None)
        if config.ci_width is None or (task is not None and task.name == "language_model"):
            strategy = trial_strategy(config, fm, model, variables, images, labels, task)
            # the reuse path starts trials from this call's own clean row; elsewhere it is run once
            res = engine.evaluate(model, variables, images, labels, fm, config.bers, keys[:config.trials],
                                  strategy=strategy, precision=config.precision, batch_size=config.batch_size,
                                  topk=topk, task=task, clean=clean is None or strategy_reuses(strategy),
                                  compute_dtype=config.compute_dtype, reuse=True)
            clean, summaries = clean or res.clean, [res.summary(i) for i in range(len(config.bers))]
            seconds = [res.seconds / len(config.bers)] * len(config.bers)
        else:
            clean, summaries, seconds = _until_width(config, efm, model, variables, images, labels, keys, topk)
        known.append((prepared, clean))
        free = fault_free_accuracy(efm, model, variables, images, labels, config, topk, task, known, triple)
        hbm = getattr(fm, "inner", fm)
        scheme = hbm.get_scheme()
        words, layout = stored_shape(hbm, fm.view(prepared)["params"] if hbm is not fm else prepared["params"])
        for i, ber in enumerate(config.bers):
            r = {"scheme": name, "block_size": scheme.block_size, "stored_bits_per_weight": scheme.stored_bits,
                 "ber": ber, "zero_to_one": config.zero_to_one, "mode": config.mode, "trials": config.trials,
                 "protected_weights": layout.n_values, "stored_words": int(words.shape[0]),
                 "seconds": seconds[i], "fault_free": free, **summaries[i]}
            r["drop_vs_clean_points"] = 100 * (clean["top1"] - r["top1"]["mean"])
            if lm:
                from jaxfault.training.lm import summarize_trials

                s = summarize_trials({k: v[i] for k, v in res.metrics.items()})
                r.update({"perplexity": {**s["perplexity"], "values": [float(v) for v in res.metrics["perplexity"][i]]},
                          "diverged": s["diverged"], "infinite_perplexity": s["infinite"],
                          "nonfinite_tokens": s["nonfinite_tokens"],
                          "perplexity_increase_pct": 100 * (s["perplexity"]["median"] / clean["perplexity"] - 1)})
                r.pop("nll", None)
            r.update(row_fields(hbm, r, lm))
            rows.append(r)
        if log is not None and len(config.schemes) > 1:
            log(f"evaluated {name} at {len(config.bers)} BER(s)" + clock.done())
    head = {"task": "language_model", "tokens": int(np.size(labels))} if lm else {}
    return {**head, "test_examples": int(len(labels)), "strategy": batching.resolve_strategy(config.strategy),
            "precision": config.precision, "backend": jax.default_backend(), "seed": config.seed,
            "params": config.leaves, "compat": config.compat, "evaluation_dtype": config.compute_dtype or "bfloat16",
            "estimator": "plain", "clean_bf16": clean, "rows": rows}


def row_fields(hbm: HBMFaults, r: dict, lm: bool) -> dict:
    """A result row's fields in the row schema (jaxfault.core.rows): the HBM fault model and its
    configuration, the BER, the trials behind the figure and the summary of its metric (top-1, or
    a language model's perplexity, with the order-statistic interval of its median)."""
    from jaxfault.core.rows import fault_config, make_row

    if lm:
        p = r["perplexity"]
        metric, summary = "perplexity", {"median": p["median"], "median_lo": p["median_ci95"][0],
                                         "median_hi": p["median_ci95"][1], "n": len(p["values"])}
    else:
        metric, summary = "top1", {k: v for k, v in r["top1"].items() if k != "values"}
    return make_row(fault_model="hbm", method="sparrow", fault=fault_config(hbm), rate_name="ber", rate=r["ber"],
                    trials=int(summary.get("n", r["trials"])), metric=metric, summary=summary)


STRATIFY_POSITIONS = (30,)      # the exponent MSB of a bf16 weight: its stuck-at-1 multiplies it by 2^128


def stratification_class(config: SparrowEvalConfig) -> tuple:
    """(positions, direction) of the class eval.sparrow stratifies by: bit 30 of the stored word
    (the bf16 exponent's most significant bit, a stored cell in every scheme) stuck at 1, or any
    flip of it in the flip model (docs/rare.md)."""
    return STRATIFY_POSITIONS, ("0->1" if config.mode == "stuck-at" else "any")


def _evaluate_rare(config: SparrowEvalConfig, model, variables, images, labels, topk, log=None) -> dict:
    """evaluate_schemes with config.estimator 'stratified' or 'auto': per (scheme, BER) the estimator
    rare.choose_estimator picks from the class's expected faults per trial; a stratified point
    runs jaxfault.experiment.rare.evaluate_stratified with config.trials main-phase trials, a plain one the
    engine over config.trials keys. Rows record the estimator, and a stratified row its estimate
    (mean and 95 % interval in 'top1'), strata and forward passes."""
    import time

    from jaxfault.experiment import rare
    from jaxfault.ecc import conditional as fc

    positions, direction = stratification_class(config)
    root = root_key(config.seed)
    keys = trial_keys(root, config.trials)
    rows, clean = [], None
    for si, name in enumerate(config.schemes):
        fm = config.fault_model(name)
        scheme = fm.get_scheme()
        prepared = engine.prepare(model, variables, images, fm)[1]
        words, layout = stored_shape(fm, prepared["params"])
        cells = int(words.shape[0]) * len(positions)
        q = 0.0 if config.mode == "flip" else fc.effective_zero_to_one(config.zero_to_one)
        free = fault_free_accuracy(fm, model, variables, images, labels, config, topk)
        for bi, ber in enumerate(config.bers):
            expected = cells * fc.class_probability(float(np.float32(ber)), q, direction)
            chosen = rare.choose_estimator(config.estimator, expected)
            t0 = time.perf_counter()
            head = {"scheme": name, "block_size": scheme.block_size, "stored_bits_per_weight": scheme.stored_bits,
                    "ber": ber, "zero_to_one": config.zero_to_one, "mode": config.mode,
                    "trials": config.trials, "protected_weights": layout.n_values,
                    "stored_words": int(words.shape[0]), "fault_free": free, "estimator": chosen,
                    "expected_class_faults": expected}
            if chosen == "stratified":
                rr = rare.evaluate_stratified(model, variables, images, labels, fm, ber,
                                              jax.random.fold_in(jax.random.fold_in(root, si), bi),
                                              trials=config.trials, positions=positions, direction=direction,
                                              strategy=config.strategy, precision=config.precision,
                                              batch_size=config.batch_size, topk=topk)
                e = rr.estimate
                clean = rr.clean
                r = {**head, "seconds": time.perf_counter() - t0, "forward_passes": rr.forward_passes,
                     "top1": {"mean": e.mean, "ci_lo": e.lo, "ci_hi": e.hi, "level": e.level, "method": "stratified",
                              "n": int(sum(e.trials)), "passes": e.passes},
                     "stratified": rr.as_dict()}
            else:
                res = engine.evaluate(model, variables, images, labels, fm, [ber], keys, strategy=config.strategy,
                                      precision=config.precision, batch_size=config.batch_size, topk=topk)
                clean = res.clean
                r = {**head, "seconds": time.perf_counter() - t0, "forward_passes": config.trials, **res.summary(0)}
            r["drop_vs_clean_points"] = 100 * (clean["top1"] - r["top1"]["mean"])
            r.update(row_fields(fm, r, False))
            rows.append(r)
            if log is not None:
                log(f"{name} at BER {ber:g}: {chosen} ({expected:.3g} class faults per trial)")
    return {"test_examples": int(len(labels)), "strategy": batching.resolve_strategy(config.strategy),
            "precision": config.precision, "backend": jax.default_backend(), "seed": config.seed,
            "params": config.leaves, "compat": config.compat, "evaluation_dtype": "bfloat16",
            "estimator": config.estimator, "clean_bf16": clean, "rows": rows}


def format_stratified_row(r: dict) -> str:
    """One line of a (scheme, BER) point estimated by the stratified estimator."""
    t = r["top1"]
    st = r["stratified"]["estimate"]
    return (f"{r['scheme']:8s} ber {r['ber']:.1e}  top1 {100 * t['mean']:6.2f} [{100 * t['ci_lo']:.2f}, "
            f"{100 * t['ci_hi']:.2f}] stratified by bit-30 faults ({r['expected_class_faults']:.3g} per trial, "
            f"{len(st['k'])} strata), {t['passes']} forward passes ({t['n']} averaged)")


def _until_width(config: SparrowEvalConfig, fm, model, variables, images, labels, keys, topk):
    """(clean, per-BER summaries, per-BER seconds) of a run until a target width: per BER, chunks of
    `trials` keys (trial i uses key i of the max_trials keys) through one compiled program until
    top-1's interval half-width <= ci_width or max_trials ran; each summary records its trials and
    why it stopped."""
    import time

    import numpy as np

    eval_model, prepared, x = engine.prepare(model, variables, images, fm)
    y = jnp.asarray(labels)
    metric = tasks.make_metric_fn(eval_model, batch_size=min(config.batch_size, int(y.shape[0])), topk=topk)
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


def trial_strategy(config: SparrowEvalConfig, fm, model, variables, images, labels, task=None) -> str:
    """The batching strategy with its chunk of trials bounded by the memory budget
    (jaxfault.engine.memory.bounded_strategy); strategies that hold one trial at a time ('map', 'loop')
    are kept without measuring."""
    from jaxfault.engine import memory

    kind, chunk = batching.parse_strategy(config.strategy)
    if kind != "vmap" and not chunk:
        return config.strategy
    per, shared = memory.evaluation_trial_memory(model, variables, images, labels, fm, max(config.bers), task=task,
                                                 batch_size=config.batch_size, precision=config.precision)
    budget = int(config.memory_budget) if config.memory_budget else memory.default_budget()
    return memory.bounded_strategy(config.strategy, per, shared, budget, config.trials)


def stored_shape(fm: HBMFaults, params):
    """(shape of the stored words, their layout) of ``fm.encode(params)``, traced, not computed."""
    box = {}

    def encode(p):
        words, box["layout"] = fm.encode(p)
        return words

    return jax.eval_shape(encode, params), box["layout"]


def fault_free_accuracy(fm: HBMFaults, model, variables, images, labels, config, topk, task=None,
                        known=(), prepared=None) -> dict:
    """Accuracy (or the task's metrics) of the scheme's decoded weights without faults (rate 0).

    ``known``: (variables, metrics) pairs already evaluated by the same task; when the decoded
    weights equal one of them bit for bit, its metrics are the answer and no forward pass runs.
    ``prepared``: ``engine.prepare(model, variables, images, fm)`` when the caller has it."""
    eval_model, prepared, x = prepared or engine.prepare(model, variables, images, fm)
    if known:
        decoded = jax.jit(lambda v: fm.perturb(jax.random.key(0), v, 0.0)[0])(prepared)
        hit = next((m for v, m in known if same_bits(v, decoded)), None)
        if hit is not None:
            return dict(hit)
    y = jnp.asarray(labels)
    metric = tasks.make_metric_fn(eval_model, batch_size=min(config.batch_size, int(y.shape[0])), topk=topk,
                                  task=task)
    with precision_scope(config.precision):
        out = jax.jit(lambda v: metric(fm.perturb(jax.random.key(0), v, 0.0)[0], x, y))(prepared)
    return {k: float(v) for k, v in out.items()}


def run(config: SparrowEvalConfig, log=print) -> dict:
    """Load the checkpoint and data, evaluate every scheme at every BER; the report dict."""
    from jaxfault.training.lm import scores_language_model
    from jaxfault.training.zoo import load_lm_and_data

    if scores_language_model(config.task, config.checkpoint):
        path, model, variables, inputs, targets, task = load_lm_and_data(config.checkpoint, config.limit, log)
        report = evaluate_schemes(config, model, variables, inputs, targets, (1,), task, log=log)
        return {"checkpoint": path, **report}
    path, model, variables, images, labels, topk = load_classifier_and_data(config.checkpoint, config.limit, log)
    report = evaluate_schemes(config, model, variables, images, labels, topk, log=log)
    return {"checkpoint": path, **report}


def model_source(config: SparrowEvalConfig) -> Optional[Path]:
    """The folder the run will take its model from, known before any work: --checkpoint, else the
    cache entry of the default model of the task (which may not be trained yet)."""
    from jaxfault.training import zoo

    if config.checkpoint is not None:
        return Path(config.checkpoint)
    if config.task == "language_model":
        return zoo.cache_dir() / zoo.lm_cache_entry_name()
    return zoo.cache_dir() / zoo.cache_entry_name("lenet")


def result_config(config: SparrowEvalConfig) -> dict:
    """The configuration a result file records (jaxfault.core.rerun): the command and its settings."""
    fields = dataclasses.asdict(config)
    if fields["estimator"] == "plain":          # results written before the estimator existed stay comparable
        fields.pop("estimator")
    if fields["compute_dtype"] is None:         # and before the compute dtype existed
        fields.pop("compute_dtype")
    return {"command": "eval.sparrow", **fields}



def result_path(out: Path, config: SparrowEvalConfig, sweep: bool) -> Path:
    """The result file of a run in folder `out`: distinct per scheme, rates, trials, seed, image
    limit and every setting that changes the numbers, so that runs do not overwrite each other."""
    tail = f"_T{config.trials}_s{config.seed}" + (f"_n{config.limit}" if config.limit else "")
    if config.ci_width is not None:
        tail += f"_w{config.ci_width:g}_max{config.max_trials}"
    if config.estimator != "plain":
        tail += f"_{config.estimator}"
    if config.compute_dtype is not None:
        tail += f"_{config.compute_dtype}"
    if config.tensors:
        tail += "_" + "+".join(t.strip() for t in config.tensors.split(","))
    if sweep:
        return out / f"sweep{tail}.json"
    if len(config.schemes) == 1:
        tail += "_only"
    return out / f"{config.schemes[0]}_ber{config.bers[0]:g}_q{config.zero_to_one:g}_B{config.block_size}{tail}.json"


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a run's results go, checked before the run (prepare_output)."""

    path: Path
    sweep: bool
    replacing: bool          # an earlier result of the same configuration and model is replaced


def prepare_output(config: SparrowEvalConfig, out, *, sweep: bool, overwrite: bool = False) -> Output:
    """Check, before any work, that the result files of `config` can be written in folder `out`.

    Args:
      config: the run's config.
      out: the output folder.
      sweep: a sweep (JSON, Markdown table and plot) rather than one BER (JSON).
      overwrite: replace existing files whatever they hold.
    Returns:
      The Output to pass to write_report. An existing result of the same configuration and model
      is replaced; any other existing file is a one-line JaxfaultError unless `overwrite`.
    """
    from jaxfault.core.io import check_output_path
    from jaxfault.core.rerun import check_result_path, checkpoint_digest

    path = result_path(Path(out), config, sweep)
    replacing = check_result_path(path, result_config(config), checkpoint_digest(model_source(config)),
                                  overwrite=overwrite, flag="`out`")
    if sweep:
        for extra in (".md", ".png"):
            check_output_path(path.with_suffix(extra), overwrite=overwrite or replacing, flag="`out`")
    return Output(path, sweep, replacing)


def report_text(report: dict, config: SparrowEvalConfig, sweep: bool) -> str:
    """What a run prints: the clean model's line, then the comparison table (one BER of a
    classifier) or one line per row, and a sweep's table."""
    clean = report["clean_bf16"]
    label = "clean bf16" + (f" ({config.compute_dtype} arithmetic)" if config.compute_dtype else "")
    if report.get("task") == "language_model":
        lines = [f"{label}: perplexity {clean['perplexity']:.4f}  next-token top1 {100 * clean['top1']:.2f}%  "
                 f"({report['tokens']} tokens)\n"]
    else:
        lines = [f"{label}: top1 {100 * clean['top1']:.2f}%"
                 + (f"  top5 {100 * clean['top5']:.2f}%" if "top5" in clean else "") + "\n"]
    if not sweep and report.get("task") != "language_model":
        lines.append(format_comparison(report))
    else:
        lines += [format_row(r) + "\n" for r in report["rows"]]
    if sweep:
        lines.append(sweep_table(report))
    return "".join(lines)


def write_report(report: dict, config: SparrowEvalConfig, output: Output) -> list[Path]:
    """Write a run's report atomically where prepare_output said: a sweep as JSON, a Markdown
    table and a plot; one BER as one JSON object (the comparison schemes under "comparison"),
    each recording its configuration and the checkpoint's digest. Returns the paths written."""
    from jaxfault.core.io import atomic_write_json, atomic_write_text
    from jaxfault.core.rerun import checkpoint_digest
    from jaxfault.core.rows import ROW_SCHEMA

    path = output.path
    report = {**report, "config": result_config(config), "checkpoint_digest": checkpoint_digest(report["checkpoint"])}
    if output.sweep:
        atomic_write_json(path, {"schema": ROW_SCHEMA, **report})
        atomic_write_text(path.with_suffix(".md"), sweep_table(report))
        plot_sweep(report, path.with_suffix(".png"))
        return [path, path.with_suffix(".md"), path.with_suffix(".png")]
    first, *others = report["rows"]
    atomic_write_json(path, {**{k: v for k, v in report.items() if k != "rows"}, **first,
                             **({"comparison": others} if others else {}), "schema": ROW_SCHEMA,
                             "rows": report["rows"]})
    return [path]

COMPARE_WITH = ("secded", "none")


def with_comparison(scheme: str) -> tuple:
    """The schemes of a single-BER run: the one asked for, then SEC-DED and no protection (the
    baselines the method is measured against), each once."""
    return tuple(dict.fromkeys((scheme,) + COMPARE_WITH))


def format_comparison(report: dict) -> str:
    """The rows of a classification run at one BER as a labelled table, the scheme asked for
    first, with a legend: what a newcomer needs to read off what the protection buys."""
    rows = report["rows"]
    r0, clean = rows[0], report["clean_bf16"]
    n = r0["top1"]["n"]
    q = r0["zero_to_one"]
    fault = (f"stuck-at faults, {100 * q:g} % of them stuck at 1" if r0["mode"] == "stuck-at"
             else "bit flips")
    stop = {"width": f"the interval's half-width reached {r0.get('ci_width', 0):g}",
            "max_trials": f"the cap of {r0.get('max_trials')} trials ran before the half-width reached "
                          f"{r0.get('ci_width', 0):g}"}.get(r0.get("stop"))
    ran = f"{n} trials per scheme" + (f" (stopped: {r0['stop']}, {stop})" if stop else "")
    head = [f"BER {r0['ber']:g} in the stored bit cells ({fault}); {ran}, "
            f"{report['test_examples']} test images",
            f"{'scheme':<9}{'bits/weight':>12}  {'top-1 % mean [95 % interval]':<30}{'worst trial %':>14}"
            f"{'drop (points)':>15}{'weights changed %':>19}"]
    if any(r.get("estimator", "plain") != "plain" for r in rows):
        return "\n".join([f"BER {r0['ber']:g} in the stored bit cells ({fault}); {report['test_examples']} test "
                           f"images; estimator {report.get('estimator')} (docs/rare.md)"]
                          + [format_row(r) for r in rows]
                          + ["interval: 95 % for the mean; stratified: Student-t over the strata's main-phase "
                             "trials, widened by the unsampled tail (docs/rare.md)"
                             + next((f"; plain: {r['top1'].get('method', 'betting')} (docs/statistics.md)"
                                     for r in rows if r.get("estimator") == "plain"), "")]) + "\n"
    for r in rows:
        t = r["top1"]
        cell = f"{100 * t['mean']:.2f} [{100 * t['ci_lo']:.2f}, {100 * t['ci_hi']:.2f}]"
        head.append(f"{r['scheme']:<9}{r['stored_bits_per_weight']:>12}  {cell:<30}{100 * t['min']:>14.2f}"
                    f"{r['drop_vs_clean_points']:>15.2f}{100 * r['changed_fraction']['mean']:>19.4f}")
    head += [f"drop: points of top-1 lost against the fault-free bf16 model ({100 * clean['top1']:.2f} %); "
             f"worst trial: the lowest top-1 of the {n} trials;",
             "weights changed: share of the protected weights whose decoded value differs from its "
             "fault-free value (faults the code did not correct);",
             f"interval: {100 * r0['top1'].get('level', 0.95):g} % for the mean, valid whatever the trials' "
             f"distribution ({r0['top1'].get('method', 'betting')}, docs/statistics.md): {n} trials cannot rule out "
             f"rare collapses, so it is wide; a target half-width `ci_width` adds trials until it is narrower"]
    return "\n".join(head) + "\n"


def format_row(r: dict) -> str:
    """One line of a (scheme, BER) result."""
    if r.get("estimator") == "stratified":
        return format_stratified_row(r)
    if "perplexity_increase_pct" in r:
        p, d = r["perplexity"], r["diverged"]
        return (f"{r['scheme']:8s} ber {r['ber']:.1e}  perplexity median {p['median']:.4g} "
                f"[{p['median_ci95'][0]:.4g}, {p['median_ci95'][1]:.4g}] (q90 {p['q90']:.4g}, "
                f"{r['perplexity_increase_pct']:+.2f}%)  diverged {100 * d['fraction']:.0f}% "
                f"[{100 * d['ci95'][0]:.0f}, {100 * d['ci95'][1]:.0f}]  inf {100 * r['infinite_perplexity']['fraction']:.0f}%  "
                f"next-token top1 {100 * r['top1']['mean']:.2f}%  "
                f"realised ber {r['realised_ber']['mean']:.3e}")
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
    per_cell = len(counts) > 1 or any(r.get("estimator") == "stratified" for r in report["rows"])
    head = "top-1 %, mean [95 % interval] (trials averaged; stratified: docs/rare.md)" if per_cell else f"top-1 %, mean [95 % interval], {counts[0]} trials"
    lines = [head + ":", "", "| BER | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    if report.get("task") == "language_model":
        lines = ["| BER (perplexity median [95 % interval], diverged %) | " + " | ".join(schemes) + " |",
                 "|---|" + "---|" * len(schemes)]
        for b in bers:
            cells = [next(f"{r['perplexity']['median']:.4g} [{r['perplexity']['median_ci95'][0]:.4g}, "
                          f"{r['perplexity']['median_ci95'][1]:.4g}], {100 * r['diverged']['fraction']:.0f}%"
                          for r in report["rows"] if r["ber"] == b and r["scheme"] == s) for s in schemes]
            lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    for b in bers:
        cells = [next(f"{100 * r['top1']['mean']:.2f} [{100 * r['top1']['ci_lo']:.2f}, {100 * r['top1']['ci_hi']:.2f}]"
                      + (f" ({r['top1']['n']}{', stratified' if r.get('estimator') == 'stratified' else ''})"
                         if per_cell else "") for r in report["rows"]
                      if r["ber"] == b and r["scheme"] == s) for s in schemes]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict, path) -> None:
    """Accuracy (mean with its 95 % interval) vs BER, one line per scheme, the clean bf16 accuracy
    dashed, the trials per point in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if report.get("task") == "language_model":
        for name in dict.fromkeys(r["scheme"] for r in rows):
            rs = [r for r in rows if r["scheme"] == name]
            med = np.array([r["perplexity"]["median"] for r in rs])
            lo = np.array([r["perplexity"]["median_ci95"][0] for r in rs])
            hi = np.array([r["perplexity"]["median_ci95"][1] for r in rs])
            big = 10 * report["clean_bf16"]["perplexity"]        # diverged medians drawn at the top
            med, lo, hi = (np.minimum(a, big) for a in (med, lo, hi))
            ax.errorbar([r["ber"] for r in rs], med, yerr=[med - lo, hi - med], marker="o", capsize=3, label=name)
        ax.axhline(report["clean_bf16"]["perplexity"], color="gray", ls="--", lw=1, label="clean bf16")
        ax.set_yscale("log")
        ax.set_ylabel("validation perplexity (median, 95 % interval)")
    for name in (() if report.get("task") == "language_model" else dict.fromkeys(r["scheme"] for r in rows)):
        rs = [r for r in rows if r["scheme"] == name]
        m = [100 * r["top1"]["mean"] for r in rs]
        yerr = [[mi - 100 * r["top1"]["ci_lo"] for mi, r in zip(m, rs)], [100 * r["top1"]["ci_hi"] - mi for mi, r in zip(m, rs)]]
        ax.errorbar([r["ber"] for r in rs], m, yerr=yerr, marker="o", capsize=3, label=name)
    if report.get("task") != "language_model":
        ax.axhline(100 * report["clean_bf16"]["top1"], color="gray", ls="--", lw=1, label="clean bf16")
        counts = sorted({r["top1"]["n"] for r in rows})
        ax.set_ylabel("top-1 accuracy (%), mean and 95 % interval")
        ax.set_title(f"trials per point: {counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else ""), fontsize=9)
    if all(r["ber"] > 0 for r in rows):
        ax.set_xscale("log")
    ax.set_xlabel("bit error rate (stored cells)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
