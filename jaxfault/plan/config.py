"""Plan files: read and validate strictly, before any model, data or compilation is touched.

A plan names the model and data, the knob grids of its protection stages (one section per
registered plan stage, jaxfault.plan.stages: the built-in hbm, sram and cim, and any other), the
trials, the energy settings and a target (format and meaning: docs/plan.md):

    {"out": "runs/plan", "checkpoint": null, "eval_examples": 10000, "seed": 0, "trials": 20,
     "eval_dtype": "float32", "inference_period_s": 0.0333,
     "target": {"metric": "p5", "max_drop_points": 1.0},
     "hbm":  {"scheme": ["none", "secded", "sparrow"], "refresh_interval_s": [0.064, 0.256, 1.024]},
     "sram": {"voltage": [1.0, 0.96, 0.92], "generator": [null, "runs/neuralfuse/generator"]},
     "cim":  {"write_verify": [0.0, 0.05, 1.0], "selection": "magnitude", "dev_var": 0.1}}

A stage that is absent (or null) is not part of the design. Every problem is one line naming the
section, the field and the value: unknown fields with the nearest known name, wrong types,
knob values outside a relation table's range (unless the stage sets "extrapolate": true),
repeated knob values, an empty grid.
"""
from __future__ import annotations

from jaxfault.core import batching
from jaxfault.core.config import Field, read_json_object, validate
from jaxfault.core.errors import JaxfaultError, plain
from jaxfault.core.keys import MAX_SEED, MAX_TRIALS
from jaxfault.plan.stages import get_stage, stage_names
from jaxfault.core.precision import PRECISIONS

EVAL_DTYPES = ("auto", "float32", "bfloat16")
# The target's statistic over trials: of top-1 accuracy for a classifier (mean, 5th percentile,
# median), of perplexity for a language model (median, 95th percentile: a perplexity rises with
# faults, so its high quantile is the tail that matters).
CLASSIFIER_METRICS = ("mean", "p5", "median")
LM_METRICS = ("median", "p95")
TARGET_METRICS = ("mean", "p5", "median", "p95")
TARGET_REFERENCES = ("clean", "nominal")

TOP_FIELDS = [
    Field("out", str, "runs/plan", check=bool, requirement="a non-empty path"),
    Field("checkpoint", str, None, nullable=True),
    Field("task", str, None, nullable=True, choices=("classification", "language_model")),
    Field("data_dir", str, None, nullable=True),
    Field("eval_examples", int, 10000, min=1),
    Field("eval_windows", int, 32, min=1),
    Field("seed", int, 0, min=0, max=MAX_SEED),
    Field("trials", int, 20, min=1, max=MAX_TRIALS),
    Field("strategy", str, "auto", choices=batching.STRATEGIES),
    Field("precision", str, "highest", choices=PRECISIONS),
    Field("eval_dtype", str, "auto", choices=EVAL_DTYPES),
    Field("batch_size", int, 1000, min=1),
    Field("configs_per_call", int, 8, min=1),
    Field("skip_fault_free", bool, True),
    Field("inference_period_s", float, 1.0 / 30.0, min=0, min_open=True, max=1e6),
    Field("target", dict, None, nullable=True),
    Field("energy", dict, None, nullable=True),
]

TARGET_FIELDS = [
    Field("metric", str, None, nullable=True, choices=TARGET_METRICS),
    Field("max_drop_points", float, None, nullable=True, min=0),
    Field("min_accuracy", float, None, nullable=True, min=0, max=1),
    Field("max_increase_percent", float, None, nullable=True, min=0, max=1e6),
    Field("max_perplexity", float, None, nullable=True, min=1, max=1e30),
    Field("reference", str, "clean", choices=TARGET_REFERENCES),
    Field("level", float, 0.95, min=0, max=1, min_open=True, max_open=True),
    Field("certify", bool, False),
    Field("max_trials", int, None, nullable=True, min=1, max=MAX_TRIALS),
]

# Energy settings are bounded far beyond physical values (pJ per bit, volts, seconds), so that
# every energy stays a finite number: 1e308 pJ per bit made every energy NaN.
ENERGY_FIELDS = [
    Field("qw", int, 16, min=1, max=32),
    Field("qa", int, 16, min=1, max=32),
    Field("refresh_pj_per_bit", float, None, nullable=True, min=0, max=1e6),
    Field("pj_per_unit", float, None, nullable=True, min=1e-6, max=1e6),
    Field("ecc_read_scaling", float, None, nullable=True, min=0, max=1),
    Field("v_nominal", float, 1.0, min=0, min_open=True, max=100),
    Field("verify_iterations", float, None, nullable=True, min=1, max=1e6),
    Field("cim_pulse_pj", float, None, nullable=True, min=0, max=1e6),
    Field("cim_reprogram_period_s", float, None, nullable=True, min=0, min_open=True, max=1e9),
]

def top_fields() -> list[Field]:
    """The top-level fields of a plan: the settings above, then one section per registered stage."""
    return TOP_FIELDS + [Field(name, dict, None, nullable=True) for name in stage_names()]


def _as_list(section: dict, names) -> dict:
    """Knob values given as one value are read as a one-item list."""
    return {k: ([v] if k in names and not isinstance(v, list) else v) for k, v in section.items()}


