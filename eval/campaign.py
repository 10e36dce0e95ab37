"""Run a fault-injection campaign from a JSON config: python -m eval.campaign CONFIG.json.

Config (JSON):
  {"output": "runs/campaign/results.jsonl",   # append-only, one record per grid point
   "checkpoint": null,                        # classifier dir; null = the cached default LeNet
   "seed": 0, "trials": 20, "eval_examples": 10000, "strategy": "auto",
   "grid": [{"method": "sparrow", "scheme": ["sparrow", "secded", "none"], "ber": [1e-4, 1e-3]},
            {"method": "bitflip", "ber": [1e-5, 1e-4]}]}
List-valued fields of a grid entry are crossed. Killed runs resume with the same command.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxfault import campaign as cp
from jaxfault.campaign_methods import EvalContext, make_trial_fn, validate_point
from jaxfault.checkpoints import load_checkpoint
from jaxfault.cli import ArgumentParser, progress, run_main
from jaxfault.data import load_dataset
from jaxfault.errors import JaxfaultError
from jaxfault.training import make_accuracy_fn

KNOWN_KEYS = {"output", "checkpoint", "seed", "trials", "eval_examples", "strategy", "grid", "data_dir"}


def load_config(path: str, overrides: dict) -> dict:
    """Read and validate a campaign config (everything checked before any work starts)."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JaxfaultError(f"campaign config {path!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"campaign config {path!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise JaxfaultError(f"campaign config {path!r} must be a JSON object")
    config.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(config) - KNOWN_KEYS
    if unknown:
        raise JaxfaultError(f"unknown campaign config keys: {', '.join(sorted(unknown))}")
    trials = config.setdefault("trials", 20)
    if not isinstance(trials, int) or trials <= 0:
        raise JaxfaultError(f"trials must be a positive integer, got {trials!r}")
    n_eval = config.setdefault("eval_examples", 10000)
    if not isinstance(n_eval, int) or n_eval <= 0:
        raise JaxfaultError(f"eval_examples must be a positive integer, got {n_eval!r}")
    config.setdefault("seed", 0)
    config.setdefault("strategy", "auto")
    config.setdefault("output", "runs/campaign/results.jsonl")
    for point in cp.expand_grid(config.get("grid")):
        validate_point(point.params)
    return config


def build_context(config: dict, log=print) -> EvalContext:
    from jaxfault.zoo import default_classifier

    ckpt_dir = config.get("checkpoint") or default_classifier(log=log)
    ckpt = load_checkpoint(ckpt_dir)
    data = load_dataset(ckpt.config["dataset"], data_dir=config.get("data_dir"),
                        value_range=ckpt.config.get("value_range", "symmetric"))
    n = min(config["eval_examples"], len(data.test_images))
    # Faulty weights are evaluated as stored: a QAT model runs without re-quantizing them.
    model = ckpt.model.clone(quant_bits=None) if ckpt.config.get("quant_bits") else ckpt.model
    return EvalContext(model=model, variables=jax.tree_util.tree_map(jnp.asarray, ckpt.variables),
                       images=jnp.asarray(data.test_images[:n]), labels=jnp.asarray(data.test_labels[:n]),
                       accuracy_fn=make_accuracy_fn(model, batch_size=1000),
                       extras={"checkpoint": str(ckpt.path), "config": ckpt.config})


def plot_records(records: list[dict], path: str) -> None:
    """Accuracy (mean +- std over trials) against the fault rate, one line per method and scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.io import atomic_savefig

    groups: dict[str, list] = {}
    fields = {k for r in records for k in r["config"]}
    varying = {k for k in fields if len({json.dumps(r["config"].get(k)) for r in records}) > 1}
    for r in records:
        c = r["config"]
        rate_name = next((k for k in ("ber", "dev_var") if k in c), None)
        if rate_name is None:
            continue
        parts = [f"{k}={v}" for k, v in sorted(c.items()) if k in varying and k not in ("method", rate_name)]
        label = " ".join(([c["method"]] if "method" in varying or not parts else []) + parts)
        groups.setdefault(label, []).append((c[rate_name], r["accuracy_mean"], r["accuracy_std"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(groups.items()):
        pts.sort()
        x, m, s = zip(*pts)
        ax.errorbar(x, [100 * v for v in m], yerr=[100 * v for v in s], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("fault rate (BER)")
    ax.set_ylabel("top-1 accuracy (%), mean +- std over trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m eval.campaign", description=__doc__.splitlines()[0])
    p.add_argument("config", help="campaign JSON (see module docstring)")
    p.add_argument("--output", default=None, help="override the config's results file")
    p.add_argument("--trials", type=int, default=None, help="override the config's trials per point")
    p.add_argument("--dry-run", action="store_true", help="print the grid size and an estimated time, run nothing")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs rate, one line per method/scheme")
    args = p.parse_args(argv)
    config = load_config(args.config, {"output": args.output, "trials": args.trials})
    points = cp.expand_grid(config["grid"])
    output = Path(config["output"])
    cp.check_writable(output)
    ctx = build_context(config)
    campaign = cp.Campaign(points=points, trials=config["trials"], seed=config["seed"], output=output,
                           strategy=config["strategy"])
    mesh = cp.trial_mesh()
    print(f"campaign: {len(points)} grid points x {campaign.trials} trials on {mesh.devices.size} "
          f"{jax.devices()[0].platform} device(s) -> {output}")
    if args.dry_run:
        first = points[0]
        spec = make_trial_fn(ctx, first.params)
        keys = jax.random.split(first.key(campaign.seed), mesh.devices.size)
        compiled = cp.sharded_trials(spec.fn, mesh, campaign.strategy)
        jax.block_until_ready(cp.run_trials(spec, keys, mesh, compiled=compiled))  # compile
        t0 = time.perf_counter()
        jax.block_until_ready(cp.run_trials(spec, keys, mesh, compiled=compiled))
        per_trial = (time.perf_counter() - t0) / len(keys) * mesh.devices.size
        done = cp.read_results(output) if output.exists() and output.stat().st_size else {}
        remaining = sum(pt.point_id not in done for pt in points)
        est = remaining * (campaign.trials * per_trial / mesh.devices.size)
        print(f"dry run: {remaining} of {len(points)} points to run, about {per_trial:.3f} s per trial "
              f"per device -> estimated {est:.0f} s plus compilation")
        return 0
    t0 = time.perf_counter()
    records = cp.run_campaign(campaign, lambda params: make_trial_fn(ctx, params), mesh, progress_bar=progress)
    print(f"{'method':10s} {'point':56s} {'acc mean':>9s} {'std':>7s} {'min':>7s} {'fault rate':>11s}")
    for r in records:
        label = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k != "method")
        print(f"{r['config']['method']:10s} {label[:56]:56s} {r['accuracy_mean']:9.4f} {r['accuracy_std']:7.4f} "
              f"{r['accuracy_min']:7.4f} {r['fault_rate_mean']:11.3e}")
    print(f"done in {time.perf_counter() - t0:.1f} s; results: {output}")
    if args.plot:
        plot_records(records, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
