"""Eyeriss-like energy of a network (docs/energy.md): per-layer table, totals, JSON, plots, design-point
sweeps in one vmapped call with a Pareto table, and the energy of protection (DRAM refresh with
ECC, SRAM voltage scaling, write-verify cycles).

  python -m eval.energy --network alexnet --qw reference --qa reference --pw reference
  python -m eval.energy --network lenet --out runs/energy/lenet --plots
  python -m eval.energy --network alexnet --sweep-bits 2..16
  python -m eval.energy --network resnet18 --ecc sparrow --refresh-interval 0.064,0.256,1
  python -m eval.energy --network gpt2 --input 1024
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.energy.report import EnergyRun, report_text


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.energy", description=__doc__.split("\n\n")[0])
    add_setting_flags(p, EnergyRun)
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out (default: refuse)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = EnergyRun(**settings_from_args(args, EnergyRun))
    run.check(overwrite=args.overwrite)
    report = run.evaluate()
    print(report_text(report), end="")
    for path in run.write(report):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
