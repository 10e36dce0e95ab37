"""Shared CLI plumbing: one-line errors with exit code 2 (the library's `setting` names shown as
the --setting flags), and argparse types for numeric flags that name the flag and the value."""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Callable, Sequence

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.keys import MAX_SEED

# Anything float() reads as a negative number, including exponents, inf and nan: argparse's own
# pattern (-1, -.5) misses '-1e-3', which it then takes for an unknown option.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exits with code 2, and that reads any
    negative number ('-1e-3', '-inf') as a flag's value so that range checks can name it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        if sys.argv and str(sys.argv[0]).startswith("jaxfault "):
            kwargs["prog"] = sys.argv[0]       # run as `jaxfault COMMAND`: usage lines name that command
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER
        self.add_argument("--no-compile-cache", action="store_true",
                          help="turn off the persistent XLA compilation cache (by default the cache is on, in "
                               "<jaxfault cache>/xla; jaxfault.cli.run_main, the process's entry, turns it on)")

    def error(self, message: str):  # noqa: D401 - argparse API
        # the same one-line form as every other bad input ('error: ...'); the usage text stays in --help
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def format_default(value) -> str:
    """A default as --help shows it: floats in %g form (0.0600815, not 0.06008148193359374)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that states every option's default (appended when the help text does not say it),
    also for options declared without help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is not argparse.SUPPRESS and action.option_strings and "default" not in text
                and not action.required
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            default = action.default
            if isinstance(action, argparse._StoreTrueAction):
                default = "off"
            elif default is None:
                default = "none"
            default = format_default(default).replace("%", "%%")
            text = f"{text} (default: {default})" if text else f"(default: {default})"
        return text

    def _format_action(self, action):
        # argparse prints no help column for an action without help text: give it one, so that
        # its default is shown too
        if not action.help and action.option_strings:
            import copy

            action = copy.copy(action)
            action.help = self._get_help_string(action) or None
        return super()._format_action(action)


def import_plugins() -> list[str]:
    """Import the modules named in $JAXFAULT_PLUGINS (comma-separated), so that schemes and fault
    models they register are available to every CLI (docs/extending.md)."""
    import importlib
    import os

    names = [n.strip() for n in os.environ.get("JAXFAULT_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise JaxfaultError(f"JAXFAULT_PLUGINS: cannot import {name!r}: {e}") from None
    return names


def compilation_cache_dir():
    """Where compiled XLA programs persist between runs: <jaxfault cache>/xla."""
    from jaxfault.engine.compile_cache import default_cache_dir

    return default_cache_dir()


def enable_compilation_cache(path=None) -> None:
    """Turn on JAX's persistent compilation cache (jaxfault.enable_compile_cache)."""
    from jaxfault.engine.compile_cache import enable_compile_cache

    enable_compile_cache(path)


class CacheReport:
    """Counts this process's persistent-cache lookups (JAX's monitoring events) for the one line a
    CLI prints at its end, so that a user sees whether a run compiled or loaded its programs."""

    HIT, REQUEST, SAVED = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/compile_requests_use_cache",
                           "/jax/compilation_cache/compile_time_saved_sec")

    def __init__(self, path):
        self.path, self.hits, self.requests, self.saved = path, 0, 0, 0.0

    def __enter__(self):
        import jax

        jax.monitoring.register_event_listener(self._event)
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        return self

    def __exit__(self, *exc):
        import jax

        jax.monitoring.unregister_event_listener(self._event)
        jax.monitoring.unregister_event_duration_listener(self._duration)
        return False

    def _event(self, event, **kwargs):
        if event == self.HIT:
            self.hits += 1
        elif event == self.REQUEST:
            self.requests += 1

    def _duration(self, event, duration, **kwargs):
        if event == self.SAVED:
            self.saved += float(duration)

    def line(self) -> str | None:
        """'compilation cache: ...' or None when nothing was looked up."""
        if self.requests == 0:
            return None
        if self.hits:
            saved = f", about {self.saved:.0f} s of compilation saved" if self.saved >= 0.5 else ""
            return (f"compilation cache: {self.hits} of {self.requests} program(s) loaded from {self.path}"
                    f"{saved}")
        return (f"compilation cache: {self.requests} program(s) compiled; those taking over 0.2 s are stored in "
                f"{self.path} for the next run")


