"""Strict validation of configuration mappings (campaign configs, plan configs, JSON inputs).

A config is described by a list of Field values; validate() checks a mapping against them before
any work starts and returns a new dict with every field present (defaults filled in):

    FIELDS = [Field("seed", int, 0, min=0),
              Field("trials", int, 10, min=1),
              Field("ber", float, min=0, max=1),                      # required
              Field("scheme", str, "sparrow", choices=("sparrow", "secded", "none")),
              Field("rates", list, items=float, min=0, max=1, nonempty=True, unique=True),
              Field("output", str, None, nullable=True)]
    cfg = validate(json.load(f), FIELDS, where="campaign config")

Rules, each a one-line JaxfaultError naming `where`, the field and the value:
- a key that is not a field is refused, with the nearest field name as a hint;
- a required field (no default) must be present;
- types are exact: bool is not an int, an int is accepted for a float (and returned as float),
  a float is not accepted for an int; None only where nullable;
- floats must be finite (NaN and inf are refused everywhere);
- min/max (inclusive unless min_open/max_open), choices and check(value) -> bool apply to the
  value, or to every item of a list.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jaxfault.core.errors import JaxfaultError, nearest_hint, plain


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED: Any = _Required()

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object"}


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its name, type (int, float, str, bool, list or dict), default (REQUIRED when
    it must be given), and constraints on the value (or, for lists, on each item of type `items`)."""

    name: str
    type: type
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: Sequence | None = None
    check: Callable[[Any], bool] | None = None
    requirement: str = ""  # what check() demands, for the message ("a power of two")
    nullable: bool = False
    items: type | None = None  # item type of a list field
    nonempty: bool = False  # list fields: at least one item
    unique: bool = False  # list fields: no repeated item

    def __post_init__(self):
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Field {self.name!r}: type must be one of int, float, str, bool, list, dict")
        if self.items is not None and self.items not in _TYPE_NAMES:
            raise TypeError(f"Field {self.name!r}: items must be one of int, float, str, bool, list, dict")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _type_ok(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _bound(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _describe_bounds(f: Field) -> str:
    parts = []
    if f.min is not None:
        parts.append(f"{'>' if f.min_open else '>='} {_bound(f.min)}")
    if f.max is not None:
        parts.append(f"{'<' if f.max_open else '<='} {_bound(f.max)}")
    return " and ".join(parts)


def _check_scalar(value, kind: type, f: Field, label: str):
    """value checked against kind and f's constraints; returns it (ints given for floats as float)."""
    if not _type_ok(value, kind):
        raise JaxfaultError(f"{label} must be {_TYPE_NAMES[kind]}, got {plain(value)!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise JaxfaultError(f"{label} must be a finite number, got {value!r}")
    if kind in (int, float):
        low_bad = f.min is not None and (value <= f.min if f.min_open else value < f.min)
        high_bad = f.max is not None and (value >= f.max if f.max_open else value > f.max)
        if low_bad or high_bad:
            raise JaxfaultError(f"{label} must be {_describe_bounds(f)}, got {value!r}")
    if f.choices is not None and value not in f.choices:
        raise JaxfaultError(f"{label} must be one of {', '.join(map(str, f.choices))}, got {plain(value)!r}"
                            + (nearest_hint(value, f.choices) if isinstance(value, str) else ""))
    if f.check is not None and not f.check(value):
        raise JaxfaultError(f"{label} must be {f.requirement or 'valid'}, got {plain(value)!r}")
    return value


def validate_field(value, f: Field, where: str = "config"):
    """One field's value checked (see the module docstring); returns the normalised value."""
    label = f"{where}: {f.name}"
    if value is None:
        if f.nullable or (not f.required and f.default is None):
            return None
        raise JaxfaultError(f"{label} must be {_TYPE_NAMES[f.type]}, got null")
    if f.type is list:
        if not isinstance(value, (list, tuple)):
            raise JaxfaultError(f"{label} must be a list, got {plain(value)!r}")
        if f.nonempty and not value:
            raise JaxfaultError(f"{label} must not be empty")
        out = []
        for i, item in enumerate(value):
            item = _check_scalar(item, f.items, f, f"{label}[{i}]") if f.items is not None else item
            if f.unique and item in out:
                raise JaxfaultError(f"{label}: {plain(item)!r} is listed twice")
            out.append(item)
        return out
    return _check_scalar(value, f.type, f, label)


def validate(mapping: Mapping, fields: Sequence[Field], where: str = "config") -> dict:
    """mapping checked against fields (see the module docstring): a new dict holding every field,
    defaults filled in, ints given for float fields converted to float. One-line JaxfaultError
    naming `where`, the field and the value on the first problem."""
    if not isinstance(mapping, Mapping):
        raise JaxfaultError(f"{where} must be a JSON object, got {type(mapping).__name__}")
    by_name = {f.name: f for f in fields}
    if len(by_name) != len(fields):
        raise TypeError("validate(): two fields share a name")
    for key in mapping:
        if key not in by_name:
            raise JaxfaultError(f"{where}: unknown field {plain(key)!r}{nearest_hint(key, by_name)}; "
                                f"known fields: {', '.join(by_name)}")
    out = {}
    for f in fields:
        if f.name in mapping:
            out[f.name] = validate_field(mapping[f.name], f, where)
        elif f.required:
            raise JaxfaultError(f"{where}: missing required field {f.name!r}")
        else:
            out[f.name] = f.default
    return out


def setting(default: Any = REQUIRED, help: str = "", *, flag: str | Sequence[str] | None = None,
            kind: str | None = None, choices: Sequence | None = None):
    """A dataclass field declared as a user-facing setting, so that its name, help line and the
    kind of value it takes are written once, beside the field.

    Command lines make their flags from these (jaxfault.cli.add_setting_flags): the flag is
    ``--name`` with dashes unless `flag` gives another name (or several), and its value is read as
    `kind` (one of jaxfault.cli.SETTING_KINDS, e.g. "probability", "positive_int", "seed",
    "strategy"; "switch" for a bool that is off unless given; None for plain text) or as one of
    `choices`.
    The config's own ``__post_init__`` still validates the value, for every caller.

    Args:
      default: the field's default (REQUIRED: none).
      help: one line saying what the setting does.
      flag: the name the command line uses, when it is not the field's (or several: a name and its
        aliases), e.g. "fault_model" for the flag --fault-model.
      kind: how a command line reads the value.
      choices: the values allowed, when they are a fixed list.
    Returns:
      A ``dataclasses.field`` carrying this description in its metadata.
    """
    meta = {"help": help, "flag": flag, "kind": kind, "choices": tuple(choices) if choices is not None else None}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings_of(cls) -> list:
    """The fields of dataclass `cls` declared with setting(), in order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


# Limits of every JSON file jaxfault reads (configs, plans, result files): far above what any of
# them holds, and below what makes Python's own parser fail with a traceback (integers over 4300
# digits, nesting deeper than the interpreter's recursion limit).
MAX_JSON_DEPTH = 64
MAX_JSON_INT_DIGITS = 64


class JSONSyntaxError(JaxfaultError):
    """Text that is not JSON at all (as opposed to JSON beyond the limits), for readers that then
    try another form (JSON lines)."""


def _json_depth_ok(obj, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def parse_json(text: str, name: str, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """JSON text parsed with jaxfault's limits: malformed JSON, an integer of more than
    MAX_JSON_INT_DIGITS digits and nesting deeper than MAX_JSON_DEPTH are one-line JaxfaultErrors
    naming `name` (e.g. "plan file 'p.json'"). parse_constant as in json.loads."""

    def parse_int(digits: str) -> int:
        n = len(digits.lstrip("-"))
        if n > MAX_JSON_INT_DIGITS:
            raise JaxfaultError(f"{name} holds an integer of {n} digits (at most {MAX_JSON_INT_DIGITS} are read)")
        return int(digits)

    try:
        obj = json.loads(text, parse_constant=parse_constant, parse_int=parse_int)
    except RecursionError:
        raise JaxfaultError(f"{name} is nested too deeply (at most {MAX_JSON_DEPTH} levels are read)") from None
    except json.JSONDecodeError as e:
        raise JSONSyntaxError(f"{name} is not valid JSON: {e}") from None
    if not _json_depth_ok(obj, MAX_JSON_DEPTH):
        raise JaxfaultError(f"{name} is nested too deeply (at most {MAX_JSON_DEPTH} levels are read)")
    return obj


def read_text_file(path, name: str) -> str:
    """A text file's contents; a missing or unreadable file (a binary one included) is a one-line
    JaxfaultError naming it as `name`."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise JaxfaultError(f"{name} does not exist") from None
    except UnicodeDecodeError:
        raise JaxfaultError(f"cannot read {name}: it is not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise JaxfaultError(f"cannot read {name}: {e.strerror or e}") from None


def read_json_file(path, what: str, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """Read and parse a JSON file with parse_json's limits. A missing or unreadable file (a binary
    one included) is a one-line JaxfaultError naming `what` and the path."""
    name = f"{what} {str(path)!r}".lstrip()
    return parse_json(read_text_file(path, name), name, parse_constant=parse_constant)


def read_json_object(path, what: str, *, parse_constant: Callable[[str], Any] | None = None) -> dict:
    """Read a JSON file that must hold one object (a campaign config, a plan). A missing or
    unreadable file, malformed JSON, parse_json's limits or another top-level type is a one-line
    JaxfaultError naming `what` and the path. parse_constant as in json.loads (e.g. to refuse
    NaN/Infinity there)."""
    obj = read_json_file(path, what, parse_constant=parse_constant)
    if not isinstance(obj, dict):
        raise JaxfaultError(f"{what} {str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def parse_float_list(text, name: str, *, check: Callable[[float], bool] | None = None,
                     requirement: str = "", allow_duplicates: bool = False) -> list[float]:
    """Parse '1e-5,1e-4' into finite floats, with a one-line error naming the setting and the bad item.

    Empty lists, empty items ('1e-3,,1e-2'), NaN/inf and (unless allow_duplicates) repeated values
    are errors; check(value) -> bool with its requirement ('in [0, 1]') adds a range check.
    """
    if text is None or not str(text).strip():
        raise JaxfaultError(f"{name} needs a comma-separated list of numbers, got {'' if text is None else text!r}")
    out: list[float] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            raise JaxfaultError(f"{name}: empty item in {text!r}")
        try:
            value = float(item)
        except ValueError:
            raise JaxfaultError(f"{name}: {item!r} is not a number") from None
        if not math.isfinite(value):
            raise JaxfaultError(f"{name}: {item!r} is not a finite number")
        if check is not None and not check(value):
            raise JaxfaultError(f"{name} values must be {requirement or 'valid'}, got {item!r}")
        if not allow_duplicates and value in out:
            raise JaxfaultError(f"{name}: {item!r} is listed twice in {text!r}")
        out.append(value)
    return out


def parse_probability_list(text, name: str) -> list[float]:
    """parse_float_list for a list of probabilities ('1e-5,1e-4': BERs, mask fractions): every
    value in [0, 1], none repeated."""
    return parse_float_list(text, name, check=lambda v: 0 <= v <= 1, requirement="in [0, 1]")
