"""Peak memory and tokens/s of faulty trials of a GPT-2-small-sized language model.

    /usr/bin/time -v python -m bench.lm_memory [--trials 20] [--sequences 4] [--tokens 128] [--scheme sparrow]

A GPT-2 of Hugging Face's default size (12 layers, width 768, 12 heads, vocabulary 50257: 124M
parameters) with random weights, evaluated on random token windows under HBM stuck-at faults at
BER 1e-3 (bf16 words under the scheme), 20 trials. The trials run in chunks that fit the memory
budget (jaxfault.engine.memory; default half the device's memory): the clean model and the tokens are
held once, a chunk of trials holds one faulty copy each. Prints the budget, the per-trial and
shared bytes of XLA's memory analysis, the chunk, the wall time of the faulty evaluation and the
scored tokens per second; /usr/bin/time -v gives the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lm_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--scheme", default="sparrow")
    p.add_argument("--budget-gib", type=float, default=None, help="memory budget (default: half the device's memory)")
    a = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxfault
    from jaxfault.engine import memory
    from jaxfault.core import tasks
    from jaxfault.models import GPT2

    model = GPT2()
    t0 = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, a.tokens), jnp.int32))
    n = sum(int(x.size) for x in jax.tree_util.tree_leaves(variables))
    print(f"GPT-2 small, random weights: {n / 1e6:.1f}M parameters ({time.perf_counter() - t0:.0f} s to initialise)",
          flush=True)
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, model.vocab_size, size=(a.sequences, a.tokens + 1)).astype(np.int32)
    x, y = seqs[:, :-1], seqs[:, 1:]
    fm = jaxfault.hbm_faults(scheme=a.scheme)
    budget = int(a.budget_gib * 2**30) if a.budget_gib else memory.default_budget()
    t0 = time.perf_counter()
    per, shared = memory.evaluation_trial_memory(model, variables, x, y, fm, 1e-3, task=tasks.language_model())
    strategy = memory.bounded_strategy("auto", per, shared, budget, a.trials)
    print(f"budget {budget / 2**30:.2f} GiB; one trial {per / 2**30:.3f} GiB, shared {shared / 2**30:.3f} GiB "
          f"(XLA memory analysis, {time.perf_counter() - t0:.0f} s); strategy {strategy}", flush=True)
    keys = jax.random.split(jax.random.key(1), a.trials)
    res = jaxfault.evaluate(model, variables, x, y, fm, [1e-3], keys, task=tasks.language_model(), strategy=strategy)
    toks = a.trials * x.size
    print(f"{a.trials} trials x {x.size} tokens in {res.seconds:.1f} s (compilation included): "
          f"{toks / res.seconds:.1f} scored tokens/s; perplexity median "
          f"{float(np.median(res.metrics['perplexity'][0])):.1f}, clean {res.clean['perplexity']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
