"""Accuracy vs energy of protection for every operating point of the protection methods' results
(files in the row schema jaxfault.rows/1: the JSONs of eval.run, eval.sparrow, eval.swim and
eval.neuralfuse, and eval.campaign results files), with the Pareto front per method family.

  python -m eval.tradeoff runs/sparrow/sweep_T10_s0.json runs/nf_eval/neuralfuse_eval.json \
      runs/swim/swim.json --network lenet --out runs/tradeoff
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.energy import tradeoff as T
from jaxfault.energy.report import TradeoffRun


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.tradeoff", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result files in the row schema jaxfault.rows/1 (docs/energy.md)")
    add_setting_flags(p, TradeoffRun)
    p.add_argument("--overwrite", action="store_true", help="replace tradeoff.json and tradeoff.png of an earlier run in --out (default: refuse)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = TradeoffRun(**settings_from_args(args, TradeoffRun))
    run.check(overwrite=args.overwrite)
    rows = run.evaluate(args.results)
    print(T.format_rows(rows))
    print(T.format_legend(rows))
    for path in run.write(rows):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
