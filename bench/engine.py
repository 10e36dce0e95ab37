"""The engine against the bare-arithmetic floor, faulty instances per second per method, and the
arithmetic dtype policy: python -m bench.engine [--instances 10] [--limit N]

For the cached default LeNet on the test images, per method (fault model and rate):

* ``floor``: one jitted ``lax.map`` of the evaluation over T copies of the clean prepared
  variables (the same model, batches and dtype; no fault drawn, nothing skipped), warm;
* ``full``: ``evaluate(..., reuse=False)``, warm (every trial's forward pass run whole);
* ``engine``: ``evaluate`` as users call it, first call (compilation and clean pass included)
  and warm, with its trials per route.

Faulty instances per second are T / seconds. Then HBM faults under Sparrow evaluated in bf16 (the
reference's arithmetic, the default) and with ``compute_dtype="float32"``: warm seconds and the
mean top-1 difference with its 95 % interval (paired over the same trials). Prints ``uptime``.
"""
from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def floor_seconds(model, variables, images, labels, fm, instances: int) -> float:
    """Warm seconds of the bare evaluation of `instances` copies of the prepared variables."""
    import jax
    import jax.numpy as jnp

    from jaxfault import engine
    from jaxfault.core import tasks

    eval_model, prepared, x = engine.prepare(model, variables, images, fm)
    y = jnp.asarray(labels)
    metric = tasks.make_metric_fn(eval_model, batch_size=1000, topk=(1,))
    stacked = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (instances,) + a.shape), prepared)
    run = jax.jit(lambda vs: jax.lax.map(lambda v: metric(v, x, y), vs))
    with engine.precision_scope("highest"):
        jax.block_until_ready(run(stacked))
        t0 = time.perf_counter()
        jax.block_until_ready(run(stacked))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=10, help="faulty instances per method (default: 10)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only (default: all)")
    a = ap.parse_args(argv)
    import jax

    import jaxfault
    from jaxfault.training.zoo import load_classifier_and_data
    from jaxfault.engine import summarize

    print(_uptime())
    _, model, variables, images, labels, _ = load_classifier_and_data(None, a.limit, log=lambda *x: None)
    T = a.instances
    keys = jax.random.split(jax.random.key(0), T)
    print(f"LeNet5, {len(labels)} test images, {T} faulty instances per method, backend {jax.default_backend()}")
    methods = [("bit flips fp32, BER 1e-4", jaxfault.bit_flips(), 1e-4, {}),
               ("HBM sparrow bf16, BER 1e-3", jaxfault.hbm_faults(scheme="sparrow"), 1e-3, {}),
               ("HBM none bf16, BER 1e-3", jaxfault.hbm_faults(scheme="none"), 1e-3, {}),
               ("HBM sparrow, fp32 compute, BER 1e-3", jaxfault.hbm_faults(scheme="sparrow"), 1e-3,
                {"compute_dtype": "float32"})]
    results = {}
    for name, fm, ber, kw in methods:
        floor_fm = fm.with_rate_bound(ber)
        if kw:
            from jaxfault.faults.fault_models import InDtype

            floor_fm = InDtype(floor_fm, kw["compute_dtype"])
        floor = floor_seconds(model, variables, images, labels, floor_fm, T)
        first = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, reuse=True, **kw)
        warm = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, reuse=True, **kw)
        full = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, reuse=False, **kw)
        full = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, reuse=False, **kw)
        assert np.array_equal(warm.accuracy, full.accuracy)
        results[name] = warm
        print(f"{name:38s} floor {floor:6.2f} s ({T / floor:5.2f} inst/s) | full {full.seconds:6.2f} s "
              f"({T / full.seconds:5.2f} inst/s, {full.seconds / floor:.2f}x floor) | engine warm {warm.seconds:6.2f} s "
              f"({T / warm.seconds:5.2f} inst/s, {warm.seconds / floor:.2f}x floor), first call {first.seconds:6.2f} s; "
              f"routes {warm.work}")
    bf, f32 = results["HBM sparrow bf16, BER 1e-3"], results["HBM sparrow, fp32 compute, BER 1e-3"]
    d = summarize(100 * (f32.accuracy[0] - bf.accuracy[0]))
    print(f"compute dtype, HBM sparrow BER 1e-3, {T} paired trials: bf16 top-1 {100 * bf.accuracy.mean():.2f} %, "
          f"fp32 {100 * f32.accuracy.mean():.2f} %, difference {d['mean']:+.3f} +- {d['ci95']:.3f} points (95 % CI); "
          f"warm {bf.seconds:.2f} s vs {f32.seconds:.2f} s ({bf.seconds / f32.seconds:.2f}x)")
    print(_uptime())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
