"""Benchmark: AlexNet energy design points per second, vmapped in one jitted call (after
compilation), against a per-point Python loop over the jitted single-point estimator and against a plain-Python
scalar transcription of the model in docs/energy.md (as the reference script computes it).

Three ways are timed: jit(vmap(energy_core)) with the full per-layer breakdown, jit(vmap(...))
returning totals only, and total_energy_layer_major (the same formulas broadcast over a (layers,
points) array, no vmap). Design points vary every input: per-layer qw, qa (1..16), pw ([0, 0.9)), all five unit energies
and the PE-array size (rows 4..16, cols 8..20, traced).

  python -m bench.energy [--points 100000] [--loop-points 300] [--repeats 5] [--json FILE]
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from jaxfault.cli import ArgumentParser, run_main
from jaxfault.energy.core import Hardware, energy_core, total_energy_layer_major
from jaxfault.energy.layers import to_arrays
from jaxfault.energy.networks import get_network
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import atomic_write_json


def design_points(n: int, num_layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    qw = rng.integers(1, 17, (n, num_layers)).astype(f32)
    qa = rng.integers(1, 17, (n, num_layers)).astype(f32)
    pw = rng.uniform(0, 0.9, (n, num_layers)).astype(f32)
    hw = Hardware(
        rng.uniform(0.5, 2, n).astype(f32), rng.uniform(0.5, 2, n).astype(f32), rng.uniform(1, 4, n).astype(f32),
        rng.uniform(3, 12, n).astype(f32), rng.uniform(100, 400, n).astype(f32),
        rng.integers(4, 17, n).astype(np.int32), rng.integers(8, 21, n).astype(np.int32),
    )
    return qw, qa, pw, hw


def scalar_total(layers, qw, qa, pw, hw) -> float:
    """Plain-Python total (docs/energy.md) of one design point (square shapes), like the reference script:
    the fairest 'per-point Python loop' baseline (no JAX dispatch)."""
    mac, rf, noc, glb, dram, pe_r, pe_c = (float(v) for v in hw)
    pe_r, pe_c = int(pe_r), int(pe_c)
    tot = 0.0
    for l, bw, ba, p in zip(layers, qw, qa, pw):
        K, C, M = l.kernel[0], l.in_channels, l.out_channels
        keep, sw, sa = 1.0 - float(p), float(bw) / 16, float(ba) / 16
        if l.kind == "conv":
            I = l.input_size[0] + sum(l.padding[0])
            O = (I - K) // l.stride[0] + 1
            replic, fold = pe_r // K, -(-O // pe_c)
            macs = K * K * C * M * O * O * keep
            w = [K * K * C * M * keep] * 2 + [(O if replic >= fold else replic * pe_c) * K * K * C * M * keep, K * K * O * O * C * M * keep]
            a = [I * I * C, I * I * C if replic >= fold else I * I * C * M,
                 K * O * I * C * M if replic < fold else (replic // fold) * K * O * I * C, K * O * I * C * M]
            ps = [O * O * M, 2 * O * O * (C - 1) * M, (K - 1) * O * O * C * M, 2 * (K - 1) * K * O * O * C * M]
        else:
            blocks = pe_c * (pe_r // K)
            macs = K * K * C * M * keep
            w = [K * K * C * M * keep] * 4
            a = [K * K * C, K * K * C, K * K * blocks * C, K * K * M * C]
            ps = [M, 2 * (C - 1) * M, (K - 1) * C * M, 2 * (K - 1) * K * C * M]
        units = (dram, glb, noc, rf)
        tot += macs * mac * sw * sa + sw * sum(x * u for x, u in zip(w, units)) + sa * sum(x * u for x, u in zip(a + ps, units + units))
    return tot


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m bench.energy", description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--loop-points", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.points < 1 or args.loop_points < 1 or args.repeats < 1:
        raise JaxfaultError("--points, --loop-points and --repeats must be >= 1")
    layers = get_network("alexnet").layers
    la = to_arrays(layers)
    qw, qa, pw, hw = design_points(args.points, len(layers))

    full = jax.jit(jax.vmap(lambda a, b, c, h: energy_core(la, a, b, c, h)))
    totals = jax.jit(jax.vmap(lambda a, b, c, h: energy_core(la, a, b, c, h).total))
    batched = jax.jit(lambda a, b, c, h: total_energy_layer_major(la, a, b, c, h))
    dev = jax.device_put((qw, qa, pw, hw))
    t0 = time.perf_counter()
    for fn in (full, totals, batched):
        jax.block_until_ready(fn(*dev))
    compile_s = time.perf_counter() - t0
    t_full = _best_time(lambda: full(*dev), args.repeats)
    t_tot = _best_time(lambda: totals(*dev), args.repeats)
    t_bat = _best_time(lambda: batched(*dev), args.repeats)

    single = jax.jit(lambda a, b, c, h: energy_core(la, a, b, c, h).total)
    n_loop = min(args.loop_points, args.points)
    one = lambda i: single(qw[i], qa[i], pw[i], Hardware(*(f[i] for f in hw)))
    jax.block_until_ready(one(0))

    def loop():
        return [float(one(i)) for i in range(n_loop)]

    t_loop = _best_time(loop, max(1, min(args.repeats, 3)))
    loop_rate = n_loop / t_loop
    n_py = min(args.points, 10 * n_loop)
    hw_rows = [tuple(f[i] for f in hw) for i in range(n_py)]
    py = lambda: [scalar_total(layers, qw[i], qa[i], pw[i], hw_rows[i]) for i in range(n_py)]
    t_py = _best_time(py, max(1, min(args.repeats, 3)))
    py_rate = n_py / t_py
    # the vmapped result equals the loop (spot check)
    ref = np.asarray(loop())
    np.testing.assert_allclose(np.asarray(py()[:n_loop]), ref, rtol=1e-5)
    for fn in (totals, batched):
        np.testing.assert_allclose(np.asarray(fn(*dev)[:n_loop]), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(full(*dev).total[:n_loop]), ref, rtol=1e-5)

    res = {
        "network": "alexnet",
        "layers": len(layers),
        "points": args.points,
        "device": str(jax.devices()[0]),
        "compile_s": compile_s,
        "vmapped_full_breakdown_s": t_full,
        "vmapped_full_breakdown_points_per_s": args.points / t_full,
        "vmapped_totals_s": t_tot,
        "vmapped_totals_points_per_s": args.points / t_tot,
        "batched_layer_major_totals_s": t_bat,
        "batched_layer_major_totals_points_per_s": args.points / t_bat,
        "loop_points": n_loop,
        "loop_points_per_s": loop_rate,
        "python_scalar_points": n_py,
        "python_scalar_points_per_s": py_rate,
        "speedup_full_vs_python_scalar": args.points / t_full / py_rate,
        "speedup_full_vs_loop": args.points / t_full / loop_rate,
        "speedup_totals_vs_loop": args.points / t_tot / loop_rate,
        "speedup_batched_vs_loop": args.points / t_bat / loop_rate,
    }
    print(f"AlexNet ({len(layers)} layers), {args.points} design points on {res['device']} (compile {compile_s:.2f} s)")
    print(f"  vmapped, full per-layer breakdown: {t_full * 1e3:8.2f} ms  {res['vmapped_full_breakdown_points_per_s']:.3g} points/s")
    print(f"  vmapped, totals only:              {t_tot * 1e3:8.2f} ms  {res['vmapped_totals_points_per_s']:.3g} points/s")
    print(f"  batched layer-major, totals only:  {t_bat * 1e3:8.2f} ms  {res['batched_layer_major_totals_points_per_s']:.3g} points/s")
    print(f"  per-point Python loop ({n_loop} points): {loop_rate:.3g} points/s")
    print(f"  plain-Python scalar loop ({n_py} points, no JAX): {py_rate:.3g} points/s")
    print(f"  speedup vs loop: {res['speedup_full_vs_loop']:.0f}x (vmap full), {res['speedup_totals_vs_loop']:.0f}x (vmap totals), {res['speedup_batched_vs_loop']:.0f}x (batched totals); vmap full vs plain Python: {res['speedup_full_vs_python_scalar']:.0f}x")
    for k, lab in (("vmapped_full_breakdown", "vmap full"), ("vmapped_totals", "vmap totals"), ("batched_layer_major_totals", "batched totals")):
        print(f"  target >= 1e6 points/s, {lab}: {'met' if res[k + '_points_per_s'] >= 1e6 else 'NOT met'}")
    if args.json:
        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    run_main(main)
