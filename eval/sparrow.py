"""Error-injected inference with Sparrow ECC, a SEC-DED baseline, or no protection.

    python -m eval.sparrow --ber 1e-3 [--zero-to-one 0.01] [--block-size 64] [--scheme sparrow]
        [--trials 20] [--checkpoint DIR] [--out DIR] [--sweep 1e-5,1e-4,1e-3,1e-2]

The model's protected weights (conv/dense kernels by default; --params all adds biases and
normalisation parameters) are flattened, truncated to bf16, padded to whole blocks and encoded;
each trial draws a stuck-at (or flip) fault map over the stored bit cells, decodes, and evaluates
top-1 (and top-5 when there are more than 5 classes) with weights, activations and inputs in bf16
as the reference does. The T trials run inside one jitted computation (jaxfault.batching); 'auto'
means vmap here, which measured fastest for this workload on CPU too.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.batching import STRATEGIES, map_over_keys, resolve_strategy
from jaxfault.cli import ArgumentParser, parse_float_list, run_main
from jaxfault.ecc import SCHEMES, get_scheme
from jaxfault.ecc.pipeline import FAULT_MODELS, cast_floats, faulty_params, is_float_param, protect
from jaxfault.ecc.sparrow import check_block_size
from jaxfault.errors import check, check_probability
from jaxfault.io import atomic_savefig, atomic_write_json, atomic_write_text
from jaxfault.pytree import is_kernel

SELECTORS = {"kernels": is_kernel, "all": is_float_param}


def resolve_trial_strategy(strategy: str = "auto") -> str:
    """'auto' -> 'vmap' for this workload on every backend: measured on the 2-core CPU box with the
    LeNet (10,000 bf16 test images per trial), each extra trial cost 1.1-1.6 s vmapped, 2.4-2.5 s
    with lax.map and 1.9-2.7 s one jitted call at a time (docs/sparrow.md)."""
    if strategy == "auto":
        resolve_strategy(strategy)
        return "vmap"
    return resolve_strategy(strategy)


def run_trials(metric_fn: Callable, variables, images, labels, prot, ber: float, zero_to_one: float,
               keys, *, strategy: str = "auto", fault_model: str = "stuck-at", select=is_kernel,
               dtype=jnp.bfloat16) -> dict:
    """Metrics and fault stats of one fault draw per key, stacked along axis 0 (dict of arrays).

    metric_fn(variables, images, labels) -> dict of scalars; variables and images are cast to
    `dtype` (bf16 by default, as the reference evaluates). All trials run in one jitted computation
    except with strategy 'loop' (one jitted call per key, the reference for tests and timing).
    """
    strategy = resolve_trial_strategy(strategy)
    base = cast_floats(variables, dtype)
    images = jnp.asarray(images).astype(dtype)
    labels = jnp.asarray(labels)

    def trial(key, encoded, clean, base, images, labels):
        p = prot._replace(encoded=encoded, clean=clean)
        params, stats = faulty_params(key, base["params"], p, ber, zero_to_one, fault_model=fault_model,
                                      select=select, dtype=dtype)
        out = dict(metric_fn({**base, "params": params}, images, labels))
        out.update(stats)
        return out

    args = (prot.encoded, prot.clean, base, images, labels)
    if strategy == "loop":
        jitted = jax.jit(trial)
        outs = [jitted(k, *args) for k in keys]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

    @jax.jit
    def all_trials(keys, *args):
        return map_over_keys(lambda k: trial(k, *args), keys, strategy)

    return all_trials(keys, *args)


def summarize(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _jitted(metric_fn):
    """One jitted metric per metric_fn object, so clean and fault-free evaluations compile once."""
    jm = getattr(metric_fn, "_jaxfault_jitted", None)
    if jm is None:
        jm = jax.jit(metric_fn)
        try:
            metric_fn._jaxfault_jitted = jm
        except AttributeError:
            pass
    return jm


def evaluate_clean(metric_fn, variables, images, labels, select=is_kernel, dtype=jnp.bfloat16) -> dict:
    """Accuracy without faults or ECC: selected leaves truncated to bf16 (as the codecs see them),
    everything evaluated in `dtype`: the reference's clean bf16 model."""
    from jaxfault.bits import bf16_round_trip

    params = jax.tree_util.tree_map_with_path(lambda p, x: bf16_round_trip(x) if select(p, x) else x,
                                              variables["params"])
    v = cast_floats({**variables, "params": params}, dtype)
    out = _jitted(metric_fn)(v, jnp.asarray(images).astype(dtype), jnp.asarray(labels))
    return {k: float(x) for k, x in out.items()}


