"""The one row schema, ``jaxfault.rows/1``: every evaluation writes its operating points in it, and
every consumer (the trade-off, campaign tables, plots) reads them without guessing.

A **row** is one operating point of one fault model:

| key | meaning |
|---|---|
| ``fault_model`` | the registered fault model that draws the faults (``hbm``, ``sram``, ``cim``, ``bitflip``, ...) |
| ``method`` | the name the run used: the fault model, its campaign alias (``sparrow``, ``neuralfuse``, ``swim``) or a preset |
| ``fault`` | the fault model's configuration (``scheme``, ``block_size``, ...), ``{}`` when not recorded |
| ``rate_name``, ``rate`` | what the rate is (``ber``, ``dev_var``, ...) and its value; the value also stands under the rate's own name |
| ``trials`` | faulty instances behind the figures |
| ``metric`` | what the row is scored by: ``top1`` (or another top-k accuracy; higher is better) or ``perplexity`` (lower is better) |
| ``summary`` | the metric over the trials (``jaxfault.core.stats.summarize``): ``mean``, ``ci_lo``/``ci_hi`` for an accuracy; ``median``, ``median_lo``/``median_hi`` for ``perplexity``; ``n``, ``std``, ... |

and, where the run has them, operating-point fields that the energy of protection reads:
``generator`` (a NeuralFuse generator in front of the model, null for none), ``selection`` and
``mask_p`` (SWIM's write-verify selection and fraction verified), ``refresh_interval_s`` and
``voltage`` (a knob given directly instead of through the rate), ``stored_bits_per_weight``, and
``label`` (how the row is named in tables). A run may add keys of its own.

A **report** is a JSON object ``{"schema": "jaxfault.rows/1", "rows": [...], ...}``; its other
top-level keys are the context every row shares (``model``, ``checkpoint``, ``dataset``,
``input_shape``, ``task``), and a row's own keys win over them. A campaign's results file
(jaxfault.core.resultsfile: JSON lines under a header) holds one row per line, with the context
in the header's identity.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from jaxfault.core.errors import JaxfaultError

ROW_SCHEMA = "jaxfault.rows/1"
CONTEXT_KEYS = ("model", "checkpoint", "dataset", "input_shape", "task")


def make_row(*, fault_model: str, method: str, fault: dict, rate_name: str, rate: float, trials: int,
             metric: str, summary: dict, **point) -> dict:
    """One row of the schema (module docstring), its figures as JSON numbers.

    Args:
      fault_model: the registered fault model drawing the faults.
      method: the name the run used for it (alias or preset).
      fault: the fault model's configuration.
      rate_name, rate: the rate's name and value.
      trials: faulty instances behind the figures.
      metric: ``top1`` or ``perplexity``.
      summary: the metric's summary over the trials.
      **point: operating-point and other fields of the row.
    Returns:
      The row dict.
    """
    if not is_metric(metric):
        raise ValueError(f"metric must be perplexity or a top-k accuracy, got {metric!r}")
    return {"fault_model": fault_model, "method": method, "fault": dict(fault), "rate_name": rate_name,
            "rate": float(rate), rate_name: float(rate), "trials": int(trials), "metric": metric,
            "summary": dict(summary), **point}


def fault_config(fault_model) -> dict:
    """A fault model's configuration as a row records it: its ``describe()``, without the rate
    bound (a sizing of the sampler's chunks that changes no fault)."""
    return {k: v for k, v in fault_model.describe().items() if k != "rate_bound"}


def is_metric(name) -> bool:
    return isinstance(name, str) and (name == "perplexity" or (name.startswith("top") and name[3:].isdigit()))


def report(rows: list[dict], **context) -> dict:
    """A report in the schema: the rows and the context they share."""
    return {"schema": ROW_SCHEMA, **context, "rows": list(rows)}


def is_number(v) -> bool:
    """A JSON number: an int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_row(row, where: str) -> dict:
    """A row of the schema, or a one-line JaxfaultError naming `where` and the first problem."""
    if not isinstance(row, dict):
        raise JaxfaultError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for key in ("fault_model", "method", "rate_name", "metric"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise JaxfaultError(f"{where}: a {ROW_SCHEMA} row needs a {key!r} string, got {row.get(key)!r}")
    if not is_metric(row["metric"]):
        raise JaxfaultError(f"{where}: metric must be top1 (or another top-k accuracy) or perplexity, "
                            f"got {row['metric']!r}")
    if not (is_number(row.get("rate")) and math.isfinite(row["rate"]) and row["rate"] >= 0):
        raise JaxfaultError(f"{where}: the rate ({row['rate_name']}) must be a finite number >= 0, "
                            f"got {row.get('rate')!r}")
    if not isinstance(row.get("fault", {}), dict):
        raise JaxfaultError(f"{where}: fault must be an object of the fault model's fields, got {row['fault']!r}")
    s = row.get("summary")
    figure = "median" if row["metric"] == "perplexity" else "mean"
    if not (isinstance(s, dict) and is_number(s.get(figure))):
        raise JaxfaultError(f"{where}: summary must be an object with a numeric {figure!r} "
                            f"(the {row['metric']} over the trials), got {s!r}")
    if not (isinstance(row.get("trials"), int) and not isinstance(row["trials"], bool) and row["trials"] >= 1):
        raise JaxfaultError(f"{where}: trials must be an integer >= 1, got {row.get('trials')!r}")
    return row


def read(path) -> tuple[dict, list[dict]]:
    """(context, rows) of a report or a campaign results file, every row checked; one-line errors
    for a file that is neither (with what to do) and for the first bad row."""
    from jaxfault.core.config import JSONSyntaxError, parse_json, read_text_file
    from jaxfault.core.resultsfile import HEADER_KEY

    p = Path(path)
    text = read_text_file(p, str(p))
    try:
        obj = parse_json(text, str(p))
    except JSONSyntaxError:
        obj = None
    if isinstance(obj, dict) and obj.get("schema") == ROW_SCHEMA:
        if not isinstance(obj.get("rows"), list):
            raise JaxfaultError(f"{p}: a {ROW_SCHEMA} report needs a 'rows' list")
        context = {k: v for k, v in obj.items() if k in CONTEXT_KEYS}
        return context, [check_row(r, f"{p}: row {i}") for i, r in enumerate(obj["rows"], 1)]
    if obj is None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        header = _json_line(lines[0]) if lines else None
        if isinstance(header, dict) and HEADER_KEY in header:
            ident = header.get("identity") or {}
            context = {k: ident[k] for k in CONTEXT_KEYS if k in ident and ident[k] is not None}
            rows = []
            for i, ln in enumerate(lines[1:], 2):
                row = _json_line(ln)
                if row is None:
                    if i == len(lines):       # a run killed during an append
                        break
                    raise JaxfaultError(f"{p}: line {i} is not JSON")
                rows.append(check_row(row, f"{p}: line {i}"))
            return context, rows
    raise JaxfaultError(f"{p} is not a {ROW_SCHEMA} report or a campaign results file; every evaluation CLI "
                        f"writes one (eval.run, eval.sparrow, eval.swim, eval.neuralfuse, eval.vulnerability sweeps, "
                        f"eval.campaign)")


def _json_line(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None
