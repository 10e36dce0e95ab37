"""One plan run from its validated plan: the outputs checked, the grid said, every configuration
evaluated (resuming what a killed run wrote to results.jsonl), and plan.json, plan.md and
plan.png written. The library behind ``python -m eval.plan``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import atomic_write_json, atomic_write_text, check_output_folder
from jaxfault.plan import run_plan
from jaxfault.plan.config import active_stages, check_call_memory
from jaxfault.plan.stages import expand
from jaxfault.plan.report import format_table, knob_text, plot_report, summary_lines, target_value

OUTPUTS = ("plan.json", "plan.md", "plan.png")


def run_plan_to(plan: dict, *, overwrite: bool = False, dry_run: bool = False,
                log: Callable[[str], None] = print) -> dict | None:
    """Run `plan` (jaxfault.plan.load_plan's result) into its output folder.

    Args:
      plan: the validated plan; its "out" is the folder written.
      overwrite: replace an earlier plan.json/.md/.png there (results.jsonl is always resumed).
      dry_run: check and say the grid, run nothing, write nothing.
      log: where the grid line, the Pareto table and the summary go.
    Returns:
      The report (None for a dry run). An unreachable target is a one-line JaxfaultError naming
      the best configuration found, raised after the outputs are written.
    """
    out = Path(plan["out"])
    (results,) = check_output_folder(out, ["results.jsonl"], overwrite=True, flag="`out`")   # resumed
    check_output_folder(out, OUTPUTS, overwrite=overwrite, flag="`out`")
    stages = active_stages(plan)
    configs = expand(plan, stages)
    check_call_memory(plan)
    programs = len({c.program_key for c in configs})
    log(f"plan: {len(configs)} configurations of {', '.join(stages)} ({programs} program group(s)) x "
        f"{plan['trials']} trials -> {out}")
    if dry_run:
        log("dry run: nothing run, nothing written")
        return None
    report = run_plan(plan, results_path=results, log=log, configs=configs)
    atomic_write_json(out / "plan.json", {"plan": plan, **report})
    atomic_write_text(out / "plan.md", "\n".join(summary_lines(report)) + "\n\n" + format_table(report))
    plot_report(report, out / "plan.png")
    log(format_table(report, only_front=True).rstrip("\n"))
    for line in summary_lines(report):
        log(line)
    log(f"{len(configs)} configurations in {report['seconds']:.1f} s, {report['compiled_programs']} program(s) "
        f"compiled; wrote {out / 'plan.json'}, {out / 'plan.md'}, {out / 'plan.png'}")
    if not report["reachable"]:
        b = report["configurations"][report["best"]]
        raise JaxfaultError(f"target unreachable ({report['target']['rule']}); best configuration found: "
                            f"{knob_text(b['knobs'])} with {target_value(report, b)}")
    return report
