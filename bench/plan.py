"""Planner throughput: configurations per second and compiled programs of a plan.

    python -m bench.plan [--plan examples/plan_lenet.json] [--examples N] [--trials T] [--json OUT]

Evaluates every configuration of the plan (no results file: nothing is resumed) and prints the
wall time, configurations/s, (configuration, trial) pairs/s, the number of engine programs
compiled (one per ECC scheme of the plan, whatever the number of knob values), and how many
trials needed a forward pass (the others drew no fault that changed a weight and reuse their
group's fault-free accuracy).
"""
from __future__ import annotations

import time
from pathlib import Path

from jaxfault.cli import ArgumentParser, positive_int, run_main
from jaxfault.core.io import atomic_write_json, check_output_path
from jaxfault.plan import load_plan, run_plan

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m bench.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", default=str(ROOT / "examples" / "plan_lenet.json"), help="plan file (default: the worked example)")
    ap.add_argument("--examples", type=positive_int, default=None, help="evaluation images, overriding the plan's (default: the plan's)")
    ap.add_argument("--trials", type=positive_int, default=None, help="trials, overriding the plan's (default: the plan's)")
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file (default: none)")
    a = ap.parse_args(argv)
    if a.json:
        check_output_path(a.json, overwrite=True, flag="--json")
    plan = load_plan(a.plan, {"eval_examples": a.examples, "trials": a.trials})
    t0 = time.perf_counter()
    report = run_plan(plan, log=lambda s: None)
    wall = time.perf_counter() - t0
    cfgs = report["configurations"]
    n, T = len(cfgs), plan["trials"]
    forward = sum(c["forward_passes"] for c in cfgs)
    out = {"plan": a.plan, "configurations": n, "trials": T, "eval_examples": plan["eval_examples"],
           "wall_s": wall, "configurations_per_s": n / wall, "config_trials_per_s": n * T / wall,
           "compiled_programs": report["compiled_programs"], "forward_passes": forward,
           "skipped_trials": n * T - forward}
    print(f"{n} configurations x {T} trials on {plan['eval_examples']} images: {wall:.1f} s "
          f"({out['configurations_per_s']:.3g} configurations/s, {out['config_trials_per_s']:.3g} (configuration, trial)/s)")
    print(f"compiled programs: {out['compiled_programs']}; forward passes: {forward} of {n * T} trials "
          f"({100 * out['skipped_trials'] / (n * T):.1f} % skipped as fault-free)")
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    run_main(main)
