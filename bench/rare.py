"""Rare faults: stratified estimation vs plain Monte Carlo on the default LeNet, scheme none.

    python -m bench.rare [--limit 2000] [--half-width 2e-4] [--plain-trials 200] [--trials 5000]
                         [--out runs/bench/rare.json]

The model and fault model are the main job's (eval.sparrow): the cached default LeNet, its
kernels as bf16 words with no protection, stuck-at faults with a 0->1 share of 0.01. The
stratification class is the exponent MSB (bit 30) stuck at 1: for a bf16 weight below 2 in
magnitude that fault multiplies it by 2^128, the one single-cell fault that collapses the model,
so the strata separate the collapsed trials from the rest (docs/rare.md).

(a) BER 1e-3: the stratified estimate (``--a-trials`` main-phase trials) and plain Monte Carlo
(``--plain-trials`` trials), both with 95 % intervals, and whether the intervals overlap.
(b) BER 1e-7, 1e-6, 1e-5: the stratified estimator run to ``--half-width`` w, the same stated
half-width at every BER; the forward passes plain Monte Carlo needs for that half-width,
n = (z sd / w)^2 (z the normal 97.5 % quantile), with sd its per-trial standard
deviation (i) measured on a plain pilot of ``--plain-pilot`` trials and (ii) estimated from the
strata by the law of total variance (sum_k P(k) (s_k^2 + (m_k - mean)^2)), which sees the
collapsed trials at their exact probability where a short plain pilot usually sees none. The
ratio uses (ii) at the stated w, and the stratified run's passes count its pilot and allocation
round. Per stratum it prints P(k), the pilot's sd, the sd the main phase was allocated by, and
the main-phase trials n_k. A forward pass is one evaluation of the model on the evaluated test
images.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jaxfault import engine
from jaxfault.experiment import rare
from jaxfault.cli import ArgumentParser, positive_int, run_main
from jaxfault.training.zoo import load_classifier_and_data
from jaxfault.ecc.hbm import HBMFaults
from jaxfault.core.io import atomic_write_json

CLASS_POSITIONS = (30,)
CLASS_DIRECTION = "0->1"
METRIC_RANGE = (0.0, 1.0)           # top-1 accuracy: the range the unsampled tail may take
REFERENCE_TAIL = 1e-6               # the strata a reference estimate of plain's spread samples


def plain_sd_from_strata(e: rare.StratifiedEstimate) -> float:
    """Per-trial sd of plain Monte Carlo implied by the strata (law of total variance)."""
    w = np.asarray(e.weights)
    m = np.asarray(e.means)
    s = np.asarray(e.sds)
    mu = float(np.sum(w * m) / np.sum(w))
    return math.sqrt(float(np.sum(w * (s ** 2 + (m - mu) ** 2)) / np.sum(w)))


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def fmt(lo, mid, hi) -> str:
    return f"{100 * mid:.4f} % [{100 * lo:.4f}, {100 * hi:.4f}]"


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m bench.rare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=positive_int, default=2000, help="test images evaluated (default: 2000)")
    ap.add_argument("--half-width", type=positive_float, default=2e-4, help="target half-width of part (b) (default: 2e-4)")
    ap.add_argument("--plain-trials", type=positive_int, default=60, help="plain trials of part (a) (default: 60)")
    ap.add_argument("--a-trials", type=positive_int, default=48,
                    help="stratified main-phase trials of part (a) (default: 48)")
    ap.add_argument("--plain-pilot", type=positive_int, default=16, help="plain pilot trials of part (b) (default: 16)")
    ap.add_argument("--trials", type=positive_int, default=600, help="most stratified main-phase trials (default: 600)")
    ap.add_argument("--ref-trials", type=positive_int, default=48,
                    help="main-phase trials of the reference estimate of plain's spread, where the estimate "
                         "bounds strata it does not sample (default: 48)")
    ap.add_argument("--parts", choices=("ab", "a", "b"), default="ab", help="which parts to run (default: ab)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/rare.json")
    a = ap.parse_args(argv)
    _, model, variables, x, y, _ = load_classifier_and_data(None, a.limit, log=print)
    fm = HBMFaults(scheme="none", zero_to_one=0.01)
    key = jax.random.key(a.seed)
    report = {"test_images": int(len(y)), "backend": jax.default_backend(), "class_positions": list(CLASS_POSITIONS),
              "class_direction": CLASS_DIRECTION, "zero_to_one": fm.zero_to_one, "half_width": a.half_width}
    steps = 2 * ("a" in a.parts) + 9 * ("b" in a.parts)
    t0 = time.perf_counter()
    done = [0]

    def tick(what):
        done[0] += 1
        el = time.perf_counter() - t0
        print(f"[{done[0]}/{steps}] {what} ({el:.0f} s elapsed, ETA {el / done[0] * (steps - done[0]):.0f} s)",
              flush=True)

    if "a" in a.parts:
        report["a"] = part_a(a, model, variables, x, y, fm, key, tick)
    if "b" in a.parts:
        report["b"] = part_b(a, model, variables, x, y, fm, key, tick)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, json.loads(json.dumps(report, default=float)))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def part_a(a, model, variables, x, y, fm, key, tick) -> dict:
    """BER 1e-3: plain Monte Carlo and the stratified estimate, and whether their intervals overlap."""
    ber = 1e-3
    pm = engine.evaluate(model, variables, x, y, fm, [ber], jax.random.split(jax.random.fold_in(key, 1), a.plain_trials))
    plain = rare.plain_estimate(pm.accuracy[0])
    tick(f"plain Monte Carlo at BER {ber:g}")
    st = rare.evaluate_stratified(model, variables, x, y, fm, ber, jax.random.fold_in(key, 2), trials=a.a_trials, pilot=4,
                                  positions=CLASS_POSITIONS, direction=CLASS_DIRECTION)
    e = st.estimate
    tick(f"stratified at BER {ber:g}")
    overlap = max(plain["lo"], e.lo) <= min(plain["hi"], e.hi)
    print(f"(a) BER {ber:g}, {len(y)} images, scheme none, 95 % intervals:")
    print(f"    plain      {fmt(plain['lo'], plain['mean'], plain['hi'])}  ({plain['trials']} trials)")
    print(f"    stratified {fmt(e.lo, e.mean, e.hi)}  ({e.passes} passes, {len(e.k)} strata, "
          f"{st.expected_class_faults:.3f} class faults per trial)")
    print(f"    intervals overlap: {'yes' if overlap else 'NO'}")
    print("    strata k / P(k) / pilot sd / plan sd / main trials / mean / sd: " + "; ".join(
        f"{k} / {w:.3g} / {ps:.3g} / {qs:.3g} / {n} / {100 * m:.2f} % / {sd:.3g}"
        for k, w, ps, qs, n, m, sd in zip(e.k, e.weights, e.pilot_sds, e.plan_sds, e.trials, e.means, e.sds)))
    return {"ber": ber, "plain": plain, "stratified": st.as_dict(), "overlap": overlap}


def part_b(a, model, variables, x, y, fm, key, tick) -> list:
    """BER 1e-7, 1e-6, 1e-5: passes of the stratified estimator to the half-width vs plain's."""
    rows = []
    for i, ber in enumerate((1e-7, 1e-6, 1e-5)):
        pm = engine.evaluate(model, variables, x, y, fm, [ber],
                             jax.random.split(jax.random.fold_in(key, 10 + i), a.plain_pilot))
        pilot = rare.plain_estimate(pm.accuracy[0])
        tick(f"plain pilot at BER {ber:g}")
        st = rare.evaluate_stratified(model, variables, x, y, fm, ber, jax.random.fold_in(key, 20 + i),
                                      trials=a.trials, pilot=4, half_width=a.half_width, positions=CLASS_POSITIONS,
                                      direction=CLASS_DIRECTION)
        e = st.estimate
        tick(f"stratified at BER {ber:g}")
        sd_source = "the estimate's strata"
        sd_own = plain_sd_from_strata(e)
        if e.tail * (METRIC_RANGE[1] - METRIC_RANGE[0]) ** 2 > 0.1 * sd_own ** 2:
            # the strata the estimate bounded without sampling them (rare.target_tail) could hold more
            # than a tenth of plain Monte Carlo's variance (at most P(K > k_max) x range^2), so its own
            # strata do not show plain's spread: take sigma_plain from a reference estimate that samples
            # every stratum above REFERENCE_TAIL (its passes are not the estimator's cost)
            ref = rare.evaluate_stratified(model, variables, x, y, fm, ber, jax.random.fold_in(key, 30 + i),
                                           trials=a.ref_trials, pilot=4, tail=REFERENCE_TAIL,
                                           positions=CLASS_POSITIONS, direction=CLASS_DIRECTION)
            sd_strata = plain_sd_from_strata(ref.estimate)
            sd_source = f"a reference estimate ({ref.estimate.passes} passes, every stratum above {REFERENCE_TAIL:g})"
            tick(f"reference strata at BER {ber:g}")
        else:
            sd_strata = sd_own
            tick(f"(no reference needed at BER {ber:g})")
        w = a.half_width
        n_pilot = rare.plain_trials_needed(pilot["sd"], w) if pilot["sd"] > 0 else 0.0
        n_strata = rare.plain_trials_needed(sd_strata, w)
        row = {"ber": ber, "plain_pilot": pilot, "stratified": st.as_dict(), "plain_sd_from_strata": sd_strata,
               "plain_sd_source": sd_source,
               "stated_half_width": w, "reached": e.half_width <= w,
               "plain_passes_needed_pilot_sd": n_pilot, "plain_passes_needed_strata_sd": n_strata,
               "stratified_passes": e.passes, "ratio": n_strata / e.passes,
               "agree": max(pilot["lo"], e.lo) <= min(pilot["hi"], e.hi)}
        rows.append(row)
    print(f"(b) stated half-width {a.half_width:g} ({100 * a.half_width:.3g} points) at every BER, {len(y)} images, "
          f"scheme none:")
    print("    BER     stratified (95 %)                        half-width  passes (engine)  plain pilot (95 %)  "
          "plain sd (pilot / strata)  plain passes needed for the stated width (pilot sd / strata sd)  ratio")
    for r in rows:
        e = r["stratified"]["estimate"]
        p = r["plain_pilot"]
        print(f"    {r['ber']:.0e}  {fmt(e['lo'], e['mean'], e['hi'])}  {e['half_width']:.2e} "
              f"({'reached' if r['reached'] else 'MISSED'})  {e['passes']:5d} ({r['stratified']['forward_passes']})  "
              f"{fmt(p['lo'], p['mean'], p['hi'])} ({p['trials']})  {p['sd']:.2e} / {r['plain_sd_from_strata']:.2e}  "
              f"{r['plain_passes_needed_pilot_sd']:.0f} / {r['plain_passes_needed_strata_sd']:.0f}  "
              f"{r['ratio']:.0f}x  {'>= 50x' if r['ratio'] >= 50 and r['reached'] else 'not >= 50x'}")
        print("      strata k: P(k), pilot sd, plan sd, main trials n_k, mean, sd: " + "; ".join(
            f"{k}: {w_:.3g}, {ps:.3g}, {qs:.3g}, {n}, {100 * m:.2f} %, {sd:.3g}"
            for k, w_, ps, qs, n, m, sd in zip(e["k"], e["weights"], e["pilot_sds"], e["plan_sds"], e["trials"],
                                               e["means"], e["sds"]))
              + f"; unsampled tail P(K > k_max) {e['tail']:.3g}; plain sd from {r['plain_sd_source']}")
    return rows


if __name__ == "__main__":
    run_main(main)
