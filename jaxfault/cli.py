"""Shared CLI plumbing: one-line errors with exit code 2, and a quiet-when-not-a-TTY progress bar."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from jaxfault.errors import JaxfaultError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exits with code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def parse_float_list(text: str, name: str) -> list[float]:
    """Parse '1e-5,1e-4' into floats, with a one-line error naming the bad item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise JaxfaultError(f"{name}: {item!r} is not a number") from None
    if not out:
        raise JaxfaultError(f"{name}: empty list {text!r}")
    return out


def progress(iterable=None, **kwargs):
    """tqdm progress bar, disabled automatically when stderr is not a terminal."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
