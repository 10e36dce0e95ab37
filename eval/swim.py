"""SWIM (SPEC 2): accuracy under compute-in-memory device variation with selective write-verify.

python -m eval.swim [--checkpoint DIR] [--mask-p 0.05] [--method SM] [--dev-var 0.1]
    [--write-var 0.03] [--noise-instances 100] [--curvature becker-lecun|exact|ggn|hutchinson]
    [--sweep-mask-p 0.01,0.05,0.1,0.2] [--strategy auto|map|vmap|loop] [--out DIR]

Reports clean accuracy and the mean/std accuracy over noise instances with no weight verified,
all weights verified, and the fraction mask_p chosen by the selection method(s), plus the
write-verify cycles saved versus verifying everything. Every configuration uses the same noise
keys (common random numbers), so differences between methods are not draw-to-draw luck.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.cli import ArgumentParser, parse_float_list, run_main
from jaxfault.errors import JaxfaultError, check_probability
from jaxfault.io import atomic_savefig, atomic_write_json, atomic_write_text
from jaxfault.batching import resolve_strategy
from jaxfault.pytree import count_kernel_weights, map_kernels
from jaxfault.quant import fake_quant
from jaxfault.sensitivity import METHODS, NEEDS_CURVATURE, canonical_method, full_mask, protection_mask
from jaxfault.variation import check_bits_per_device, check_variances, monte_carlo

CURVATURES = ("becker-lecun", "exact", "ggn", "hutchinson")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.swim", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: cached LeNet on Fashion-MNIST)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mask-p", type=float, default=0.05, help="fraction of kernel weights write-verified")
    p.add_argument("--method", default="SM", help=f"selection method: {', '.join(METHODS)}")
    p.add_argument("--alpha", type=float, default=None, help="SM: 1e6 by default; saliency: 2 by default")
    p.add_argument("--dev-var", type=float, default=0.1, help="device variation sigma (not verified)")
    p.add_argument("--write-var", type=float, default=0.03, help="variation sigma after write-verify")
    p.add_argument("--n-bits", type=int, default=8, help="bits per weight N")
    p.add_argument("--m-bits", type=int, default=1, help="bits per device m (N must be a multiple)")
    p.add_argument("--noise-instances", type=int, default=100, help="Monte Carlo noise draws")
    p.add_argument("--curvature", default="becker-lecun", help=f"d2L/dw2 estimator: {', '.join(CURVATURES)}")
    p.add_argument("--curvature-examples", type=int, default=4096,
                   help="training images the curvature is summed over (first N)")
    p.add_argument("--hutchinson-samples", type=int, default=200)
    p.add_argument("--sweep-mask-p", default=None,
                   help="comma list of mask_p: compare all methods (or --methods) at each, with a plot")
    p.add_argument("--methods", default=None, help="comma list of methods for --sweep-mask-p (default all)")
    p.add_argument("--strategy", default="auto", help="noise-instance batching: auto, map, vmap, loop")
    p.add_argument("--instance-batch", type=int, default=None,
                   help="noise instances evaluated together inside lax.map (bounds memory)")
    p.add_argument("--eval-batch", type=int, default=1000, help="test images per forward pass")
    p.add_argument("--test-examples", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/swim", help="folder for swim.json, swim.txt and the sweep plot")
    return p


def validate(args) -> dict:
    """Check every argument before any model or data is loaded (bad input -> exit 2 at once)."""
    check_probability("--mask-p", args.mask_p)
    check_variances(args.dev_var, args.write_var)
    check_bits_per_device(args.n_bits, args.m_bits)
    method = canonical_method(args.method)
    if args.curvature not in CURVATURES:
        raise JaxfaultError(f"unknown curvature {args.curvature!r}; choose one of {', '.join(CURVATURES)}")
    for name in ("noise_instances", "curvature_examples", "hutchinson_samples", "eval_batch"):
        if getattr(args, name) <= 0:
            raise JaxfaultError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.instance_batch is not None and args.instance_batch <= 0:
        raise JaxfaultError(f"--instance-batch must be positive, got {args.instance_batch}")
    if args.test_examples is not None and args.test_examples <= 0:
        raise JaxfaultError(f"--test-examples must be positive, got {args.test_examples}")
    if args.alpha is not None and not math.isfinite(args.alpha):
        raise JaxfaultError(f"--alpha must be finite, got {args.alpha}")
    resolve_strategy(args.strategy)
    sweep = None
    if args.sweep_mask_p is not None:
        sweep = [check_probability("--sweep-mask-p", v) for v in parse_float_list(args.sweep_mask_p, "--sweep-mask-p")]
    methods = [method]
    if args.methods is not None:
        methods = [canonical_method(m.strip()) for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise JaxfaultError("--methods: empty list")
    elif sweep is not None:
        methods = list(METHODS)
    return {"method": method, "methods": methods, "mask_ps": sweep if sweep is not None else [args.mask_p]}


def load_model(args):
    """(model, variables, config) with quantized kernels already dequantized (SPEC 2.1 perturbs the stored weights)."""
    from jaxfault.checkpoints import load_checkpoint

    if args.checkpoint is None:
        from jaxfault.zoo import default_classifier

        path = default_classifier(data_dir=args.data_dir)
    else:
        path = args.checkpoint
    ckpt = load_checkpoint(path)
    model, variables = ckpt.model, dict(ckpt.variables)
    bits = ckpt.config.get("quant_bits")
    if bits:
        variables["params"] = map_kernels(lambda w: fake_quant(w, bits), variables["params"])
        model = model.clone(quant_bits=None)
    return model, variables, ckpt.config, str(path)


def compute_curvature(kind: str, model, variables, images, labels, *, key, hutchinson_samples: int):
    """d2L/dw2 of the summed cross-entropy over (images, labels), a pytree like params."""
    from jaxfault import curvature as cv

    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    if kind == "becker-lecun":
        return cv.becker_lecun_diag(model, variables, images, batch_size=min(1024, len(images)))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    out = lambda p, xb: model.apply({"params": p, **rest}, xb, train=False)
    ce = lambda logits, t: -jax.nn.log_softmax(logits)[t]
    loss = lambda p, xb, yb: jnp.sum(jax.vmap(ce)(out(p, xb), yb))
    if kind == "exact":
        return cv.hessian_diag_exact(loss, params, chunk_size=64, data=(x, y))
    if kind == "hutchinson":
        return cv.hessian_diag_hutchinson(loss, params, key, num_samples=hutchinson_samples, chunk_size=8,
                                          data=(x, y))
    return cv.ggn_diag_exact(out, ce, params, x, y, chunk_size=64)


def make_mc(model, variables, images, labels, keys, args):
    """fn(mask) -> per-instance top-1 accuracies (numpy), all instances in one batched call."""
    from jaxfault.training import make_accuracy_fn

    acc_fn = make_accuracy_fn(model, batch_size=min(args.eval_batch, len(images)))
    rest = {k: v for k, v in variables.items() if k != "params"}
    x, y = jnp.asarray(images), jnp.asarray(labels)

    metric = lambda p, rest, x, y: acc_fn({"params": p, **rest}, x, y)["top1"]  # one object: compiled once

    def run(mask):
        accs = monte_carlo(metric, variables["params"], mask, keys, args.dev_var, args.write_var,
                           args.n_bits, args.m_bits, strategy=args.strategy, batch_size=args.instance_batch,
                           data=(rest, x, y))
        return np.asarray(accs, np.float64)

    return run


def _stats(accs: np.ndarray) -> dict:
    return {"mean": float(accs.mean()), "std": float(accs.std(ddof=1)) if accs.size > 1 else 0.0,
            "min": float(accs.min()), "max": float(accs.max())}


def format_table(report: dict) -> str:
    n = report["n_kernel_weights"]
    lines = [f"SWIM on {report['model']} / {report['dataset']} ({report['test_examples']} test images, "
             f"{report['config']['noise_instances']} noise instances, dev_var {report['config']['dev_var']}, "
             f"write_var {report['config']['write_var']}, N={report['config']['n_bits']} m={report['config']['m_bits']}, "
             f"curvature {report['config']['curvature']})",
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


def plot_sweep(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    plan = validate(args)
    from jaxfault.data import load_dataset

    model, variables, config, ckpt_path = load_model(args)
    data = load_dataset(config["dataset"], data_dir=args.data_dir, value_range=config.get("value_range", "symmetric"))
    test_x, test_y = data.test_images, data.test_labels
    if args.test_examples is not None:
        test_x, test_y = test_x[:args.test_examples], test_y[:args.test_examples]
    params = variables["params"]
    n_weights = count_kernel_weights(params)
    root = jax.random.key(args.seed)
    k_noise, k_curv, k_rand = jax.random.split(root, 3)
    keys = jax.random.split(k_noise, args.noise_instances)

    from jaxfault.training import evaluate

    clean = evaluate(model, variables, test_x, test_y, batch_size=min(args.eval_batch, len(test_x)))["top1"]
    print(f"clean accuracy {100 * clean:.2f} %  ({ckpt_path})")
    mc = make_mc(model, variables, test_x, test_y, keys, args)
    timings = {}
    t0 = time.perf_counter()
    none = mc(full_mask(params, False))
    timings["mc_seconds_per_config"] = time.perf_counter() - t0
    print(f"no write-verify: {100 * none.mean():.2f} +- {100 * none.std(ddof=1) if none.size > 1 else 0:.2f} %  "
          f"({timings['mc_seconds_per_config']:.1f} s for {args.noise_instances} instances)")
    allv = mc(full_mask(params, True))

    curvature = None
    if any(m in NEEDS_CURVATURE for m in plan["methods"]):
        n_curv = min(args.curvature_examples, len(data.train_images))
        t0 = time.perf_counter()
        curvature = compute_curvature(args.curvature, model, variables, data.train_images[:n_curv],
                                      data.train_labels[:n_curv], key=k_curv,
                                      hutchinson_samples=args.hutchinson_samples)
        curvature = jax.block_until_ready(curvature)
        timings["curvature_seconds"] = time.perf_counter() - t0
        print(f"curvature ({args.curvature}, {n_curv} training images): {timings['curvature_seconds']:.1f} s")

    selected = []
    for method in plan["methods"]:
        for p in plan["mask_ps"]:
            mask, frac = protection_mask(params, method, p, curvature, alpha=args.alpha, key=k_rand)
            accs = mc(mask)
            r = {"method": method, "mask_p": p, "fraction_protected": frac,
                 "weights_verified": int(round(frac * n_weights)),
                 "write_verify_saved_fraction": 1.0 - frac, **_stats(accs), "accuracies": accs.tolist()}
            selected.append(r)
            print(f"{method:>10} mask_p {p:.3f}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} %")

    report = {"checkpoint": ckpt_path, "model": config.get("model"), "dataset": data.name,
              "test_examples": int(len(test_x)), "n_kernel_weights": n_weights,
              "config": {k: getattr(args, k) for k in ("dev_var", "write_var", "n_bits", "m_bits", "noise_instances",
                                                        "curvature", "curvature_examples", "alpha", "strategy",
                                                        "instance_batch", "seed")}
              | {"resolved_strategy": resolve_strategy(args.strategy), "backend": jax.default_backend()},
              "clean_accuracy": clean,
              "none": {**_stats(none), "accuracies": none.tolist()},
              "all": {**_stats(allv), "accuracies": allv.tolist()},
              "selected": selected, "timings": timings}
    out = Path(args.out)
    table = format_table(report)
    atomic_write_json(out / "swim.json", report)
    atomic_write_text(out / "swim.txt", table)
    print()
    print(table, end="")
    if args.sweep_mask_p is not None:
        print(f"plot: {plot_sweep(report, out / 'swim_sweep.png')}")
    print(f"results: {out / 'swim.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
