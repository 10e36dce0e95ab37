"""Time per EOPM step for N perturbed models:
(a) the project's step: G(x) once, the N perturbed models batched inside one jitted step
    (strategy auto/map/vmap/map:B), one Adam update;
(b) the reference's algorithm in the same process: a Python loop of N jitted full steps, each
    recomputing G(x) and backpropagating separately, gradients averaged, one Adam update.
Both give the same gradient (tests/test_neuralfuse_eopm.py). Weights are random (timing only).

python -m bench.eopm [--model lenet] [--generator UNetS] [--ns 1,10,32] [--batch-size 128]
                     [--strategies auto] [--repeats 3] [--out runs/bench/eopm.json]
"""
from __future__ import annotations

import platform
import time

import jax
import numpy as np

from jaxfault.cli import ArgumentParser, run_main
from jaxfault.core.config import parse_float_list
from jaxfault.core.io import atomic_write_json
from jaxfault.core.keys import stream
from jaxfault.models import create_model, init_variables
from jaxfault.models.generators import create_generator, init_generator
from jaxfault.neuralfuse.eopm import (EOPMConfig, init_train_state, make_eopm_step, make_optimizer,
                                      reference_step_grads, train_seeds)
from jaxfault.core.batching import parse_strategy


def _time(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of `repeats` further calls) in seconds."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m bench.eopm", description=__doc__)
    p.add_argument("--model", default="lenet")
    p.add_argument("--generator", default="UNetS")
    p.add_argument("--ns", default="1,10,32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--strategies", default="auto", help="comma-separated strategies for (a): auto,map,vmap,map:B")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-reference-above", type=int, default=1000, help="skip (b) for N above this")
    p.add_argument("--ber", type=float, default=0.01)
    p.add_argument("--out", default="runs/bench/eopm.json")
    args = p.parse_args(argv)
    ns = [int(n) for n in parse_float_list(args.ns, "--ns")]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        parse_strategy(s)

    shape = (28, 28, 1)
    model = create_model(args.model, 10, 8)
    root = jax.random.key(0)
    base = init_variables(model, stream(root, "base"), shape)
    gen = create_generator(args.generator)
    gv = init_generator(gen, stream(root, "generator"), shape)
    x = jax.random.uniform(stream(root, "images"), (args.batch_size, *shape), minval=-1.0, maxval=1.0)
    y = jax.random.randint(stream(root, "labels"), (args.batch_size,), 0, 10)
    step_key = stream(root, "step")
    opt = make_optimizer(1e-3, 1000)
    state = init_train_state(gv, opt)
    print(f"EOPM step timing: {args.model} (QAT 8-bit) + {args.generator}, batch {args.batch_size}, BER {args.ber}, "
          f"backend {jax.default_backend()} ({jax.device_count()} device(s), {platform.processor() or platform.machine()})")
    rows = []
    for n in ns:
        row = {"n_models": n}
        for s in strategies:
            cfg = EOPMConfig(ber=args.ber, n_models=n, strategy=s)
            step = make_eopm_step(gen, model, cfg, opt)
            first, med = _time(lambda: step(state, base, x, y, step_key)[0]["params"], args.repeats)
            row[f"project_{s}_s"] = med
            row[f"project_{s}_first_call_s"] = first
        if n <= args.skip_reference_above:
            cfg = EOPMConfig(ber=args.ber, n_models=n, strategy="map")
            ref = reference_step_grads(gen, model, cfg)
            update = jax.jit(lambda g, st: opt.update(g, st["opt_state"], st["params"]))
            seeds = train_seeds(step_key, n)

            def ref_step():
                (_, _), grads = ref(state["params"], state["batch_stats"], base, x, y, seeds)
                return update(grads, state)[0]

            first, med = _time(ref_step, max(1, args.repeats if n <= 10 else 1))
            row["reference_s"] = med
            row["reference_first_call_s"] = first
        rows.append(row)
        msg = "  ".join(f"(a) {s}: {row[f'project_{s}_s']:.3f} s" for s in strategies)
        if "reference_s" in row:
            best = min(row[f"project_{s}_s"] for s in strategies)
            msg += f"  (b) reference loop: {row['reference_s']:.3f} s  speed-up {row['reference_s'] / best:.2f}x"
        print(f"N={n:3d}  {msg}", flush=True)
    by_n = {r["n_models"]: r for r in rows}
    summary = {}
    if 10 in by_n and 32 in by_n:
        for s in strategies:
            summary[f"a32_over_a10_{s}"] = by_n[32][f"project_{s}_s"] / by_n[10][f"project_{s}_s"]
            print(f"(a) {s}: time at N=32 / time at N=10 = {summary[f'a32_over_a10_{s}']:.2f} (target < 3)")
    if 10 in by_n and "reference_s" in by_n[10]:
        for s in strategies:
            summary[f"speedup_n10_{s}"] = by_n[10]["reference_s"] / by_n[10][f"project_{s}_s"]
            print(f"(b)/(a) {s} at N=10 = {summary[f'speedup_n10_{s}']:.2f}x (target >= 3)")
    atomic_write_json(args.out, {"model": args.model, "generator": args.generator, "batch_size": args.batch_size,
                                 "ber": args.ber, "backend": jax.default_backend(), "rows": rows, "summary": summary})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
