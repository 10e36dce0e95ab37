"""User-facing errors: one clear line naming the bad value, exit code 2 from CLIs.

The library names a setting in its messages as `name` (the config field, in backticks), never as
a command-line flag: a Python caller reads "`test_subset` must be in [1, 10000], got 0", and
jaxfault.cli shows the same message as "--test-subset must be in [1, 10000], got 0".
"""


class JaxfaultError(ValueError):
    """A bad input or missing resource, reported as one line (CLIs exit with code 2)."""


def check(condition: bool, message: str) -> None:
    """Raise JaxfaultError(message) unless condition holds."""
    if not condition:
        raise JaxfaultError(message)


def check_probability(name: str, value: float, *, closed_upper: bool = True) -> float:
    """Return value as float if it is a number in [0, 1] (or [0, 1) when closed_upper is False)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise JaxfaultError(f"{name} must be a number, got {plain(value)!r}") from None
    upper_ok = v <= 1.0 if closed_upper else v < 1.0
    if not (v >= 0.0 and upper_ok):  # also rejects NaN
        interval = "[0, 1]" if closed_upper else "[0, 1)"
        raise JaxfaultError(f"{name} must be in {interval}, got {plain(value)!r}")
    return v


def check_folder(name: str, path) -> None:
    """Raise a one-line JaxfaultError naming setting `name` unless `path` is None or an existing
    folder (a checkpoint, checked before any work)."""
    from pathlib import Path

    check(path is None or Path(path).is_dir(), f"`{name}` {str(path)!r} is not a directory")


def nearest_hint(name, choices) -> str:
    """' (did you mean X?)' for the closest of choices to name, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def plain(value):
    """value with numpy/JAX scalars and arrays turned into Python numbers and lists, so that
    messages print 0.5 rather than np.float64(0.5); other values are returned unchanged."""
    if type(value) in (str, bytes, bool, int, float) or value is None:  # np.float64 subclasses float
        return value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if hasattr(value, "__array__") or type(value).__module__ == "numpy":
        import numpy as np

        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value


def one_line(text) -> str:
    """text on one line (newlines folded), for error messages that quote other errors."""
    return " ".join(str(text).split())
