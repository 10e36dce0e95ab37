"""Throughput of Sparrow ECC: encode, fault sampling + injection, decode, whole pipeline.

    python -m bench.sparrow [--sizes 1e6,2.5e7] [--ber 1e-3] [--zero-to-one 0.01] [--block-size 64]
        [--repeats 3] [--out FILE.json]

For each size (1e6 and 2.5e7 weights, the latter ResNet-50 sized) it prints weights/s of each
step and of the jitted pipeline (encode -> stuck-at faults -> decode), the same for a plain
vectorised numpy implementation of the same steps (checked bit-equal to the JAX encoder/decoder),
the JAX/numpy speed ratio, and peak memory relative to the weights' own bytes (fp32): XLA's
buffer peak of the pipeline (arguments + outputs + temporaries, from the compiled executable) and
the process's peak-RSS growth while compiling and running the pipeline (beyond the inputs). Each size runs in a fresh subprocess so peak RSS is per size.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from jaxfault.core.bits import BF16_MASK
from jaxfault.cli import ArgumentParser, run_main
from jaxfault.core.config import parse_float_list
from jaxfault.core.errors import check, check_probability


# ------------------------------------------ numpy baseline ------------------------------------------
def np_encode(w: np.ndarray, B: int) -> np.ndarray:
    w = (w & BF16_MASK).reshape(-1, B)
    e = ((w >> 23) & 0xFF).astype(np.int32)
    max_e = e.max(1, keepdims=True)
    min_e = np.where(e != 0, e, 255).min(1, keepdims=True)
    wide = np.maximum(max_e - min_e, 0) >= 16
    w = np.where(wide, w & np.uint32(0xFFFE0000), w)
    d = max_e - e
    small = d >= 32
    w = np.where(small, (w & np.uint32(0x80000000)) | ((max_e - 31).astype(np.uint32) << 23), w)
    d = np.where(small, 31, d)
    clamp = ~wide & (d >= 16)
    w = np.where(clamp, w & np.uint32(0x80000000), w)
    du = np.where(clamp, 15, d).astype(np.uint32)
    s = w >> 31
    out = (s << 31) | (s << 30) | (s << 29)
    out |= np.where(wide, (du << 24) | (((w >> 17) & 0x3F) << 15),
                    (du << 25) | (((w >> 22) & 1) << 24) | (((w >> 16) & 0x3F) << 15)).astype(np.uint32)
    b = [(out >> k) & 1 for k in (28, 27, 26, 25)]
    out |= ((b[0] ^ b[1] ^ b[3]) << 23) | ((b[0] ^ b[2] ^ b[3]) << 22) | ((b[1] ^ b[2] ^ b[3]) << 21)
    pos = np.arange(B)
    meta = np.where(pos >= B - 8, wide.astype(np.uint32), (max_e.astype(np.uint32) >> (7 - pos % 8).astype(np.uint32)) & 1)
    out |= meta.astype(np.uint32) << 14
    if B == 16:
        out |= ((max_e.astype(np.uint32) >> (7 - pos % 8).astype(np.uint32)) & 1) << 13
    return out.reshape(-1)


def np_decode(c: np.ndarray, B: int) -> np.ndarray:
    c = c.reshape(-1, B)
    bit = lambda k: (c >> k) & 1  # noqa: E731
    b0, b1, b2, b3, p1, p2, p3 = (bit(k) for k in (28, 27, 26, 25, 23, 22, 21))
    s = (b0 ^ b1 ^ b3 ^ p1) | ((b0 ^ b2 ^ b3 ^ p2) << 1) | ((b1 ^ b2 ^ b3 ^ p3) << 2)
    b0 = b0 ^ (s == 3)
    b1 = b1 ^ (s == 5)
    b2 = b2 ^ (s == 6)
    b3 = b3 ^ (s == 7)
    m14 = bit(14)
    if B == 16:
        m13 = bit(13)
        copies = np.stack([m14[:, :8], m13[:, :8], m13[:, 8:]], 1)
    else:
        copies = m14[:, :B - 8].reshape(-1, (B - 8) // 8, 8)
    mb = (copies.sum(1) * 2 > copies.shape[1]).astype(np.uint32)
    max_e = (mb << np.arange(7, -1, -1, dtype=np.uint32)).sum(1, keepdims=True).astype(np.uint32)
    wide = m14[:, B - 8:B - 1].sum(1, keepdims=True) >= 4
    sign = ((bit(31) + bit(30) + bit(29)) >= 2).astype(np.uint32)
    d4 = ((b0 << 3) | (b1 << 2) | (b2 << 1) | b3).astype(np.uint32)
    d = np.where(wide, (d4 << 1) | bit(24), d4)
    m6 = (c >> 15) & 0x3F
    mant = np.where(wide, m6 << 17, (bit(24) << 22) | (m6 << 16))
    return (((sign << 31) | ((max_e - d) << 23) | mant) & BF16_MASK).astype(np.uint32).reshape(-1)


def np_inject(rng, w: np.ndarray, ber: float, q: float, mask: int) -> np.ndarray:
    """Same method as jaxfault.faults: geometric gaps over the stored cells, exact 0->1 threshold."""
    pos_table = np.array([b for b in range(31, -1, -1) if (mask >> b) & 1], np.uint32)
    S, L = pos_table.size, w.size * pos_table.size
    k = int(L * ber + 10 * np.sqrt(L * ber) + 32)
    cells, start = [], 0
    while start < L:
        p = start + np.cumsum(rng.geometric(ber, k).astype(np.int64)) - 1
        cells.append(p[p < L])
        start = int(p[-1]) + 1
    c = np.concatenate(cells)
    m = np.uint32(1) << pos_table[c % S]
    is01 = rng.random(c.size) < q
    out = w.copy()
    word = c // S
    m10 = np.zeros_like(w)
    m01 = np.zeros_like(w)
    np.bitwise_or.at(m10, word[~is01], m[~is01])
    np.bitwise_or.at(m01, word[is01], m[is01])
    return (out & ~m10) | m01


# ------------------------------------------ measurement ------------------------------------------
def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(n: int, ber: float, q: float, B: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxfault import faults
    from jaxfault.ecc import sparrow

    jax.block_until_ready(jnp.ones(8) + 1)
    rss0 = _rss_mb()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 0.05).astype(np.float32)
    host = x.view(np.uint32)
    mask = sparrow.stored_mask(B)
    w = jnp.asarray(host)
    key = jax.random.key(0)
    enc = jax.jit(lambda w: sparrow.encode_blocks(w, B))
    inj = jax.jit(lambda k, w: faults.inject_stuck_at(k, w, ber, q, mask)[0])
    dec = jax.jit(lambda w: sparrow.decode_blocks(w, B))
    pipe = jax.jit(lambda k, w: sparrow.decode_blocks(faults.inject_stuck_at(k, sparrow.encode_blocks(w, B), ber, q, mask)[0], B))
    jax.block_until_ready(w)
    rss_inputs = _rss_mb()                  # peak so far: JAX runtime + host and device copies of the weights
    jax.block_until_ready(pipe(key, w))     # compile + first run of the whole pipeline
    jax.block_until_ready(pipe(key, w))
    rss_pipe = _rss_mb() - rss_inputs
    e = jax.block_until_ready(enc(w))
    f = jax.block_until_ready(inj(key, e))
    jax.block_until_ready(dec(f))
    ma = pipe.lower(key, w).compile().memory_analysis()
    xla_peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    t = {"encode": _best(lambda: jax.block_until_ready(enc(w)), repeats),
         "inject": _best(lambda: jax.block_until_ready(inj(key, e)), repeats),
         "decode": _best(lambda: jax.block_until_ready(dec(f)), repeats),
         "pipeline": _best(lambda: jax.block_until_ready(pipe(key, w)), repeats)}
    # numpy baseline, checked against JAX
    ne = np_encode(host, B)
    assert np.array_equal(ne, np.asarray(e)), "numpy encoder disagrees with jaxfault"
    nf = np_inject(np.random.default_rng(1), ne, ber, q, mask)
    nd = np_decode(nf, B)
    assert np.array_equal(np_decode(np.asarray(f), B), np.asarray(dec(f))), "numpy decoder disagrees with jaxfault"
    r = max(1, repeats - 1)
    tn = {"encode": _best(lambda: np_encode(host, B), r),
          "inject": _best(lambda: np_inject(np.random.default_rng(1), ne, ber, q, mask), r),
          "decode": _best(lambda: np_decode(nf, B), r)}
    tn["pipeline"] = _best(lambda: np_decode(np_inject(np.random.default_rng(1), np_encode(host, B), ber, q, mask), B), 1)
    del nd
    return {"n": n, "jax_seconds": t, "numpy_seconds": tn,
            "jax_weights_per_s": {k: n / v for k, v in t.items()},
            "numpy_weights_per_s": {k: n / v for k, v in tn.items()},
            "speedup_vs_numpy": {k: tn[k] / t[k] for k in t},
            "weight_bytes": 4 * n, "xla_peak_bytes": int(xla_peak), "xla_peak_x_weights": xla_peak / (4 * n),
            "rss_inputs_mb": rss_inputs - rss0, "rss_pipeline_growth_mb": rss_pipe,
            "rss_pipeline_growth_x_weights": rss_pipe * 2 ** 20 / (4 * n)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m bench.sparrow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,2.5e7")
    ap.add_argument("--ber", type=float, default=1e-3)
    ap.add_argument("--zero-to-one", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    ap.add_argument("--worker", type=int, default=None, help=argparse_hidden())
    a = ap.parse_args(argv)
    check_probability("--ber", a.ber)
    check_probability("--zero-to-one", a.zero_to_one)
    from jaxfault.ecc.sparrow import check_block_size

    check_block_size(a.block_size)
    check(a.repeats >= 1, f"--repeats must be >= 1, got {a.repeats}")
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.ber, a.zero_to_one, a.block_size, a.repeats)))
        return 0
    sizes = [int(s) for s in parse_float_list(a.sizes, "--sizes")]
    import os

    print(f"Sparrow B={a.block_size}, BER {a.ber:g}, 0->1 share {a.zero_to_one:g}, "
          f"{os.cpu_count()} CPUs, best of {a.repeats}")
    print(f"{'weights':>10} {'step':>9} {'jax w/s':>10} {'numpy w/s':>10} {'ratio':>7}")
    results = []
    for n in sizes:
        cmd = [sys.executable, "-m", "bench.sparrow", "--worker", str(n), "--ber", repr(a.ber),
               "--zero-to-one", repr(a.zero_to_one), "--block-size", str(a.block_size), "--repeats", str(a.repeats)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        r = json.loads(p.stdout.strip().splitlines()[-1])
        results.append(r)
        for k in ("encode", "inject", "decode", "pipeline"):
            print(f"{n:10.3g} {k:>9} {r['jax_weights_per_s'][k]:10.3g} {r['numpy_weights_per_s'][k]:10.3g} "
                  f"{r['speedup_vs_numpy'][k]:6.1f}x")
        print(f"{n:10.3g} peak memory: XLA buffers {r['xla_peak_bytes'] / 2 ** 20:.1f} MiB = "
              f"{r['xla_peak_x_weights']:.2f}x weight bytes; process peak RSS growth of the pipeline (compile "
              f"included) {r['rss_pipeline_growth_mb']:.1f} MiB = {r['rss_pipeline_growth_x_weights']:.2f}x", flush=True)
    if a.out:
        from jaxfault.core.io import atomic_write_json

        atomic_write_json(a.out, {"block_size": a.block_size, "ber": a.ber, "zero_to_one": a.zero_to_one,
                                  "results": results})
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    run_main(main)