def _stage(name: str, section, task: str) -> dict:
    where = f"plan: {name}"
    if not isinstance(section, dict):
        raise JaxfaultError(f"{where} must be an object of knob grids and settings, got {plain(section)!r}")
    stage = get_stage(name)
    cfg = validate(_as_list(section, stage.knob_names), stage.fields, where)
    return stage.check_section(cfg, where, task)


def _target(section, lm: bool) -> dict:
    """The target section; its rule is of top-1 accuracy for a classifier (max_drop_points in
    points, or min_accuracy) and of perplexity for a language model (max_increase_percent over the
    reference, or max_perplexity)."""
    cfg = validate(section or {}, TARGET_FIELDS, "plan: target")
    rel, fixed = ("max_increase_percent", "max_perplexity") if lm else ("max_drop_points", "min_accuracy")
    other = ("max_drop_points", "min_accuracy") if lm else ("max_increase_percent", "max_perplexity")
    kind = "a language model's" if lm else "a classifier's"
    for name in other:
        if cfg[name] is not None:
            raise JaxfaultError(f"plan: target: {name} is not {kind} target; give {rel} or {fixed}")
    if cfg["metric"] is None:
        cfg["metric"] = "p95" if lm else "p5"
    allowed = LM_METRICS if lm else CLASSIFIER_METRICS
    if cfg["metric"] not in allowed:
        raise JaxfaultError(f"plan: target: metric {cfg['metric']!r} is not {kind} statistic; choose one of "
                            f"{', '.join(allowed)}")
    if cfg[rel] is None and cfg[fixed] is None:
        cfg[rel] = 5.0 if lm else 1.0
    elif cfg[rel] is not None and cfg[fixed] is not None:
        raise JaxfaultError(f"plan: target: give either {rel} or {fixed}, not both")
    if cfg["certify"] and cfg["reference"] == "nominal" and cfg[fixed] is None:
        raise JaxfaultError(f"plan: target: certify needs a fixed threshold: reference 'clean' or {fixed} "
                            "(the nominal design's own statistic is itself an estimate)")
    if cfg["max_trials"] is not None and not cfg["certify"]:
        raise JaxfaultError("plan: target: max_trials is the certification budget; set \"certify\": true to use it")
    return cfg


def plan_scores_language_model(plan: dict) -> bool:
    """True when a (validated or raw) plan is scored as a language model: its task, or the
    checkpoint it names holds one (jaxfault.training.lm.scores_language_model)."""
    from jaxfault.training.lm import scores_language_model

    return scores_language_model(plan.get("task"), plan.get("checkpoint"))


def validate_plan(plan) -> dict:
    """The plan with defaults filled in and every field checked (one-line JaxfaultError)."""
    if isinstance(plan, dict) and "output" in plan:
        raise JaxfaultError('plan: the field "output" is now "out" (the output folder)')
    cfg = validate(plan, top_fields(), "plan")
    active = [s for s in stage_names() if cfg[s] is not None]
    if not active:
        raise JaxfaultError(f"plan: no stage to plan: give at least one of {', '.join(stage_names())}")
    lm = plan_scores_language_model(cfg)
    cfg["task"] = "language_model" if lm else "classification"
    for s in active:
        cfg[s] = _stage(s, cfg[s], cfg["task"])
    cfg["target"] = _target(cfg["target"], lm)
    if cfg["target"]["max_trials"] is not None and cfg["target"]["max_trials"] < cfg["trials"]:
        raise JaxfaultError(f"plan: target: max_trials must be >= trials ({cfg['trials']}), "
                            f"got {cfg['target']['max_trials']}")
    cfg["energy"] = validate(cfg["energy"] or {}, ENERGY_FIELDS, "plan: energy")
    return cfg


# host bytes one program call holds per (configuration, trial): its key (8) and its outputs
# (accuracy, forward-pass flag, fingerprint halves, realised rates), rounded up
CALL_BYTES_PER_TRIAL = 64


def check_call_memory(plan: dict, budget: int | None = None) -> int:
    """The bytes one program call of a validated plan holds for its configs_per_call x trials
    keys and results; a one-line JaxfaultError, before any work, when that exceeds the memory
    budget (default: jaxfault.engine.memory's, half the device's memory, and at most half the host's)."""
    import os

    from jaxfault.engine import memory

    C, T = plan["configs_per_call"], plan["trials"]
    if plan["target"]["certify"] and plan["target"]["max_trials"]:
        T = max(T, plan["target"]["max_trials"])
    need = C * (4 * len(active_stages(plan)) + T * CALL_BYTES_PER_TRIAL)
    if budget is None:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        budget = min(memory.default_budget(), int(memory.DEFAULT_FRACTION * host))
    if need > budget:
        raise JaxfaultError(f"plan: configs_per_call {C} x trials {T} needs about {need / 2**30:.1f} GiB of memory per "
                            f"program call, more than the budget of {budget / 2**30:.1f} GiB; lower configs_per_call")
    return need


def active_stages(plan: dict) -> tuple[str, ...]:
    """The stages of a validated plan, in registration order (hbm, sram, cim, then any other)."""
    return tuple(s for s in stage_names() if plan.get(s) is not None)


def load_plan(path, overrides: dict | None = None) -> dict:
    """Read a plan file, apply non-None top-level overrides, validate."""
    plan = read_json_object(path, "plan file", parse_constant=_non_finite)
    plan.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_plan(plan)


def _non_finite(name):
    raise JaxfaultError(f"plan: {name} is not a finite number")
