"""Train a NeuralFuse generator with EOPM (docs/neuralfuse.md, "EOPM training"):
python -m train.neuralfuse --ber 0.01 [--generator UNetS] [--n-models 5] [--lam 5] [--epochs E]
[--checkpoint BASE_DIR] [--out DIR] [--resume] [--init-generator DIR]. Without --checkpoint a QAT base model from the
model cache is used (trained once on the offline default data if missing). At the end the generator
is evaluated on unseen perturbed models, as eval.neuralfuse does (--eval-models, 0 to skip)."""
from __future__ import annotations

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.neuralfuse.training_run import TrainingRun


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.neuralfuse", description=__doc__)
    add_setting_flags(p, TrainingRun)
    p.add_argument("--out", default="runs/neuralfuse", help="output folder (generator/ and state/)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/state")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds an earlier run's state/ or generator/ "
                        "(each is replaced atomically when the new run saves its own)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = TrainingRun(**settings_from_args(args, TrainingRun))
    run.check_outputs(args.out, resume=args.resume, overwrite=args.overwrite)
    result = run.train(args.out, resume=args.resume)
    eval_command = f"python -m eval.neuralfuse --generator-checkpoint {args.out}"
    if result["evaluation"] is None:
        print(f"next: evaluate it on unseen perturbed models: {eval_command} --models 10")
        return 0
    from jaxfault.neuralfuse.evaluate import format_table

    print(format_table(result["evaluation"]))
    print(f"wrote {result['path']}")
    print(f"next: accuracy vs BER: {eval_command} --sweep 0.005,0.01,0.02 --out {args.out}_sweep")
    return 0


if __name__ == "__main__":
    run_main(main)
