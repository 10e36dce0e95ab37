"""Least-energy protection plan at a target accuracy or perplexity (HBM refresh + ECC, SRAM voltage + NeuralFuse, CiM write-verify).

    python -m eval.plan PLAN.json [--out DIR] [--trials N] [--dry-run] [--overwrite]

Writes DIR/results.jsonl (one row per configuration; a killed run resumes with the same
command), DIR/plan.json (every configuration, the Pareto fronts, the chosen one), DIR/plan.md
(table) and DIR/plan.png (fronts, target and choice). An unreachable target is reported on one
line naming the best configuration found, after the outputs are written, with exit code 2.
Plan format and worked example: docs/plan.md.
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import ArgumentParser, positive_int, run_main
from jaxfault.plan import load_plan
from jaxfault.plan.execute import run_plan_to


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="plan JSON (format: docs/plan.md)")
    p.add_argument("--out", default=None, help="output folder, overriding the plan's `out` (default: the plan's)")
    p.add_argument("--trials", type=positive_int, default=None, help="trials per configuration, overriding the plan's (default: the plan's)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the grid, run nothing, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace earlier plan.json/.md/.png in the folder (default: refuse)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run_plan_to(load_plan(a.plan, {"out": a.out, "trials": a.trials}), overwrite=a.overwrite, dry_run=a.dry_run)
    return 0


if __name__ == "__main__":
    run_main(main)
