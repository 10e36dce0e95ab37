"""One experiment: a model, its data and task, a fault model by registered name, rates and trials.

    config = ExperimentConfig.from_dict({"fault_model": "activation",
                                         "fault": {"modules": ["Dense_*"]},
                                         "rates": [1e-4, 1e-3], "trials": 10})
    report = run(config, "runs/act")        # writes runs/act/results.json

The config is validated once, here at the boundary: unknown keys, values out of range, and the
fault model's own fields (checked by building it: each registered fault model is a frozen
dataclass whose ``__post_init__`` validates its fields). ``run`` evaluates through
:func:`jaxfault.engine.evaluate` and writes one report in the row schema below, which every
consumer reads (``jaxfault.experiment.read_rows``).

Row schema ``jaxfault.rows/1``: the report is ``{"schema", "config", "checkpoint", "task",
"primary", "clean", "rows"}``; every row is one (fault model, rate) point with ``fault_model``
(its name), ``fault`` (its full configuration), ``rate_name``, ``rate`` and the same value under
the rate's own name (``"ber": 1e-3``), ``trials``, and for every metric and fault statistic a
summary over the trials (``engine.summarize``: mean, std, min, max, interval) with the
per-trial ``values`` for metrics.

Trial keys: ``trial_keys(stream(root_key(seed), "experiment"), trials)``, the same at every rate
(common random numbers), so a sweep's points differ only by the rate.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from jaxfault.core.errors import JaxfaultError, check, nearest_hint
from jaxfault.core.keys import MAX_SEED, MAX_TRIALS
from jaxfault.core.rows import ROW_SCHEMA

RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole configuration of one evaluation (see the module docstring).

    Attributes:
      fault_model: a registered fault model's name (``jaxfault.FAULT_MODELS``).
      fault: that fault model's fields, by name (its dataclass fields).
      rates: the rates of the sweep (the fault model's rate: a BER, a device variance, ...).
      trials: faulty instances per rate.
      seed: the root of every key.
      checkpoint: a classifier checkpoint folder (None: the cached default LeNet).
      limit: evaluate on the first ``limit`` test inputs (None: all).
      task: ``classification`` (the default) or ``language_model``.
      strategy: the engine's batching strategy (auto, vmap, map, map:B, loop).
      precision: float32 matmul precision (highest or default).
      batch_size: inputs per batch.
    """

    fault_model: str = "hbm"
    fault: dict = dataclasses.field(default_factory=dict)
    rates: tuple = (1e-3,)
    trials: int = 20
    seed: int = 0
    checkpoint: str | None = None
    limit: int | None = None
    task: str = "classification"
    strategy: str = "auto"
    precision: str = "highest"
    batch_size: int = 1000

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        """A validated config from a JSON-like dict (unknown keys are errors)."""
        check(isinstance(d, dict), f"an experiment config must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            check(k in names, f"unknown experiment setting {k!r}{nearest_hint(str(k), names)}; "
                              f"the settings are {', '.join(names)}")
        config = cls(**d)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise a one-line JaxfaultError for any invalid setting; build nothing expensive."""
        from jaxfault.core.batching import parse_strategy
        from jaxfault.core.precision import check_precision
        from jaxfault.core.tasks import TASKS

        check(isinstance(self.fault, dict), f"fault must be an object of fault-model fields, got {self.fault!r}")
        build_fault_model(self)
        rates = _as_list(self.rates, "rates")
        check(len(rates) >= 1, "rates needs at least one value")
        for r in rates:
            check(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0,
                  f"rates must be finite numbers >= 0, got {r!r}")
        check(len(set(rates)) == len(rates), f"rates lists a value twice: {rates}")
        _check_int("trials", self.trials, 1, MAX_TRIALS)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("batch_size", self.batch_size, 1, 1 << 20)
        if self.limit is not None:
            _check_int("limit", self.limit, 1, 1 << 31)
        check(self.checkpoint is None or (isinstance(self.checkpoint, str) and self.checkpoint),
              f"checkpoint must be a folder path, got {self.checkpoint!r}")
        check(self.task in TASKS, f"unknown task {self.task!r}{nearest_hint(str(self.task), tuple(TASKS))}; "
                                  f"choose one of {', '.join(TASKS)}")
        parse_strategy(self.strategy)
        check_precision(self.precision)

    def to_dict(self) -> dict:
        """JSON-ready settings (rates as a list)."""
        d = dataclasses.asdict(self)
        d["rates"] = [float(r) for r in _as_list(self.rates, "rates")]
        return d


def field_help() -> dict[str, str]:
    """{setting: its one-line description} from ExperimentConfig's Attributes section."""
    import re

    doc = ExperimentConfig.__doc__ or ""
    text = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^\s{6}(\w+): (.*)$", line)
        if m:
            name, out[m.group(1)] = m.group(1), m.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def _as_list(value, name: str) -> list:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise JaxfaultError(f"{name} must be a list of numbers, got {value!r}") from None


def _check_int(name: str, value, low: int, high: int) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
          f"{name} must be an integer in [{low}, {high}], got {value!r}")


def build_fault_model(config: ExperimentConfig):
    """The configured fault model (its fields validated by its own dataclass)."""
    from jaxfault.faults.fault_models import build_fault_model as build, check_not_fixed, resolve_name

    check(isinstance(config.fault_model, str), f"fault_model must be a name, got {config.fault_model!r}")
    name = resolve_name(config.fault_model)
    fields = fault_model_fields(name)
    check_not_fixed(name, config.fault)
    for k in config.fault:
        check(k in fields, f"fault model {name!r} has no field {k!r}{nearest_hint(str(k), fields)}; "
                           f"its fields are {', '.join(fields) or 'none'}")
    try:
        return build(name, **config.fault)
    except TypeError as e:
        raise JaxfaultError(f"fault model {name!r}: {e}") from None


