"""Check jaxfault on a machine with an accelerator and write one markdown report.

    bash scripts/accelerator_check.sh [--quick] [--report FILE] [--only tests,bench,main] [--workers N]
    python -m bench.accelerator_check ...            (the same)

Steps (each a subprocess in the repository root; its command, exit code, wall time and the tail
of its output go into the report):

* ``tests``: the default test suite (``python -m pytest -q``), with ``-n N`` when pytest-xdist is
  installed. The workers share one accelerator: XLA_PYTHON_CLIENT_PREALLOCATE=false and
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.8/N keep each of them from reserving 75 % of its memory.
* ``bench``: every benchmark in bench/ (the scripts ``python -m bench.run_all`` runs), one step each.
* ``main``: the main job, ``python -m eval.sparrow --ber 1e-3`` with its output in a temporary folder.

``--quick`` runs a small subset instead (one small test file, one benchmark at small sizes, the
main job on 200 images with 2 trials): the path the project's own tests take on a CPU. Without an
accelerator the check still runs, on the CPU, and says so. ``--step NAME=COMMAND`` (repeatable)
runs the given commands instead of the default steps. The report names the device (kind,
platform, count), the JAX version, the date and the git commit. Exit code: 0 when every step
exited with 0, 1 when one did not, 2 for bad arguments.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("tests", "bench", "main")
NOT_BENCHMARKS = ("__init__", "run_all", "accelerator_check")
QUICK_TEST_FILE = "tests/test_bits.py"
QUICK_BENCH = ("bench.energy", "--points", "2000", "--loop-points", "20", "--repeats", "1")
MAIN_JOB = ("eval.sparrow", "--ber", "1e-3")
QUICK_MAIN = ("--limit", "200", "--trials", "2")
TAIL_LINES = 40
TAIL_CHARS = 6000

_DEVICE_SNIPPET = """
import json, jax, jaxlib
d = jax.devices()
print(json.dumps({"platform": d[0].platform, "device_kind": d[0].device_kind, "device_count": len(d),
                  "backend": jax.default_backend(), "jax": jax.__version__,
                  "jaxlib": getattr(jaxlib, "__version__", "?")}))
"""


@dataclasses.dataclass
class Step:
    name: str
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    step: Step
    returncode: int
    wall_s: float
    output: str
    timed_out: bool = False


def benchmark_names(root: Path = ROOT) -> list[str]:
    """The benchmark modules of bench/ (those ``python -m bench.run_all`` runs), sorted."""
    return sorted(f.stem for f in (root / "bench").glob("*.py") if f.stem not in NOT_BENCHMARKS)


def device_info(python: str = sys.executable) -> dict:
    """The first device's platform and kind, the device count and the JAX version, asked of a
    fresh interpreter (this process never starts a backend, so it holds no accelerator memory)."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        res = subprocess.run([python, "-c", _DEVICE_SNIPPET], capture_output=True, text=True, env=env, timeout=600)
        if res.returncode == 0:
            return json.loads(res.stdout.strip().splitlines()[-1])
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"error": str(e)}


