"""Error-injected inference with Sparrow ECC, a SEC-DED baseline, or no protection.

    python -m eval.sparrow --ber 1e-3 [--scheme sparrow] [--sweep 1e-5,1e-4,1e-3,1e-2] ...

The model's protected weights are truncated to bf16, encoded under the scheme, hit by stuck-at
faults in their stored bit cells, decoded and evaluated in bf16 (docs/sparrow.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxfault.cli import (ArgumentParser, add_model_flags, as_flags, positive_float, positive_int, probability,
                          run_main, seed_int, strategy_flag)
from jaxfault.config import parse_float_list
from jaxfault.ecc import scheme_names
from jaxfault.ecc.evaluate import (SparrowEvalConfig, format_comparison, format_row, model_source, plot_sweep,
                                   result_config, run, sweep_table, with_comparison)
from jaxfault.ecc.hbm import LEAF_SELECTORS, MODES
from jaxfault.errors import check
from jaxfault.io import atomic_write_json, atomic_write_text, check_output_path
from jaxfault.precision import PRECISIONS
from jaxfault.rerun import check_result_path, checkpoint_digest


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m eval.sparrow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ber", type=probability, help="bit error rate of the stored cells (give this or --sweep)")
    ap.add_argument("--sweep", default=None, help="comma-separated BERs: every scheme, table + JSON + PNG (default: none)")
    ap.add_argument("--scheme", default="sparrow", help=f"one of {', '.join(scheme_names())} (default: sparrow)")
    ap.add_argument("--no-compare", action="store_true",
                    help="with --ber: evaluate only --scheme, not also SEC-DED and no protection beside it "
                         "(default: all three, on the same trial keys)")
    ap.add_argument("--zero-to-one", type=probability, default=0.01, help="share of faults stuck at 1 (default: 0.01)")
    ap.add_argument("--block-size", type=positive_int, default=64, help="Sparrow block size: 16, 32 or 64 (default: 64)")
    ap.add_argument("--trials", type=positive_int, default=20, help="fault draws per BER (default: 20)")
    ap.add_argument("--ci-width", type=positive_float, default=None,
                    help="run trials in chunks of --trials until top-1's 95 %% interval half-width is <= this, per BER "
                         "(default: none, a fixed number of trials)")
    ap.add_argument("--max-trials", type=positive_int, default=None,
                    help="cap of a --ci-width run (default: 10 x --trials)")
    ap.add_argument("--estimator", choices=("plain", "stratified", "auto"), default="plain",
                    help="plain Monte Carlo over --trials fault draws (the default: the output the README shows); "
                         "stratified: the rare-fault estimator of docs/rare.md, strata by the number of bit-30 "
                         "(bf16 exponent MSB) stuck-at-1 faults, --trials main-phase trials, reporting its mean, 95 %% "
                         "interval and forward passes; auto: stratified where that class expects at most 2 faults "
                         "per trial, plain elsewhere. Not with --ci-width, --tensors or a language model")
    ap.add_argument("--seed", type=seed_int, default=0, help="root seed of the trial keys (default: 0)")
    add_model_flags(ap)
    ap.add_argument("--tensors", default=None,
                    help="tensor groups hit: comma-separated embeddings, attention, mlp, norms, lm_head, other, "
                         "or all (default: every leaf that --params selects)")
    ap.add_argument("--out", default="runs/sparrow", help="output directory (default: runs/sparrow)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing result file (default: refuse)")
    ap.add_argument("--strategy", type=strategy_flag, default="auto", help="trial batching: auto, vmap, map, map:B or loop")
    ap.add_argument("--precision", choices=PRECISIONS, default="highest",
                    help="float32 matmul/conv precision (default: highest)")
    ap.add_argument("--fault-model", choices=MODES, default="stuck-at", help="stuck-at or XOR flips (default: stuck-at)")
    ap.add_argument("--params", choices=tuple(LEAF_SELECTORS), default="kernels",
                    help="protected leaves: conv/dense kernels or all float parameters (default: kernels)")
    ap.add_argument("--compat", action="store_true", help="bit-compatible zero-word quirk of the reference (default: off)")
    ap.add_argument("--compute-dtype", choices=("bfloat16", "float32"), default=None,
                    help="arithmetic of the forward pass: the stored bf16 weights evaluated in bf16 (the Sparrow "
                         "reference's, and the default) or in float32 (numbers differ slightly; speed and differences "
                         "measured in bench/RESULTS.md)")
    ap.add_argument("--batch-size", type=positive_int, default=1000, help="evaluation batch size (default: 1000)")
    ap.add_argument("--memory-budget", type=positive_float, default=None,
                    help="GiB the trials held at once may take; with --strategy vmap or map:B the chunk of trials is "
                         "cut to fit (default: half the device's memory)")
    ap.add_argument("--limit", type=positive_int, default=None,
                    help="evaluate only the first N test images, or N validation windows of a language model "
                         "(default: all images; 32 windows)")
    return ap


def result_path(out: Path, config: SparrowEvalConfig, sweep: bool) -> Path:
    """Default result file name: distinct per scheme, rates, trials, seed and image limit."""
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


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check((a.ber is None) != (a.sweep is None), "give exactly one of --ber or --sweep")
    check(a.max_trials is None or a.ci_width is not None, f"--max-trials {a.max_trials} needs --ci-width")
    check(a.max_trials is None or a.max_trials >= a.trials,
          f"--max-trials {a.max_trials} must be >= --trials {a.trials}")
    if a.estimator != "plain":
        from jaxfault.lm import scores_language_model

        for flag, given in (("--ci-width", a.ci_width is not None), ("--tensors", a.tensors is not None),
                            ("--task language_model", scores_language_model(a.task, a.checkpoint))):
            check(not given, f"--estimator {a.estimator} cannot be combined with {flag}: the stratified estimator "
                             f"sizes its own trials and conditions HBM faults on every selected leaf of a classifier "
                             f"(docs/rare.md)")
    check(a.compute_dtype is None or a.estimator == "plain",
          f"--compute-dtype {a.compute_dtype} needs --estimator plain: the stratified estimator evaluates in bf16")
    sweep = a.sweep is not None
    if a.checkpoint is not None:
        check(Path(a.checkpoint).is_dir(), f"--checkpoint {a.checkpoint!r} is not a directory")
    config = SparrowEvalConfig(
        bers=tuple(parse_float_list(a.sweep, "--sweep", check=lambda v: 0 <= v <= 1, requirement="in [0, 1]"))
        if sweep else (a.ber,),
        schemes=scheme_names() if sweep else ((a.scheme,) if a.no_compare else with_comparison(a.scheme)), zero_to_one=a.zero_to_one, block_size=a.block_size,
        trials=a.trials, seed=a.seed, mode=a.fault_model, leaves=a.params, compat=a.compat, strategy=a.strategy,
        precision=a.precision, batch_size=a.batch_size, limit=a.limit, checkpoint=a.checkpoint,
        ci_width=a.ci_width, max_trials=a.max_trials, task=a.task,
        tensors=a.tensors, estimator=a.estimator, compute_dtype=a.compute_dtype, memory_budget=None if a.memory_budget is None else a.memory_budget * 2**30)
    path = result_path(Path(a.out), config, sweep)
    identity = result_config(config)
    replacing = check_result_path(path, identity, checkpoint_digest(model_source(config)), overwrite=a.overwrite,
                                  flag="--out")
    if sweep:
        for extra in (".md", ".png"):
            check_output_path(path.with_suffix(extra), overwrite=a.overwrite or replacing, flag="--out")
    report = run(config)
    report = {**report, "config": identity, "checkpoint_digest": checkpoint_digest(report["checkpoint"])}
    clean = report["clean_bf16"]
    label = "clean bf16" + (f" ({config.compute_dtype} arithmetic)" if config.compute_dtype else "")
    if report.get("task") == "language_model":
        print(f"{label}: perplexity {clean['perplexity']:.4f}  next-token top1 {100 * clean['top1']:.2f}%  "
              f"({report['tokens']} tokens)")
    else:
        print(f"{label}: top1 {100 * clean['top1']:.2f}%" + (f"  top5 {100 * clean['top5']:.2f}%" if "top5" in clean else ""))
    if not sweep and report.get("task") != "language_model":
        print(as_flags(format_comparison(report)), end="")
    else:
        for r in report["rows"]:
            print(format_row(r))
    if sweep:
        atomic_write_json(path, report)
        atomic_write_text(path.with_suffix(".md"), sweep_table(report))
        plot_sweep(report, path.with_suffix(".png"))
        print(sweep_table(report), end="")
        print(f"wrote {path}, {path.with_suffix('.md')}, {path.with_suffix('.png')}")
    else:
        first, *others = report["rows"]
        atomic_write_json(path, {**{k: v for k, v in report.items() if k != "rows"}, **first,
                                 **({"comparison": others} if others else {})})
        print(f"wrote {path}")
    if replacing:
        print("(it replaced the earlier result of this configuration and model: same configuration, same numbers)")
    print(f"next: python -m eval.tradeoff {path}   (energy of protection for these points)")
    return 0


if __name__ == "__main__":
    run_main(main)
