"""Run every benchmark in bench/ and write one markdown report: python -m bench.run_all [--out FILE].

The report starts with the machine (CPU, cores, memory), the JAX version and the device kind and
count, then a table of the scripts (status, wall time) and each script's own output. Everything
in an existing report from the NOTES_MARKER line on is written by hand (tables measured outside
these scripts, figures from elsewhere) and is carried over unchanged into the new report.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES_MARKER = "<!-- notes by hand below: bench.run_all keeps everything from this line on -->"


def machine_info() -> dict[str, str]:
    """Facts about the machine the numbers were taken on."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    devices = jax.devices()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
            "cores": str(os.cpu_count()), "memory": mem, "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device kind": devices[0].device_kind, "device count": str(len(devices))}


def compose_report(info: dict[str, str], rows: list[str], sections: list[str], old_report: str = "") -> str:
    """The markdown report: machine table, script table, script outputs, then the hand-written
    notes of old_report (from its NOTES_MARKER line on), unchanged."""
    text = ["# Benchmark results", "", "| machine | |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in info.items()]
    text += ["", "| script | status | wall s |", "|---|---|---|", *rows, "", *sections]
    report = "\n".join(text) + "\n"
    at = old_report.find(NOTES_MARKER)
    if at >= 0:
        report += "\n" + old_report[at:].rstrip("\n") + "\n"
    return report


def main(argv=None) -> int:
    import argparse

    from jaxfault.core.io import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/RESULTS.md")
    p.add_argument("--only", default=None, help="comma-separated script names (default: all)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    args = p.parse_args(argv)
    scripts = sorted(f for f in (ROOT / "bench").glob("*.py")
                     if f.stem not in ("run_all", "__init__", "accelerator_check"))
    if args.only:
        wanted = set(args.only.split(","))
        scripts = [s for s in scripts if s.stem in wanted]
    info = machine_info()
    rows, sections = [], []
    for script in scripts:
        print(f"running bench.{script.stem} ...", flush=True)
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=args.timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            status = "ok" if res.returncode == 0 else f"exit {res.returncode}"
            output = res.stdout + (("\n" + res.stderr[-3000:]) if res.returncode else "")
        except subprocess.TimeoutExpired as e:
            status, output = f"timeout after {args.timeout:.0f} s", (e.stdout or b"").decode(errors="replace")
        wall = time.perf_counter() - t0
        rows.append(f"| `bench.{script.stem}` | {status} | {wall:.0f} |")
        sections.append(f"### bench.{script.stem}\n\n```\n{output.strip()}\n```\n")
        print(f"  {status} in {wall:.0f} s", flush=True)
    old = Path(args.out).read_text(encoding="utf-8") if Path(args.out).is_file() else ""
    atomic_write_text(args.out, compose_report(info, rows, sections, old))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
