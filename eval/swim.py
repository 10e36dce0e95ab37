"""SWIM: accuracy under compute-in-memory device variation with selective write-verify.

python -m eval.swim [--checkpoint DIR] [--mask-p 0.05] [--method SM] [--dev-var 0.1]
    [--write-var 0.03] [--noise-instances 100] [--curvature becker-lecun|exact|ggn|hutchinson]
    [--curvature-examples all|N] [--selection-batch 128] [--no-gradient-term]
    [--threshold count|quantile] [--sweep-mask-p 0.01,0.05,0.1,0.2] [--strategy auto|map|vmap|loop]
    [--out DIR]

Reports clean accuracy and the mean/std accuracy over noise instances with no weight verified,
all weights verified, and the fraction mask_p chosen by the selection method(s), plus the
write-verify cycles saved versus verifying everything (library: jaxfault.swim.run).
"""
from __future__ import annotations

from pathlib import Path

from jaxfault.cli import ArgumentParser, add_setting_flags, probability, run_main, settings_from_args
from jaxfault.core.io import check_output_path
from jaxfault.swim.run import SwimConfig, format_table, run, write_report
from jaxfault.swim.selection import METHODS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.swim", description=__doc__.split("\n\n")[0])
    p.add_argument("--mask-p", type=probability, default=0.05, help="fraction of kernel weights write-verified")
    p.add_argument("--method", default="SM", help=f"selection method: {', '.join(METHODS)}")
    p.add_argument("--curvature-examples", default="all",
                   help="training images of the selection pass: 'all' (as the SWIM code) or the first N")
    p.add_argument("--no-gradient-term", action="store_true", help="score with s^2 * curvature only")
    p.add_argument("--sweep-mask-p", default=None,
                   help="comma list of mask_p: compare all methods (or --methods) at each, with a plot")
    p.add_argument("--methods", default=None, help="comma list of methods (default: --method; all for a sweep)")
    add_setting_flags(p, SwimConfig)
    p.add_argument("--out", default="runs/swim", help="folder for swim.json, swim.txt and the sweep plot")
    p.add_argument("--overwrite", action="store_true", help="replace an existing swim.json in --out")
    return p


def config_from_args(a) -> SwimConfig:
    return SwimConfig.from_command(method=a.method, methods=a.methods, mask_p=a.mask_p, sweep_mask_p=a.sweep_mask_p,
                                   curvature_examples=a.curvature_examples, gradient_term=not a.no_gradient_term,
                                   **settings_from_args(a, SwimConfig))


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    config = config_from_args(a)
    out = Path(a.out)
    check_output_path(out / "swim.json", overwrite=a.overwrite, flag="--out")
    report = run(config)
    print("\n" + format_table(report), end="")
    print(f"wrote {', '.join(map(str, write_report(report, out, sweep=a.sweep_mask_p is not None)))}")
    print(f"next: python -m eval.tradeoff {out / 'swim.json'}   (write-verify cycles saved vs accuracy)")
    return 0


if __name__ == "__main__":
    run_main(main)
