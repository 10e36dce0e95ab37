"""Least-energy protection plan at a target accuracy or perplexity (HBM refresh + ECC, SRAM voltage + NeuralFuse, CiM write-verify).

    python -m eval.plan PLAN.json [--output DIR] [--trials N] [--dry-run] [--overwrite]

Writes DIR/results.jsonl (one row per configuration; a killed run resumes with the same
command), DIR/plan.json (every configuration, the Pareto fronts, the chosen one), DIR/plan.md
(table) and DIR/plan.png (fronts, target and choice). An unreachable target is reported on one
line naming the best configuration found, after the outputs are written, with exit code 2.
Plan format and worked example: docs/plan.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxfault.cli import ArgumentParser, positive_int, run_main
from jaxfault.errors import JaxfaultError
from jaxfault.io import atomic_write_json, atomic_write_text, check_output_path
from jaxfault.plan import active_stages, expand, load_plan, run_plan
from jaxfault.plan.config import check_call_memory
from jaxfault.plan.report import format_table, knob_text, plot_report, summary_lines, target_value

OUTPUTS = ("plan.json", "plan.md", "plan.png")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="plan JSON (format: docs/plan.md)")
    p.add_argument("--output", default=None, help="output folder, overriding the plan's (default: the plan's)")
    p.add_argument("--trials", type=positive_int, default=None, help="trials per configuration, overriding the plan's (default: the plan's)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the grid, run nothing, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace earlier plan.json/.md/.png in the folder (default: refuse)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    plan = load_plan(a.plan, {"output": a.output, "trials": a.trials})
    out = Path(plan["output"])
    results = check_output_path(out / "results.jsonl", overwrite=True, flag="output")
    for name in OUTPUTS:
        check_output_path(out / name, overwrite=a.overwrite, flag="output")
    stages = active_stages(plan)
    configs = expand(plan, stages)
    check_call_memory(plan)
    programs = len({c.program_key for c in configs})
    print(f"plan: {len(configs)} configurations of {', '.join(stages)} ({programs} program group(s)) x "
          f"{plan['trials']} trials -> {out}")
    if a.dry_run:
        print("dry run: nothing run, nothing written")
        return 0
    report = run_plan(plan, results_path=results)
    atomic_write_json(out / "plan.json", {"plan": plan, **report})
    atomic_write_text(out / "plan.md", "\n".join(summary_lines(report)) + "\n\n" + format_table(report))
    plot_report(report, out / "plan.png")
    print(format_table(report, only_front=True), end="")
    for line in summary_lines(report):
        print(line)
    print(f"{len(configs)} configurations in {report['seconds']:.1f} s, {report['compiled_programs']} program(s) "
          f"compiled; wrote {out / 'plan.json'}, {out / 'plan.md'}, {out / 'plan.png'}")
    if not report["reachable"]:
        b = report["configurations"][report["best"]]
        raise JaxfaultError(f"target unreachable ({report['target']['rule']}); best configuration found: "
                            f"{knob_text(b['knobs'])} with {target_value(report, b)}")
    return 0


if __name__ == "__main__":
    run_main(main)
