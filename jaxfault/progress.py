"""Progress of long runs: a tqdm bar on a terminal, otherwise periodic log lines with done/total,
rate and ETA (logs, CI, nohup). A library module, so that training loops need not import the CLI
plumbing."""
from __future__ import annotations

import sys


class LogProgress:
    """Progress for logs and CI: a line at the start, then at most every `interval` seconds one
    line with done/total, rate and ETA, and a last line at the end (tqdm's update/close API)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", interval=30.0, initial=0, file=None, **_):
        import time

        self.iterable, self.desc, self.unit, self.interval = iterable, desc or "progress", unit, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = initial
        self.start_n = initial
        self.file = file or sys.stderr
        self._time = time.monotonic
        self.t0 = self.last = self._time()
        self.postfix = ""
        tot = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{tot} {self.unit}", file=self.file, flush=True)

    def line(self) -> str:
        el = self._time() - self.t0
        done = self.n - self.start_n
        rate = done / el if el > 0 else 0.0
        tot = f"/{self.total}" if self.total else ""
        eta = f", ETA {(self.total - self.n) / rate:.0f} s" if self.total and rate > 0 else ""
        post = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}{tot} {self.unit} ({rate:.3g} {self.unit}/s, {el:.0f} s elapsed{eta}){post}"

    def update(self, n=1):
        self.n += n
        now = self._time()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.file, flush=True)

    def set_postfix(self, ordered_dict=None, **kwargs):
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def close(self):
        print(self.line() + " done", file=self.file, flush=True)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable=None, **kwargs):
    """A tqdm bar when stderr is a terminal; otherwise LogProgress lines (at most every ~30 s,
    with done/total, rate and ETA), so logs, CI and nohup runs show progress too."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        kwargs.pop("interval", None)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    kwargs.pop("disable", None)
    kwargs.pop("dynamic_ncols", None)
    kwargs.pop("leave", None)
    return LogProgress(iterable, **kwargs)
