"""Progress of long runs: a tqdm bar on a terminal, otherwise periodic log lines with done/total,
rate and ETA (logs, CI, nohup). A library module, so that training loops need not import the CLI
plumbing."""
from __future__ import annotations

import sys


class LogProgress:
    """Progress for logs and CI: a line at the start, one after `first` seconds (so that the time
    left is known early), then at most every `interval` seconds one line with done/total, rate and
    ETA, and a last line at the end (tqdm's update/close API). Give `total` for the whole run, not
    one phase of it, so that the ETA is the run's."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", interval=30.0, initial=0, file=None,
                 first=5.0, **_):
        import time

        self.iterable, self.desc, self.unit, self.interval = iterable, desc or "progress", unit, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = initial
        self.start_n = initial
        self.file = file or sys.stderr
        self._time = time.monotonic
        self.t0 = self._time()
        self.next_at = self.t0 + min(first, interval)
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
        if now >= self.next_at:
            self.next_at = now + self.interval
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
        kwargs.pop("first", None)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    kwargs.pop("disable", None)
    kwargs.pop("dynamic_ncols", None)
    kwargs.pop("leave", None)
    return LogProgress(iterable, **kwargs)


class RunClock:
    """The time left of a run made of `total` like units of work (schemes, configurations),
    for runs whose units are single compiled calls that cannot report progress from inside:
    after each unit, `done()` returns ' (k/total done, E s elapsed, about R s left)', R from the
    mean time of the units done so far."""

    def __init__(self, total: int, unit: str = "done"):
        import time

        self.total, self.unit, self.k = int(total), unit, 0
        self._time = time.monotonic
        self.t0 = self._time()

    def done(self, n: int = 1) -> str:
        self.k += n
        elapsed = self._time() - self.t0
        tail = f", about {self.left():.0f} s left" if self.k < self.total else ""
        return f" ({self.k}/{self.total} {self.unit}, {elapsed:.0f} s elapsed{tail})"

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` of other work (a phase of another kind) out of the rate."""
        self.t0 += seconds

    def left(self) -> float:
        """Seconds left at the mean rate so far (0 before the first unit)."""
        elapsed = self._time() - self.t0
        return elapsed / self.k * (self.total - self.k) if self.k else 0.0
