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

from jaxfault.cli import (ArgumentParser, nonneg_float, nonneg_int, positive_float, positive_int,
                          probability, run_main, strategy_flag)
from jaxfault.config import parse_float_list
from jaxfault.precision import PRECISIONS
from jaxfault.errors import JaxfaultError, check
from jaxfault.io import atomic_write_json, atomic_write_text, check_output_path
from jaxfault.swim.run import SwimConfig, format_table, plot_sweep, run
from jaxfault.swim.selection import CURVATURES, METHODS, THRESHOLDS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.swim", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: cached LeNet on Fashion-MNIST)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: TFDS / the local IDX files)")
    p.add_argument("--mask-p", type=probability, default=0.05, help="fraction of kernel weights write-verified")
    p.add_argument("--method", default="SM", help=f"selection method: {', '.join(METHODS)}")
    p.add_argument("--alpha", type=positive_float, default=None, help="SM: 1e6 by default; saliency: 2 by default")
    p.add_argument("--dev-var", type=nonneg_float, default=0.1, help="device variation sigma (not verified)")
    p.add_argument("--write-var", type=nonneg_float, default=0.03, help="variation sigma after write-verify")
    p.add_argument("--n-bits", type=positive_int, default=8, help="bits per weight N")
    p.add_argument("--m-bits", type=positive_int, default=1, help="bits per device m (N must be a multiple)")
    p.add_argument("--noise-instances", type=positive_int, default=100, help="Monte Carlo noise draws")
    p.add_argument("--curvature", default="becker-lecun", help=f"d2L/dw2 estimator: {', '.join(CURVATURES)}")
    p.add_argument("--curvature-examples", default="all",
                   help="training images of the selection pass: 'all' (as the SWIM code) or the first N")
    p.add_argument("--selection-batch", type=positive_int, default=128, help="batch size of the gradient term")
    p.add_argument("--no-gradient-term", action="store_true", help="score with s^2 * curvature only")
    p.add_argument("--threshold", default="count", help=f"mask threshold rule: {', '.join(THRESHOLDS)}")
    p.add_argument("--hutchinson-samples", type=positive_int, default=200, help="probe vectors of the hutchinson curvature")
    p.add_argument("--sweep-mask-p", default=None,
                   help="comma list of mask_p: compare all methods (or --methods) at each, with a plot")
    p.add_argument("--methods", default=None, help="comma list of methods (default: --method; all for a sweep)")
    p.add_argument("--strategy", type=strategy_flag, default="auto", help="noise-instance batching: auto, map, map:B, vmap, loop")
    p.add_argument("--precision", default="highest", choices=PRECISIONS,
                   help="float32 matmul/conv precision of the evaluation")
    p.add_argument("--eval-batch", type=positive_int, default=1000, help="test images per forward pass")
    p.add_argument("--test-examples", type=positive_int, default=None, help="evaluate on the first N test images")
    p.add_argument("--seed", type=nonneg_int, default=0, help="root seed of the noise keys")
    p.add_argument("--out", default="runs/swim", help="folder for swim.json, swim.txt and the sweep plot")
    p.add_argument("--overwrite", action="store_true", help="replace an existing swim.json in --out")
    return p


def config_from_args(args) -> SwimConfig:
    """The validated SwimConfig of the command line (bad input raises before anything loads)."""
    if args.curvature_examples == "all":
        curvature_examples = None
    else:
        try:
            curvature_examples = int(args.curvature_examples)
        except ValueError:
            raise JaxfaultError(f"--curvature-examples must be a positive integer or 'all', "
                                f"got {args.curvature_examples!r}") from None
    mask_ps = (args.mask_p,) if args.sweep_mask_p is None else tuple(parse_float_list(
        args.sweep_mask_p, "--sweep-mask-p", check=lambda v: 0 <= v <= 1, requirement="in [0, 1]"))
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(","))
        check(all(methods) and len(set(methods)) == len(methods),
              f"--methods needs distinct comma-separated method names, got {args.methods!r}")
    elif args.sweep_mask_p is not None:
        methods = METHODS
    else:
        methods = (args.method,)
    return SwimConfig(checkpoint=args.checkpoint, data_dir=args.data_dir, methods=methods, mask_ps=mask_ps,
                      alpha=args.alpha, dev_var=args.dev_var, write_var=args.write_var, n_bits=args.n_bits,
                      m_bits=args.m_bits, noise_instances=args.noise_instances, curvature=args.curvature,
                      curvature_examples=curvature_examples, selection_batch=args.selection_batch,
                      gradient_term=not args.no_gradient_term, threshold=args.threshold,
                      hutchinson_samples=args.hutchinson_samples, strategy=args.strategy,
                      precision=args.precision, eval_batch=args.eval_batch,
                      test_examples=args.test_examples, seed=args.seed)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    out = Path(args.out)
    check_output_path(out / "swim.json", overwrite=args.overwrite, flag="--out")
    report = run(config)
    table = format_table(report)
    atomic_write_json(out / "swim.json", report)
    atomic_write_text(out / "swim.txt", table)
    print()
    print(table, end="")
    if args.sweep_mask_p is not None:
        print(f"plot: {plot_sweep(report, out / 'swim_sweep.png')}")
    print(f"results: {out / 'swim.json'}")
    print(f"next: python -m eval.tradeoff {out / 'swim.json'}   (write-verify cycles saved vs accuracy)")
    return 0


if __name__ == "__main__":
    run_main(main)
