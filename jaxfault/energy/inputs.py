"""Reading the energy model's user inputs (shapes, per-layer bit widths, BER tables, sweep grids)
with one-line errors naming the setting (as `name`, which the CLIs show as --name) and the bad
value; shared by eval.energy and eval.tradeoff."""
from __future__ import annotations

import math
from pathlib import Path

from jaxfault.core.errors import JaxfaultError, nearest_hint, plain


def parse_shape(text: str, name: str = "`input`") -> tuple[int, ...]:
    """'H,W,C' as three positive integers, or 'L', one positive integer (a language model's context
    length in tokens)."""
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise JaxfaultError(f"{name + ' ' if name else ''}must be three positive integers H,W,C, got {text!r}")
    return shape


def parse_per_layer(text: str, name: str, network: str):
    """'reference' (alexnet's reference bit widths / pruning), or one number, or a per-layer list."""
    from jaxfault.core.config import parse_float_list
    from jaxfault.energy.networks import ALEXNET_REFERENCE

    if str(text).strip().lower() == "reference":
        if network != "alexnet":
            raise JaxfaultError(f"`{name}` reference: the reference bit widths exist only for alexnet")
        return list(ALEXNET_REFERENCE[name])
    return parse_float_list(text, f"`{name}`", allow_duplicates=True)


def _read_json(path, name: str):
    from jaxfault.core.config import parse_json

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise JaxfaultError(f"{name}: cannot read {path}: {reason}") from None
    try:
        return parse_json(text, "it")
    except JaxfaultError as e:
        raise JaxfaultError(f"{name}: cannot read {path}: {e}") from None


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_table(path: str | None, name: str, default):
    """[[x, ber], ...] from a JSON file (a list of pairs, or {"table": [...]}); default when path is
    None. Every row must be two finite numbers; monotonicity and BER ranges are checked where the
    table is used (jaxfault.energy.protection)."""
    if path is None:
        return default
    obj = _read_json(path, name)
    if isinstance(obj, dict):
        if "table" not in obj:
            raise JaxfaultError(f"{name}: {path} holds an object without a 'table' list")
        obj = obj["table"]
    if not isinstance(obj, list) or len(obj) < 2:
        raise JaxfaultError(f"{name}: {path} must hold a list of at least two [x, ber] pairs")
    rows = []
    for i, r in enumerate(obj):
        if not (isinstance(r, list) and len(r) == 2 and all(_finite_number(v) for v in r)):
            raise JaxfaultError(f"{name}: row {i} of {path} must be two finite numbers [x, ber], got {plain(r)!r}")
        rows.append((float(r[0]), float(r[1])))
    return rows


def load_grid(path, allowed) -> dict:
    """A sweep grid {axis: [values]} from JSON: known axes only (nearest-name hint), non-empty lists
    of finite numbers or of per-layer lists of finite numbers, no value listed twice."""
    grid = _read_json(path, "`grid`")
    if not isinstance(grid, dict) or not grid:
        raise JaxfaultError("`grid` must hold a non-empty JSON object {axis: [values]}")
    allowed = list(allowed)
    for axis, values in grid.items():
        if axis not in allowed:
            raise JaxfaultError(f"`grid`: unknown axis {axis!r}{nearest_hint(axis, allowed)}; "
                                f"allowed: {', '.join(allowed)}")
        if not isinstance(values, list) or not values:
            raise JaxfaultError(f"`grid`[{axis!r}] must be a non-empty list of values, got {plain(values)!r}")
        seen = []
        for v in values:
            ok = _finite_number(v) or (isinstance(v, list) and v and all(_finite_number(x) for x in v))
            if not ok:
                raise JaxfaultError(f"`grid`[{axis!r}]: {plain(v)!r} is not a finite number or a list of them")
            if v in seen:
                raise JaxfaultError(f"`grid`[{axis!r}]: {plain(v)!r} is listed twice")
            seen.append(v)
    return grid
