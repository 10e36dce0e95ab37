"""Shared CLI plumbing: one-line errors with exit code 2, argparse types for numeric flags that
name the flag and the value, and a quiet-when-not-a-TTY progress bar."""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Callable, Sequence

from jaxfault.errors import JaxfaultError

# Anything float() reads as a negative number, including exponents, inf and nan: argparse's own
# pattern (-1, -.5) misses '-1e-3', which it then takes for an unknown option.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exits with code 2, and that reads any
    negative number ('-1e-3', '-inf') as a flag's value so that range checks can name it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI main(argv); JaxfaultError becomes 'error: ...' on stderr and exit code 2."""
    try:
        code = main(argv)
    except JaxfaultError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class FlagValueError(argparse.ArgumentTypeError):
    """Raised by the flag types below; argparse prefixes the flag ('argument --ber: must be ...')."""


def _number(text, integer: bool = False):
    s = str(text).strip()
    try:
        if integer:
            return int(s)
        return float(s)
    except ValueError:
        raise FlagValueError(f"must be {'an integer' if integer else 'a number'}, got {text!r}") from None


def _flag_type(name: str, check: Callable[[float], bool], requirement: str, integer: bool = False):
    def convert(text):
        value = _number(text, integer)
        if not integer and not math.isfinite(value):
            raise FlagValueError(f"must be a finite number, got {text!r}")
        if not check(value):
            raise FlagValueError(f"must be {requirement}, got {text!r}")
        return value

    convert.__name__ = name
    convert.__doc__ = f"argparse type: {requirement}."
    return convert


finite_float = _flag_type("finite_float", lambda v: True, "a finite number")
positive_float = _flag_type("positive_float", lambda v: v > 0, "> 0")
nonneg_float = _flag_type("nonneg_float", lambda v: v >= 0, ">= 0")
probability = _flag_type("probability", lambda v: 0 <= v <= 1, "in [0, 1]")
unit_interval_open = _flag_type("unit_interval_open", lambda v: 0 <= v < 1, "in [0, 1)")
positive_int = _flag_type("positive_int", lambda v: v >= 1, ">= 1", integer=True)
nonneg_int = _flag_type("nonneg_int", lambda v: v >= 0, ">= 0", integer=True)
any_int = _flag_type("any_int", lambda v: True, "an integer", integer=True)


def bounded_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False):
    """argparse type for a finite float in an interval, e.g. bounded_float(0, 1, high_open=True)."""
    def ok(v):
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return _flag_type("bounded_float", ok, f"in {lo}, {hi}")


def parse_float_list(text, name: str, *, check: Callable[[float], bool] | None = None,
                     requirement: str = "", allow_duplicates: bool = False) -> list[float]:
    """Parse '1e-5,1e-4' into finite floats, with a one-line error naming the flag and the bad item.

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


def progress(iterable=None, **kwargs):
    """tqdm progress bar, disabled automatically when stderr is not a terminal."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
