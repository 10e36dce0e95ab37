"""A grid point -> (fault model, rate, fault-model data), read from the fault-model registry.

A point names its `method` (a registered fault model or its campaign alias: sparrow -> hbm,
neuralfuse -> sram, swim -> cim, bitflip), its rate under the fault model's rate name ("ber",
"dev_var"), and any configuration field of that fault model. SWIM points may also give the
write-verify selection ("selection": magnitude | random | none | all, "mask_p"), which becomes
the variables' "write_verify" collection. Points that differ only in their rate share one
compiled program (`group_key`).
"""
from __future__ import annotations

import math

import jax

from jaxfault.core.errors import JaxfaultError, check_probability, nearest_hint
from jaxfault.faults.fault_models import (FAULT_MODELS, base_fault_model, build_fault_model, check_not_fixed, config_fields,
                                   resolve_name)

DATA_FIELDS = {"cim": ("selection", "mask_p")}
SWIM_SELECTIONS = ("magnitude", "random", "none", "all")


def split_point(params: dict) -> tuple[str, dict, str, float, dict]:
    """(registry name, fault-model config, rate name, rate, data fields) of a point, validated."""
    method = params.get("method")
    if not isinstance(method, str):
        raise JaxfaultError(f"grid point needs a 'method' string, got {method!r}")
    name = resolve_name(method)
    reg = FAULT_MODELS.get(name)
    rate_name = reg.info["rate_name"]
    fields = config_fields(name)
    data_fields = DATA_FIELDS.get(base_fault_model(name), ())
    allowed = set(fields) | set(data_fields) | {"method", rate_name}
    allowed.discard("rate_bound")
    check_not_fixed(name, params)
    for k in params:
        if k not in allowed:
            raise JaxfaultError(f"unknown field {k!r} for method {method!r}{nearest_hint(k, sorted(allowed))}; "
                                f"known fields: {', '.join(sorted(allowed))}")
    if rate_name not in params:
        raise JaxfaultError(f"method {method!r} needs a {rate_name!r} in its grid entry")
    rate = params[rate_name]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
        raise JaxfaultError(f"{rate_name} must be a finite number >= 0, got {rate!r}")
    if rate_name == "ber":
        check_probability(rate_name, rate)
    config = {k: v for k, v in params.items() if k in fields}
    data = {k: params[k] for k in data_fields if k in params}
    if "selection" in data and data["selection"] not in SWIM_SELECTIONS:
        raise JaxfaultError(f"unknown SWIM selection {data['selection']!r} for campaigns; choose one of "
                            f"{', '.join(SWIM_SELECTIONS)} (curvature-based ones: python -m eval.swim)")
    if "mask_p" in data:
        check_probability("mask_p", data["mask_p"])
    return name, config, rate_name, float(rate), data


def build_point(params: dict, rate_bound: float):
    """(fault model sized for rate_bound, rate, data) of a point."""
    name, config, _, rate, data = split_point(params)
    fm = build_fault_model(name, **config).with_rate_bound(max(rate_bound, rate))
    return fm, rate, data


def row_fields(params: dict, trials: int, metric: str, summary: dict) -> dict:
    """The fields of a point's result in the row schema (jaxfault.core.rows): its fault model
    (the registered one, and the method name the grid used), that model's whole configuration,
    its rate, and the metric's summary; SWIM points add their selection and fraction verified."""
    from jaxfault.core.rows import fault_config, make_row

    name, config, rate_name, rate, data = split_point(params)
    fault = fault_config(build_fault_model(name, **config))
    point = {k: data[k] for k in ("selection", "mask_p") if k in data}
    if base_fault_model(name) == "cim":
        point.setdefault("selection", "magnitude")
        point.setdefault("mask_p", 0.0)
    return make_row(fault_model=base_fault_model(name), method=params["method"], fault=fault,
                    rate_name=rate_name, rate=rate, trials=trials, metric=metric, summary=summary, **point)


def validate_point(params: dict) -> None:
    """Check a grid point before any work starts: method known, fields known, values valid."""
    name, config, _, rate, _ = split_point(params)
    build_fault_model(name, **config).with_rate_bound(rate)


def group_key(params: dict) -> str:
    """Points with the same group key differ only in their rate and share a compiled program."""
    import json

    name, config, _, _, data = split_point(params)
    return json.dumps([name, config, data], sort_keys=True)


def add_fault_data(name: str, data: dict, variables: dict, key: jax.Array) -> dict:
    """Variables with the fault model's data collections (SWIM's write-verify mask) added."""
    if base_fault_model(name) != "cim":
        return variables
    from jaxfault.swim import WRITE_VERIFY, full_mask, protection_mask

    selection = data.get("selection", "magnitude")
    mask_p = float(data.get("mask_p", 0.0))
    params = variables["params"]
    if selection == "none" or mask_p == 0.0:
        mask = full_mask(params, False)
    elif selection == "all":
        mask = full_mask(params, True)
    else:
        mask, _ = protection_mask(params, selection, mask_p, key=key)
    return {**variables, WRITE_VERIFY: mask}