def _drop_closed_event_loop_reports() -> None:
    """In a CLI process (which this entry point owns, unlike the library): after orbax fails to
    restore a damaged checkpoint, tensorstore reads still in flight call back into orbax's closed
    event loop, and Python reports each 'RuntimeError: Event loop is closed' as a traceback after
    the one-line error. Drop exactly that report; pass every other one on."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxfault_cli", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    hook._jaxfault_cli = True
    sys.unraisablehook = hook


SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(message: str) -> str:
    """message with every setting the library names as `name` written as the flag --name (dashes
    for underscores): the library speaks of settings, a CLI user types flags."""
    return SETTING.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(message))


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI main(argv) as a process's entry point. It owns what is process-wide: it imports
    $JAXFAULT_PLUGINS, turns on the persistent compilation cache (unless --no-compile-cache or
    --help is given) and reports its use in one line; JaxfaultError becomes 'error: ...' on
    stderr and exit code 2. Calling main(argv) directly sets none of this up."""
    import contextlib

    _drop_closed_event_loop_reports()
    try:
        import_plugins()
        given = sys.argv[1:] if argv is None else list(argv)
        caching = not {"--no-compile-cache", "-h", "--help"} & set(given)
        if caching:
            enable_compilation_cache()
        report = CacheReport(compilation_cache_dir()) if caching else None
        with report if report is not None else contextlib.nullcontext():
            code = main(argv)
        if report is not None and (line := report.line()) is not None:
            print(line)
    except JaxfaultError as e:
        print(f"error: {as_flags(e)}", file=sys.stderr)
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


def add_model_flags(ap: argparse.ArgumentParser) -> None:
    """--checkpoint and --task, the same on every CLI that evaluates a classifier or a language model."""
    ap.add_argument("--checkpoint", default=None,
                    help="classifier or language-model checkpoint dir, or a Hugging Face folder (default: the cached "
                         "default LeNet; with --task language_model the cached default language model)")
    ap.add_argument("--task", choices=("classification", "language_model"), default=None,
                    help="what the model is scored by (default: the checkpoint's kind); language_model reports "
                         "perplexity over validation windows of the model's corpus")


def seed_int(text):
    """argparse type of every CLI's --seed: an integer in [0, MAX_SEED], what the key derivation
    (jaxfault.core.keys.root_key) takes."""
    value = nonneg_int(text)
    if value > MAX_SEED:
        raise FlagValueError(f"must be <= {MAX_SEED} (the key derivation takes 32 bits), got {text!r}")
    return value


def strategy_flag(text):
    """argparse type: a batching strategy (auto, vmap, map, loop or map:B), validated up front."""
    from jaxfault.core.batching import parse_strategy

    try:
        parse_strategy(str(text))
    except JaxfaultError as e:
        raise FlagValueError(as_flags(e)) from None
    return str(text)


def input_shape_flag(text: str) -> tuple[int, ...]:
    """argparse type for --input H,W,C (or a language model's context length L); argparse names
    the flag in its one-line error."""
    from jaxfault.energy.inputs import parse_shape

    try:
        return parse_shape(text, name="")
    except JaxfaultError as e:
        raise FlagValueError(as_flags(e).strip(": ")) from None


def bounded_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False):
    """argparse type for a finite float in an interval, e.g. bounded_float(0, 1, high_open=True)."""
    def ok(v):
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return _flag_type("bounded_float", ok, f"in {lo}, {hi}")


# how add_setting_flags reads a setting's value, by the kind jaxfault.core.config.setting declares
SETTING_KINDS = {"probability": probability, "positive_int": positive_int, "nonneg_int": nonneg_int,
                 "positive_float": positive_float, "nonneg_float": nonneg_float, "finite_float": finite_float,
                 "seed": seed_int, "strategy": strategy_flag, "shape": input_shape_flag, None: None}


def add_setting_flags(ap: argparse.ArgumentParser, cls) -> None:
    """One flag per setting of config dataclass `cls` (fields declared with
    jaxfault.core.config.setting), named, typed and described as the field declares; each flag's value
    lands in the namespace under the field's name (see settings_from_args)."""
    import dataclasses

    from jaxfault.core.config import settings_of

    for f in settings_of(cls):
        meta = f.metadata
        names = meta["flag"] or f.name
        flags = tuple("--" + n.replace("_", "-") for n in ((names,) if isinstance(names, str) else names))
        text = as_flags(meta["help"]).replace("%", "%%")
        if meta["kind"] == "switch":
            ap.add_argument(*flags, dest=f.name, action="store_true", help=text)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ap.add_argument(*flags, dest=f.name, type=SETTING_KINDS[meta["kind"]], choices=meta["choices"],
                        required=required, default=None if required else f.default, help=text)


def settings_from_args(args: argparse.Namespace, cls) -> dict:
    """{field: value} of the settings of `cls`, read from the namespace add_setting_flags filled."""
    from jaxfault.core.config import settings_of

    return {f.name: getattr(args, f.name) for f in settings_of(cls)}
