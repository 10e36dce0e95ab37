"""Evaluate a NeuralFuse generator:
python -m eval.neuralfuse --generator-checkpoint RUN_DIR [--ber 0.01] [--models M] [--sweep 0.001,0.005,0.01,0.02]
Clean accuracy and the accuracy of M unseen perturbed models (seeds 50000..) without and with
the generator (mean, std, recovery); JSON + table, and a plot for a sweep."""
from __future__ import annotations

from pathlib import Path

from jaxfault.cli import ArgumentParser, positive_int, probability, run_main, strategy_flag
from jaxfault.config import parse_float_list
from jaxfault.io import atomic_write_json, check_output_path
from jaxfault.precision import PRECISIONS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.neuralfuse", description=__doc__)
    p.add_argument("--generator-checkpoint", required=True, metavar="DIR",
                   help="the run folder train.neuralfuse wrote (its --out, e.g. runs/neuralfuse) or its generator/")
    p.add_argument("--ber", type=probability, default=None, help="bit error rate (default: the one trained for)")
    p.add_argument("--sweep", default=None, help="comma-separated BERs to evaluate instead of --ber (adds a plot)")
    p.add_argument("--ber0", type=probability, default=None, help="share stuck at 1 (default: as trained)")
    p.add_argument("--placement", default=None, help="independent or memory_array (default: as trained)")
    p.add_argument("--layout", default=None, help="weight order in the SRAM words, torch or flax (default: as trained)")
    p.add_argument("--models", type=positive_int, default=10, help="unseen perturbed models per BER (M)")
    p.add_argument("--checkpoint", default=None, help="base classifier (default: the one the generator was trained on)")
    p.add_argument("--test-subset", type=positive_int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="evaluation batch size")
    p.add_argument("--strategy", type=strategy_flag, default="auto", help="batching of the M models: auto, vmap, map, map:B or loop")
    p.add_argument("--precision", choices=PRECISIONS, default="highest", help="float32 matmul/conv precision")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: TFDS / the local IDX files)")
    p.add_argument("--out", default="runs/neuralfuse_eval", help="folder for neuralfuse_eval.json (+ sweep plot)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files (default: refuse)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from jaxfault.neuralfuse.evaluate import evaluate_generator, format_table, plot_sweep

    if args.placement is not None:
        from jaxfault.neuralfuse.faults import check_placement

        check_placement(args.placement)
    if args.layout is not None:
        from jaxfault.neuralfuse.faults import check_layout

        check_layout(args.layout)
    sweep = args.sweep is not None
    bers = (parse_float_list(args.sweep, "--sweep", check=lambda v: 0 <= v <= 1, requirement="in [0, 1]") if sweep
            else ([args.ber] if args.ber is not None else None))
    out = Path(args.out)
    check_output_path(out / "neuralfuse_eval.json", overwrite=args.overwrite, flag="--out")
    if sweep:
        check_output_path(out / "neuralfuse_sweep.png", overwrite=args.overwrite, flag="--out")
    report = evaluate_generator(args.generator_checkpoint, bers=bers, ber0=args.ber0, placement=args.placement,
                                layout=args.layout, models=args.models, base_checkpoint=args.checkpoint, test_subset=args.test_subset,
                                batch_size=args.batch_size, strategy=args.strategy, precision=args.precision,
                                data_dir=args.data_dir)
    atomic_write_json(out / "neuralfuse_eval.json", report)
    print(format_table(report))
    print(f"wrote {out / 'neuralfuse_eval.json'}")
    if sweep:
        plot_sweep(report, out / "neuralfuse_sweep.png")
        print(f"wrote {out / 'neuralfuse_sweep.png'}")
        print(f"next: accuracy vs SRAM energy of these BERs: python -m eval.tradeoff {out / 'neuralfuse_eval.json'}")
    else:
        print(f"next: accuracy vs BER, with a plot: python -m eval.neuralfuse --generator-checkpoint "
              f"{args.generator_checkpoint} --sweep 0.005,0.01,0.02 --out {out}_sweep")
    return 0


if __name__ == "__main__":
    run_main(main)