def evaluate_fault_free(metric_fn, variables, images, labels, prot, select=is_kernel, dtype=jnp.bfloat16) -> dict:
    """Accuracy of the scheme's fault-free decoded weights (what encoding alone loses)."""
    from jaxfault.bits import words_to_pytree

    base = cast_floats(variables, dtype)
    params = words_to_pytree(base["params"], prot.clean, prot.layout, select=select, dtype=dtype)
    out = _jitted(metric_fn)({**base, "params": params}, jnp.asarray(images).astype(dtype), jnp.asarray(labels))
    return {k: float(x) for k, x in out.items()}


def evaluate_scheme(metric_fn, variables, images, labels, scheme_name: str, block_size: int, ber: float,
                    zero_to_one: float, trials: int, seed: int, *, strategy="auto", fault_model="stuck-at",
                    params_sel="kernels", compat=False) -> dict:
    """Encode under one scheme, run T trials, summarise (a JSON-ready dict)."""
    select = SELECTORS[params_sel]
    scheme = get_scheme(scheme_name, block_size, compat=compat)
    prot = protect(variables["params"], scheme, select=select)
    keys = jax.random.split(jax.random.key(seed), trials)
    t0 = time.perf_counter()
    out = run_trials(metric_fn, variables, images, labels, prot, ber, zero_to_one, keys, strategy=strategy,
                     fault_model=fault_model, select=select)
    out = jax.device_get(out)
    elapsed = time.perf_counter() - t0
    free = evaluate_fault_free(metric_fn, variables, images, labels, prot, select)
    res = {"scheme": scheme_name, "block_size": block_size if scheme_name == "sparrow" else scheme.block_size,
           "stored_bits_per_weight": scheme.stored_bits, "ber": ber, "zero_to_one": zero_to_one,
           "fault_model": fault_model, "trials": trials, "protected_weights": prot.layout.n_values,
           "stored_words": int(prot.encoded.shape[0]), "seconds": elapsed,
           "fault_free": {k: v for k, v in free.items() if k.startswith("top")}}
    for k, v in out.items():
        res[k] = summarize(v)
        if k.startswith("top"):
            res[k]["values"] = [float(x) for x in np.asarray(v)]
    return res


def _load(checkpoint, limit):
    from jaxfault.checkpoints import load_checkpoint
    from jaxfault.data import load_dataset
    from jaxfault.training import make_accuracy_fn

    if checkpoint is None:
        from jaxfault.zoo import default_classifier

        checkpoint = default_classifier()
    ck = load_checkpoint(checkpoint, kind="classifier")
    cfg = ck.config
    ds = load_dataset(cfg.get("dataset", "fashion_mnist"), value_range=cfg.get("value_range", "symmetric"))
    images, labels = ds.test_images, ds.test_labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    topk = (1, 5) if ds.num_classes > 5 else (1,)
    return Path(checkpoint), ck, images, labels, topk, make_accuracy_fn


def _fmt_row(r) -> str:
    t5 = f"  top5 {100 * r['top5']['mean']:6.2f}" if "top5" in r else ""
    return (f"{r['scheme']:8s} ber {r['ber']:.1e}  top1 {100 * r['top1']['mean']:6.2f} +- {100 * r['top1']['std']:5.2f} "
            f"(min {100 * r['top1']['min']:6.2f}){t5}  realised ber {r['realised_ber']['mean']:.3e}  "
            f"changed {100 * r['changed_fraction']['mean']:.4f}%")


