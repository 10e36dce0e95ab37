"""Compile time of one EOPM training step per fault placement (independent vs memory_array).

For each placement: the jitted step of jaxfault.neuralfuse.eopm.make_eopm_step is lowered and
compiled (``jax.jit(...).lower(...).compile()``, wall time, the persistent compilation cache
off), and the size of its jaxpr and of its optimized HLO are printed, then the ratio of the
compile times (independent / memory_array). Weights are random (the numbers do not matter here).

    python -m bench.eopm_compile [--model lenet] [--generator UNetS] [--n-models 2] [--batch-size 8]
                                 [--strategy vmap] [--placements independent,memory_array] [--json FILE]

ResNet-18 (the issue's case; about a minute per placement on a 2-core CPU):
    python -m bench.eopm_compile --model resnet18 --n-models 10 --batch-size 128
"""
from __future__ import annotations

import platform
import re
import time

import jax
import jax.numpy as jnp

from jaxfault.cli import ArgumentParser, positive_int, run_main, strategy_flag
from jaxfault.core.io import atomic_write_json
from jaxfault.core.keys import stream
from jaxfault.models import create_model, init_variables
from jaxfault.models.generators import create_generator, init_generator
from jaxfault.neuralfuse.eopm import EOPMConfig, init_train_state, make_eopm_step, make_optimizer
from jaxfault.neuralfuse.faults import PLACEMENTS

INPUT_SHAPES = {"lenet": (28, 28, 1), "lenet-swim": (28, 28, 1), "convnet": (28, 28, 1)}
OPCODE = re.compile(r"([a-z][a-z0-9_\-]*)\(")


def hlo_ops(text: str) -> dict[str, int]:
    """Instruction counts by opcode in an HLO module's text."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        lhs, sep, rhs = line.partition(" = ")
        if not sep or lhs.lstrip().startswith(("HloModule", "//")):
            continue
        m = OPCODE.search(rhs)  # the first "name(" after the result type is the opcode
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, those of every sub-jaxpr (jit, while, cond, scan, custom_jvp) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += count_eqns(inner)
    return n


def measure(gen, model, gv, base, x, y, key, *, placement: str, n_models: int, strategy: str, ber: float) -> dict:
    """Trace, lower and compile one EOPM step; sizes and wall times."""
    cfg = EOPMConfig(ber=ber, n_models=n_models, strategy=strategy, placement=placement)
    opt = make_optimizer(1e-3, 1000)
    state = init_train_state(gv, opt)
    step = make_eopm_step(gen, model, cfg, opt)
    t = time.perf_counter()
    jaxpr = jax.make_jaxpr(step)(state, base, x, y, key)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    lowered = step.lower(state, base, x, y, key)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    ops = hlo_ops(compiled.as_text() or "")
    return {"placement": placement, "jaxpr_chars": len(str(jaxpr)), "jaxpr_eqns": count_eqns(jaxpr.jaxpr),
            "stablehlo_chars": len(lowered.as_text()), "hlo_ops": sum(ops.values()),
            "hlo_while": ops.get("while", 0), "hlo_scatter": ops.get("scatter", 0),
            "trace_s": trace_s, "lower_s": lower_s, "compile_s": compile_s}


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m bench.eopm_compile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet", help="classifier (QAT 8-bit)")
    p.add_argument("--generator", default="UNetS")
    p.add_argument("--n-models", type=positive_int, default=2, help="perturbed models per step (N)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--strategy", type=strategy_flag, default="vmap",
                   help="batching of the N models (vmap: what GPUs use under 'auto')")
    p.add_argument("--placements", default=",".join(PLACEMENTS), help="comma-separated placements")
    p.add_argument("--ber", type=float, default=0.01)
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file (default: none)")
    args = p.parse_args(argv)
    # a compile time measured from the persistent cache would be a load time
    jax.config.update("jax_enable_compilation_cache", False)
    placements = [s.strip() for s in args.placements.split(",") if s.strip()]
    for pl in placements:
        if pl not in PLACEMENTS:
            p.error(f"argument --placements: unknown placement {pl!r}; choose from {', '.join(PLACEMENTS)}")

    shape = INPUT_SHAPES.get(args.model, (32, 32, 3))
    root = jax.random.key(0)
    model = create_model(args.model, 10, 8)
    base = init_variables(model, stream(root, "base"), shape)
    gen = create_generator(args.generator)
    gv = init_generator(gen, stream(root, "generator"), shape)
    x = jax.random.uniform(stream(root, "images"), (args.batch_size, *shape), minval=-1.0, maxval=1.0)
    y = jax.random.randint(stream(root, "labels"), (args.batch_size,), 0, 10)
    key = stream(root, "step")
    n_kernels = sum(1 for path, leaf in jax.tree_util.tree_flatten_with_path(base["params"])[0]
                    if getattr(path[-1], "key", None) == "kernel" and jnp.ndim(leaf) >= 2)
    print(f"EOPM step compile time: {args.model} (QAT 8-bit, {n_kernels} kernels) + {args.generator}, "
          f"N = {args.n_models}, batch {args.batch_size}, strategy {args.strategy}, backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}, {platform.machine()}), jax {jax.__version__}", flush=True)
    rows = []
    for pl in placements:
        r = measure(gen, model, gv, base, x, y, key, placement=pl, n_models=args.n_models,
                    strategy=args.strategy, ber=args.ber)
        rows.append(r)
        print(f"  {pl:13s} compile {r['compile_s']:7.2f} s  (trace {r['trace_s']:.2f} s, lower {r['lower_s']:.2f} s)  "
              f"jaxpr {r['jaxpr_eqns']} eqns / {r['jaxpr_chars']} chars  HLO {r['hlo_ops']} ops "
              f"({r['hlo_while']} while, {r['hlo_scatter']} scatter)", flush=True)
    by = {r["placement"]: r for r in rows}
    summary = {}
    if "independent" in by and "memory_array" in by:
        summary["compile_ratio"] = by["independent"]["compile_s"] / by["memory_array"]["compile_s"]
        print(f"independent / memory_array compile time: {summary['compile_ratio']:.2f}x (target < 2)")
    if args.json:
        atomic_write_json(args.json, {"model": args.model, "generator": args.generator, "n_models": args.n_models,
                                      "batch_size": args.batch_size, "strategy": args.strategy,
                                      "backend": jax.default_backend(), "jax": jax.__version__, "rows": rows,
                                      "summary": summary})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