def git_commit(root: Path = ROOT) -> str:
    """HEAD's commit (short), marked when the working tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def has_accelerator(info: dict) -> bool:
    return info.get("platform", "cpu") not in ("cpu", None) and "error" not in info


def default_report_path(info: dict, date: str) -> Path:
    kind = re.sub(r"[^A-Za-z0-9]+", "_", str(info.get("device_kind", "unknown"))).strip("_") or "unknown"
    return ROOT / "bench" / f"accelerator_report_{kind}_{date}.md"


def parse_step(text: str) -> Step:
    name, sep, command = text.partition("=")
    if not sep or not name.strip() or not command.strip():
        raise ValueError(f"--step must be NAME=COMMAND, got {text!r}")
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return Step(name.strip(), argv)


def plan_steps(*, quick: bool, groups: list[str], workers: int | None, accelerator: bool, out_dir: Path) -> list[Step]:
    """The default steps of a full or quick check (see the module docstring)."""
    py = sys.executable
    steps: list[Step] = []
    if "tests" in groups:
        argv = [py, "-m", "pytest", "-q"] + ([QUICK_TEST_FILE] if quick else [])
        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        n = workers if workers is not None else (4 if accelerator and not quick else 1)
        if n > 1 and importlib.util.find_spec("xdist") is not None:
            argv += ["-n", str(n)]
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.8 / n:.2f}"
        steps.append(Step("tests", argv, env))
    if "bench" in groups:
        if quick:
            steps.append(Step(QUICK_BENCH[0], [py, "-m", *QUICK_BENCH]))
        else:
            steps += [Step(f"bench.{b}", [py, "-m", f"bench.{b}"]) for b in benchmark_names()]
    if "main" in groups:
        argv = [py, "-m", *MAIN_JOB, "--out", str(out_dir / "sparrow")] + (list(QUICK_MAIN) if quick else [])
        steps.append(Step("main job", argv))
    return steps


def run_step(step: Step, timeout: float) -> Outcome:
    """Run one step in the repository root (its own process group, killed whole on timeout)."""
    env = dict(os.environ)
    for k, v in step.env.items():
        env.setdefault(k, v)  # a value the caller set wins
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
    except OSError as e:
        return Outcome(step, 127, time.perf_counter() - t0, f"cannot start: {e}")
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Outcome(step, proc.returncode, time.perf_counter() - t0, out or "")
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        out, _ = proc.communicate()
        return Outcome(step, 124, time.perf_counter() - t0, (out or "") + f"\n[killed after {timeout:.0f} s]", True)


def display(argv: list[str]) -> str:
    """A command as a reader would type it (the interpreter shown as 'python')."""
    return shlex.join(["python" if a == sys.executable else a for a in argv])


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    out = "\n".join(text.rstrip().splitlines()[-lines:])
    if len(out) > chars:
        out = "..." + out[-chars:]
    return out.replace("```", "'''")


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(info: dict, meta: dict, outcomes: list[Outcome], pending: list[Step]) -> str:
    failed = [o for o in outcomes if o.returncode != 0]
    if pending:
        verdict = f"incomplete: {len(outcomes)} of {len(outcomes) + len(pending)} steps run"
    elif failed:
        names = ", ".join(o.step.name for o in failed)
        verdict = f"FAILED: {len(failed)} of {len(outcomes)} steps exited non-zero ({names})"
    else:
        verdict = f"passed: all {len(outcomes)} steps exited with 0"
    device = (f"{info['device_kind']} ({info['platform']}, {info['device_count']} device(s))" if "error" not in info
              else f"unknown (asking JAX failed: {info['error']})")
    rows = [("device", device), ("platform", info.get("platform", "?")),
            ("device kind", info.get("device_kind", "?")), ("device count", str(info.get("device_count", "?"))),
            ("jax / jaxlib", f"{info.get('jax', '?')} / {info.get('jaxlib', '?')}"), *meta.items(),
            ("result", verdict)]
    text = ["# jaxfault accelerator check", "", "| | |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in rows]
    if not has_accelerator(info):
        text += ["", "**Note: no accelerator was found; these steps ran on the CPU.**"]
    text += ["", "| step | command | exit code | wall s |", "|---|---|---|---|"]
    for o in outcomes:
        code = f"{o.returncode} (timeout)" if o.timed_out else str(o.returncode)
        text.append(f"| {cell(o.step.name)} | `{cell(display(o.step.argv))}` | {code} | {o.wall_s:.1f} |")
    for s in pending:
        text.append(f"| {cell(s.name)} | `{cell(display(s.argv))}` | not run yet | |")
    for o in outcomes:
        env = " ".join(f"{k}={v}" for k, v in o.step.env.items())
        command = f"command: `{display(o.step.argv)}`" + (f" (environment: `{env}`)" if env else "")
        text += ["", f"## {o.step.name}", "", command,
                 "", f"exit code {o.returncode}, wall time {o.wall_s:.1f} s; last lines of output:", "", "```",
                 tail(o.output) or "(no output)", "```"]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    from jaxfault.cli import ArgumentParser, positive_float, positive_int
    from jaxfault.core.io import atomic_write_text

    p = ArgumentParser(prog="bash scripts/accelerator_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a small subset: one test file, one benchmark at small sizes, "
                        "the main job on 200 images x 2 trials")
    p.add_argument("--report", default=None,
                   help="markdown report path (default: bench/accelerator_report_<device>_<date>.md)")
    p.add_argument("--only", default=",".join(GROUPS), help="comma-separated step groups: tests, bench, main")
    p.add_argument("--step", action="append", default=[], metavar="NAME=COMMAND",
                   help="run this command as a step instead of the default steps (repeatable; default: none)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="pytest-xdist workers for the test suite, if installed (default: 4 on an accelerator, else 1)")
    p.add_argument("--timeout", type=positive_float, default=3600.0, help="seconds per step")
    args = p.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        p.error(f"argument --only: unknown step group {bad[0] if bad else args.only!r}; "
                f"choose from {', '.join(GROUPS)}")
    try:
        custom = [parse_step(s) for s in args.step]
    except ValueError as e:
        p.error(str(e))

    info = device_info()
    accelerator = has_accelerator(info)
    if "error" in info:
        print(f"accelerator_check: could not ask JAX for its devices: {info['error']}", file=sys.stderr)
    elif not accelerator:
        print("accelerator_check: note: no accelerator found; running on the CPU", flush=True)
    else:
        print(f"accelerator_check: {info['device_kind']} ({info['platform']}, {info['device_count']} device(s))",
              flush=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    report = Path(args.report) if args.report else default_report_path(info, date)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git commit": git_commit(),
            "python": f"{platform.python_version()} ({sys.executable})",
            "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "mode": "custom steps" if custom else ("quick" if args.quick else "full") + f" ({', '.join(groups)})"}
    with tempfile.TemporaryDirectory(prefix="jaxfault-accel-") as tmp:
        steps = custom or plan_steps(quick=args.quick, groups=groups, workers=args.workers, accelerator=accelerator,
                                     out_dir=Path(tmp))
        outcomes: list[Outcome] = []
        for i, step in enumerate(steps):
            print(f"[{i + 1}/{len(steps)}] {step.name}: {display(step.argv)}", flush=True)
            o = run_step(step, args.timeout)
            outcomes.append(o)
            last = tail(o.output, 15) if o.returncode != 0 else ""
            print(f"  exit {o.returncode} in {o.wall_s:.1f} s" + (f"\n{last}" if last else ""), flush=True)
            atomic_write_text(report, render_report(info, meta, outcomes, steps[i + 1:]))
        if not steps:
            atomic_write_text(report, render_report(info, meta, outcomes, []))
    failed = [o.step.name for o in outcomes if o.returncode != 0]
    print(f"report: {report}")
    if failed:
        print(f"accelerator_check: FAILED steps: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from jaxfault.cli import run_main

    run_main(main)
