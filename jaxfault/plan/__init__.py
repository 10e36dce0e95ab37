"""The protection planner: the least-energy mix of protections that keeps a target accuracy or perplexity.

    from jaxfault.plan import load_plan, run_plan
    report = run_plan(load_plan("examples/plan_lenet.json"), results_path="runs/plan/results.jsonl")
    report["configurations"][report["chosen"]]

Each stage of the memory hierarchy is driven by a physical knob (HBM refresh interval and ECC
scheme, SRAM supply voltage with or without a NeuralFuse generator, CiM write-verify fraction);
the stages are registered (``stages``: a registered fault model with a knob relation is a stage,
``register_plan_stage``); the knobs give the rates of the composed fault model (``knobs``), the
energy per inference (``energy``), and every configuration is evaluated with the engine
(``planner``), few compiled programs for many configurations: a classifier scored by top-1
accuracy on test images, a language model by perplexity on validation windows. ``report`` finds the Pareto fronts and the cheapest
configuration meeting the target. Format and worked example: docs/plan.md.
"""
from __future__ import annotations

import time
from typing import Callable

from jaxfault.plan.config import active_stages, load_plan, validate_plan
from jaxfault.plan.knobs import retention_ber, voltage_ber
from jaxfault.plan.stages import (PLAN_STAGES, Configuration, PlanStage, expand, nominal_knobs, register_plan_stage,
                                  stage_names)

__all__ = ["PLAN_STAGES", "Configuration", "PlanStage", "active_stages", "expand", "load_plan", "nominal_knobs",
           "register_plan_stage", "retention_ber", "run_plan", "stage_names", "validate_plan", "voltage_ber"]


def run_plan(plan: dict, *, results_path=None, log: Callable[[str], None] = print, data=None, mesh=None,
             configs=None) -> dict:
    """Evaluate every configuration of a validated plan and build its report (jaxfault.plan.report).

    results_path: a ResultsFile (JSON lines) that makes the run resumable; rows already in it
    (same identity) are not recomputed. data: a PlanData to use instead of loading the plan's
    checkpoint and data (tests, benchmarks). configs: the plan's configurations when the caller
    has expanded them already (``expand(plan, active_stages(plan))``). With the target's
    ``certify``, configurations whose corrected interval straddles the threshold get more trials
    (chunks of ``trials``, the same keys i for every configuration) up to the target's
    ``max_trials`` (jaxfault.plan.report).
    """
    import contextlib

    import jax

    from jaxfault.engine import evaluation_form
    from jaxfault.plan.config import check_call_memory
    from jaxfault.plan.energy import build_energy_model, check_energy
    from jaxfault.plan.planner import evaluate_configurations, load_plan_data
    from jaxfault.plan.report import build_report
    from jaxfault.core.resultsfile import ResultsFile

    stages = active_stages(plan)
    configs = configs if configs is not None else expand(plan, stages)
    check_call_memory(plan)
    block = plan["hbm"]["block_size"] if plan.get("hbm") else 64
    data = data or load_plan_data(plan, log)
    model, variables = evaluation_form(data.model, data.variables)
    energy_model = build_energy_model(model, variables, data.input_shape, plan, stages,
                                      {g: gv for g, gv in data.generators.items()})
    for c in configs:  # every energy known and finite before the first trial
        check_energy(c.knobs, energy_model.breakdown(c.knobs, block))
    if mesh is None and jax.device_count() > 1:
        from jaxfault.campaign.runner import trial_mesh

        mesh = trial_mesh()
    t0 = time.perf_counter()
    with (ResultsFile.open(results_path, data.identity) if results_path else contextlib.nullcontext()) as rf:
        # rows written before scores had their own name kept a classifier's accuracies as "accuracy"
        done = {k: ({**r, "score": r["accuracy"]} if "score" not in r and "accuracy" in r else r)
                for k, r in (rf.rows() if rf is not None else {}).items()}
        if done:
            log(f"resuming: {len(done)} row(s) already in {results_path}")
        record = (lambda rid, row: rf.append(rid, row)) if rf is not None else (lambda rid, row: None)
        rows, planner = evaluate_configurations(plan, data, configs, done=done, record=record, log=log, mesh=mesh)
        if plan["target"]["certify"]:
            rows = _certify(plan, data, configs, rows, planner, done, record, log)
    rows = [{**r, "nominal": c.nominal} for r, c in zip(rows, configs)]
    return build_report(plan, rows, energy_model, planner.clean_score, compiled=planner.compiled,
                        seconds=time.perf_counter() - t0, block_size=block)


def _certify(plan, data, configs, rows, planner, done, record, log) -> list[dict]:
    """More trials, one chunk of `trials` per round, for every configuration whose corrected
    interval straddles the threshold, until none does or each has max_trials (the budget)."""
    from jaxfault.plan.planner import evaluate_configurations
    from jaxfault.plan.report import (certification_settings, score_statistic, target_interval, target_status,
                                      target_threshold)

    settings = certification_settings(plan, len(configs))
    cap = settings["max_trials"]
    stat = score_statistic(plan)
    threshold = target_threshold(plan["target"], plan["task"], planner.clean_score)  # reference 'clean' (validated)
    rows = [dict(r) for r in rows]
    while True:
        open_ = [i for i, r in enumerate(rows) if len(r["score"]) < cap
                 and target_status(*target_interval(r["score"], stat, settings), threshold) == "undecided"]
        if not open_:
            return rows
        start = min(len(rows[i]["score"]) for i in open_)
        same = [i for i in open_ if len(rows[i]["score"]) == start]
        log(f"certify: {len(open_)} configuration(s) undecided; trials {start}.. for {len(same)} of them")
        extra, _ = evaluate_configurations(plan, data, [configs[i] for i in same], done=done, record=record, log=log,
                                           planner=planner, start=start, cap=cap)
        for i, e in zip(same, extra):
            r = rows[i]
            r["score"] = list(r["score"]) + list(e["score"])
            r["forward_passes"] = r.get("forward_passes", 0) + e.get("forward_passes", 0)
            r["seconds"] = r.get("seconds", 0.0) + e.get("seconds", 0.0)
