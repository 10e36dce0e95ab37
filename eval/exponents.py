"""Exponent-difference histogram of a model's weights (which blocks fit Sparrow's 4-bit mode).

    python -m eval.exponents [--checkpoint DIR] [--block-size 64] [--exclude-zeros] [--out DIR]

Writes exponents_B{B}_{policy}.csv / .json / .xlsx (sheets Count and Proportion; only when
openpyxl is installed) / .png under --out, and prints which zero policy was used.
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.ecc.exponents import ExponentRun, summary_text, write_outputs


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m eval.exponents", description=__doc__.split("\n\n")[0])
    add_setting_flags(ap, ExponentRun)
    ap.add_argument("--out", default="runs/exponents", help="output directory")
    ap.add_argument("--overwrite", action="store_true", help="replace existing result files (default: refuse)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run = ExponentRun(**settings_from_args(a, ExponentRun))
    run.prepare_output(a.out, overwrite=a.overwrite)
    r = run.evaluate()
    print(summary_text(r, run.block_size), end="")
    print("wrote " + ", ".join(map(str, write_outputs(a.out, r["model"], r))))
    print(f"next: python -m eval.sparrow --ber 1e-3 --block-size {a.block_size}"
          + (f" --checkpoint {a.checkpoint}" if a.checkpoint else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