def _plot(rows, clean, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in dict.fromkeys(r["scheme"] for r in rows):
        rs = [r for r in rows if r["scheme"] == name]
        ax.errorbar([r["ber"] for r in rs], [100 * r["top1"]["mean"] for r in rs],
                    yerr=[100 * r["top1"]["std"] for r in rs], marker="o", capsize=3, label=name)
    ax.axhline(100 * clean["top1"], color="gray", ls="--", lw=1, label="clean bf16")
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate (stored cells)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m eval.sparrow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ber", type=float, help="bit error rate of the stored cells (required unless --sweep)")
    ap.add_argument("--zero-to-one", type=float, default=0.01, help="share of faults stuck at 1 (default 0.01)")
    ap.add_argument("--block-size", type=int, default=64, help="Sparrow block size: 16, 32 or 64")
    ap.add_argument("--scheme", choices=SCHEMES, default="sparrow")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--checkpoint", default=None, help="classifier checkpoint dir (default: the zoo LeNet)")
    ap.add_argument("--out", default="runs/sparrow", help="output directory")
    ap.add_argument("--sweep", default=None, help="comma-separated BERs: all schemes, table + JSON + PNG")
    ap.add_argument("--strategy", choices=STRATEGIES, default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-model", choices=FAULT_MODELS, default="stuck-at")
    ap.add_argument("--params", choices=tuple(SELECTORS), default="kernels",
                    help="protected leaves: conv/dense kernels (default) or all float parameters")
    ap.add_argument("--compat", action="store_true", help="bit-compatible zero-word quirk of the reference")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    a = ap.parse_args(argv)

    check((a.ber is None) != (a.sweep is None), "give exactly one of --ber or --sweep")
    bers = parse_float_list(a.sweep, "--sweep") if a.sweep else [a.ber]
    for b in bers:
        check_probability("--ber", b)
    check_probability("--zero-to-one", a.zero_to_one)
    check_block_size(a.block_size)
    check(a.trials >= 1, f"--trials must be >= 1, got {a.trials}")
    check(a.batch_size >= 1, f"--batch-size must be >= 1, got {a.batch_size}")
    check(a.limit is None or a.limit >= 1, f"--limit must be >= 1, got {a.limit}")
    if a.checkpoint is not None:
        check(Path(a.checkpoint).is_dir(), f"--checkpoint {a.checkpoint!r} is not a directory")

    ck_path, ck, images, labels, topk, make_accuracy_fn = _load(a.checkpoint, a.limit)
    model = ck.model.clone(quant_bits=None) if hasattr(ck.model, "clone") else ck.model
    metric_fn = make_accuracy_fn(model, batch_size=min(a.batch_size, len(labels)), topk=topk)
    clean = evaluate_clean(metric_fn, ck.variables, images, labels, SELECTORS[a.params])
    schemes = SCHEMES if a.sweep else (a.scheme,)
    header = {"checkpoint": str(ck_path), "test_examples": int(len(labels)), "strategy": resolve_trial_strategy(a.strategy),
              "backend": jax.default_backend(), "seed": a.seed, "params": a.params, "compat": a.compat,
              "evaluation_dtype": "bfloat16", "clean_bf16": clean}
    print(f"clean bf16: top1 {100 * clean['top1']:.2f}%" + (f"  top5 {100 * clean['top5']:.2f}%" if "top5" in clean else ""))
    rows = []
    for b in bers:
        for s in schemes:
            r = evaluate_scheme(metric_fn, ck.variables, images, labels, s, a.block_size, b, a.zero_to_one,
                                a.trials, a.seed, strategy=a.strategy, fault_model=a.fault_model,
                                params_sel=a.params, compat=a.compat)
            r["drop_vs_clean_points"] = 100 * (clean["top1"] - r["top1"]["mean"])
            rows.append(r)
            print(_fmt_row(r), flush=True)
    out = Path(a.out)
    if a.sweep:
        result = {**header, "sweep": rows}
        atomic_write_json(out / "sweep.json", result)
        lines = ["| BER | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
        for b in bers:
            cells = [next(f"{100 * r['top1']['mean']:.2f} +- {100 * r['top1']['std']:.2f}" for r in rows
                          if r["ber"] == b and r["scheme"] == s) for s in schemes]
            lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        atomic_write_text(out / "sweep.md", table)
        _plot(rows, clean, out / "sweep.png")
        print(table, end="")
        print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    else:
        r = rows[0]
        result = {**header, **r}
        name = f"{r['scheme']}_ber{b:g}_q{a.zero_to_one:g}_B{a.block_size}.json"
        atomic_write_json(out / name, result)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    run_main(main)