def fault_model_fields(name: str) -> tuple[str, ...]:
    """The configuration fields of a registered fault model, from its dataclass."""
    from jaxfault.faults.fault_models import config_fields

    return tuple(f for f in config_fields(name) if f != "rate_bound")


# ------------------------------------------------------------------------------------ running
def results_path(workdir) -> Path:
    """Where ``run`` writes its report inside a work folder."""
    return Path(workdir) / RESULTS_FILE


def check_workdir(workdir, overwrite: bool = False) -> Path:
    """Refuse, before any work, a work folder whose report cannot be written or would replace an
    existing one without ``overwrite``; returns the report's path."""
    from jaxfault.core.io import check_output_path

    check_output_path(workdir, overwrite=True, kind="dir")
    target = check_output_path(results_path(workdir), overwrite=overwrite, kind="file")
    try:  # creating the folder is the one proof that it can be created
        Path(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxfaultError(f"cannot create the output folder {workdir}: {e.strerror or e}") from None
    return target


def load_inputs(config: ExperimentConfig, log: Callable[[str], None] = print):
    """(checkpoint path, model, variables, inputs, targets, task) of a config: the one loader, so
    every caller gets the same defaults (the cached default LeNet on Fashion-MNIST's test set)."""
    from jaxfault.core import tasks
    from jaxfault.training.zoo import load_classifier_and_data

    check(config.task == "classification",
          f"task {config.task!r} needs a language-model checkpoint loader, which this run does not have")
    path, model, variables, images, labels, topk = load_classifier_and_data(config.checkpoint, config.limit, log)
    return path, model, variables, images, labels, tasks.classification(topk)


def evaluate(config: ExperimentConfig, model, variables, inputs, targets, task) -> dict:
    """Evaluate loaded inputs under the configured fault model; the report (no file written)."""
    from jaxfault import engine
    from jaxfault.core.keys import root_key, stream, trial_keys
    from jaxfault.core.rows import make_row
    from jaxfault.faults.fault_models import base_fault_model

    fm = build_fault_model(config)
    rates = [float(r) for r in _as_list(config.rates, "rates")]
    keys = trial_keys(stream(root_key(config.seed), "experiment"), config.trials)
    res = engine.evaluate(model, variables, inputs, targets, fm, rates, keys, strategy=config.strategy,
                          precision=config.precision, batch_size=config.batch_size, task=task)
    rows = []
    metric = task.primary
    for i, rate in enumerate(rates):
        summary = res.summary(i)
        rows.append({**summary, **make_row(fault_model=base_fault_model(config.fault_model), method=config.fault_model,
                                           fault=fm.describe(), rate_name=fm.rate_name, rate=rate,
                                           trials=config.trials, metric=metric, summary=summary[metric])})
    return {"schema": ROW_SCHEMA, "config": config.to_dict(), "task": task.describe(), "primary": task.primary,
            "clean": res.clean, "strategy": res.strategy, "seconds": res.seconds, "rows": rows}


def run(config: ExperimentConfig, workdir, *, overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Validate, load, evaluate and write ``workdir/results.json`` (atomically); the report.

    Args:
      config: the experiment.
      workdir: the folder the report goes into (created).
      overwrite: replace an existing report there.
      log: where progress lines go.
    Returns:
      The report dict in the row schema ``jaxfault.rows/1``.
    """
    from jaxfault.core.io import atomic_write_json

    config.validate()
    target = check_workdir(workdir, overwrite)
    path, model, variables, inputs, targets, task = load_inputs(config, log)
    log(f"evaluating {config.fault_model} at {len(_as_list(config.rates, 'rates'))} rate(s) x {config.trials} trials "
        f"on {len(targets)} inputs")
    report = {"checkpoint": path, **evaluate(config, model, variables, inputs, targets, task)}
    atomic_write_json(target, report)
    return report


def read_rows(path) -> list[dict]:
    """The rows of a report in the row schema, verified: a one-line error for anything else."""
    import json

    p = Path(path)
    if p.is_dir():
        p = results_path(p)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise JaxfaultError(f"{p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"{p} is not a readable JSON report: {str(e).splitlines()[0]}") from None
    check(isinstance(data, dict) and data.get("schema") == ROW_SCHEMA and isinstance(data.get("rows"), list),
          f"{p} is not a {ROW_SCHEMA} report")
    for r in data["rows"]:
        check(isinstance(r, dict) and isinstance(r.get("rate"), (int, float)) and not isinstance(r.get("rate"), bool)
              and math.isfinite(r["rate"]), f"{p}: a row without a finite numeric 'rate'")
    return data["rows"]


def format_rows(report: dict) -> str:
    """A plain table of a report: rate, the primary metric's mean with its interval, and the
    clean value."""
    primary = report["primary"]
    scale, unit = (100.0, " %") if primary.startswith("top") else (1.0, "")
    lines = [f"{'rate':>10}  {primary + unit:>24}  trials   (clean {scale * report['clean'][primary]:.2f}{unit})"]
    for r in report["rows"]:
        s = r[primary]
        lo, hi = s["ci_lo"], s["ci_hi"]
        lines.append(f"{r['rate']:>10.3g}  {scale * s['mean']:8.2f} [{scale * lo:6.2f}, {scale * hi:6.2f}]  "
                     f"{r['trials']:>6}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """A fault-field value from text: JSON when it parses (numbers, lists, null), else the string."""
    import json

    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


__all__ = ["ExperimentConfig", "ROW_SCHEMA", "build_fault_model", "evaluate", "fault_model_fields", "format_rows",
           "field_help", "load_inputs", "parse_value", "read_rows", "run"]
