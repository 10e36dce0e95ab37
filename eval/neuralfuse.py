"""Evaluate a NeuralFuse generator:
python -m eval.neuralfuse --generator-checkpoint RUN_DIR [--ber 0.01] [--models M] [--sweep 0.001,0.005,0.01,0.02]
Clean accuracy and the accuracy of M unseen perturbed models (seeds 50000..) without and with
the generator (mean, std, recovery); JSON + table, and a plot for a sweep."""
from __future__ import annotations

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.neuralfuse.evaluate import GeneratorEvaluation, format_table, write_report


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.neuralfuse", description=__doc__)
    add_setting_flags(p, GeneratorEvaluation)
    p.add_argument("--out", default="runs/neuralfuse_eval", help="folder for neuralfuse_eval.json (+ sweep plot)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files (default: refuse)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = GeneratorEvaluation(**settings_from_args(args, GeneratorEvaluation))
    paths = run.prepare_output(args.out, overwrite=args.overwrite)
    report = run.evaluate()
    print(format_table(report))
    for path in write_report(report, paths):
        print(f"wrote {path}")
    if run.sweep is not None:
        print(f"next: accuracy vs SRAM energy of these BERs: python -m eval.tradeoff {paths[0]}")
    else:
        print(f"next: accuracy vs BER, with a plot: python -m eval.neuralfuse --generator-checkpoint "
              f"{run.generator_checkpoint} --sweep 0.005,0.01,0.02 --out {args.out}_sweep")
    return 0


if __name__ == "__main__":
    run_main(main)
