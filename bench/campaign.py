"""Traced rates in campaigns: a 6-BER sweep costs about as much as a 1-BER one.

    python -m bench.campaign [--examples 1000] [--trials 5] [--checkpoint DIR]

Runs two campaigns of the example campaign's model (examples/campaign_sparrow.json, scheme
sparrow) on a small evaluation set, each in a fresh process (so compilation is counted): one
over the example's 6 BERs and one over its largest BER alone, same trials. Prints both wall
times and their ratio (the rates are traced, so the sweep compiles one program; a per-BER
recompilation would make the ratio about 6). Then runs the whole example campaign's grid (3
schemes x 6 BERs) on a tiny evaluation set and prints how many trial programs it compiled.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxfault.cli import ArgumentParser, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "campaign_sparrow.json"


def run_campaign(config: dict, workdir: Path, name: str) -> tuple[float, int, str]:
    """(wall seconds, programs compiled, output) of `python -m eval.campaign` in a fresh process.

    The persistent compilation cache is off, so every run pays its own compilation."""
    path = workdir / f"{name}.json"
    path.write_text(json.dumps({**config, "out": str(workdir / name)}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "eval.campaign", str(path), "--no-compile-cache"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"campaign {name} failed:\n{proc.stdout}\n{proc.stderr}")
    m = re.search(r"(\d+) trial program\(s\) compiled", proc.stdout)
    return wall, int(m.group(1)) if m else -1, proc.stdout


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m bench.campaign", description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=positive_int, default=1000, help="evaluation images (default: 1000)")
    ap.add_argument("--trials", type=positive_int, default=5, help="trials per point (default: 5)")
    ap.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: the example's, the cached LeNet)")
    a = ap.parse_args(argv)
    example = json.loads(EXAMPLE.read_text())
    entry = example["grid"][0]
    bers = entry["ber"]
    base = {"checkpoint": a.checkpoint or example.get("checkpoint"), "seed": 0, "trials": a.trials,
            "eval_examples": a.examples, "strategy": "auto"}
    one = {**entry, "scheme": "sparrow", "ber": [max(bers)]}
    six = {**entry, "scheme": "sparrow", "ber": bers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # warm the model cache outside the timed runs
        run_campaign({**base, "eval_examples": 10, "trials": 1, "grid": [{**one}]}, tmp, "warm")
        t1, c1, _ = run_campaign({**base, "grid": [one]}, tmp, "one_ber")
        t6, c6, _ = run_campaign({**base, "grid": [six]}, tmp, "six_bers")
        _, c_example, _ = run_campaign({**base, "eval_examples": 20, "trials": 1, "grid": example["grid"]}, tmp, "example")
    print(f"campaign of scheme sparrow, {a.examples} images x {a.trials} trials, fresh processes:")
    print(f"  1 BER  ({max(bers):g}):         {t1:7.1f} s wall, {c1} program(s) compiled")
    print(f"  6 BERs ({', '.join(f'{b:g}' for b in bers)}): {t6:7.1f} s wall, {c6} program(s) compiled")
    print(f"  ratio 6-BER / 1-BER: {t6 / t1:.2f}  (target <= 1.5)")
    n_points = 1
    for v in entry.values():
        n_points *= len(v) if isinstance(v, list) else 1
    print(f"examples/campaign_sparrow.json: {n_points} points compiled {c_example} trial program(s) (target <= 3)")
    return 0


if __name__ == "__main__":
    run_main(main)
