"""Train a NeuralFuse generator with EOPM (docs/neuralfuse.md, "EOPM training"):
python -m train.neuralfuse --ber 0.01 [--generator UNetS] [--n-models 5] [--lam 5] [--epochs E]
[--checkpoint BASE_DIR] [--out DIR] [--resume] [--init-generator DIR]. Without --checkpoint a QAT base model from the
model cache is used (trained once on the offline default data if missing). At the end the generator
is evaluated on unseen perturbed models, as eval.neuralfuse does (--eval-models, 0 to skip)."""
from __future__ import annotations

from jaxfault.cli import (ArgumentParser, finite_float, nonneg_float, nonneg_int, positive_float, positive_int, strategy_flag,
                          probability, run_main, seed_int)
from jaxfault.precision import PRECISIONS
from jaxfault.errors import JaxfaultError, nearest_hint
from jaxfault.models import MODEL_NAMES
from jaxfault.models.generators import GENERATOR_NAMES, create_generator
from jaxfault.neuralfuse.faults import LAYOUTS, PLACEMENTS, resolve_layout
from jaxfault.quant import check_bits


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.neuralfuse", description=__doc__)
    p.add_argument("--ber", type=probability, default=0.01, help="bit error rate of the SRAM cells (default 0.01)")
    p.add_argument("--ber0", type=probability, default=0.5, help="share of faulty cells stuck at 1 (default 0.5)")
    p.add_argument("--bits", type=positive_int, default=None, help="weight precision 4/8/16 (default: the base's QAT bits)")
    p.add_argument("--placement", default="memory_array", help=f"fault placement: {', '.join(PLACEMENTS)}")
    p.add_argument("--layout", default=None,
                   help=f"weight order in the SRAM words: {', '.join(LAYOUTS)} (default: torch, the reference's "
                        f"storage order, under memory_array; flax under independent)")
    p.add_argument("--generator", default="UNetS", help=f"one of {', '.join(GENERATOR_NAMES)}")
    p.add_argument("--n-models", type=positive_int, default=5, help="perturbed models per step (N)")
    p.add_argument("--lam", type=nonneg_float, default=5.0, help="weight of the perturbed loss (lambda)")
    p.add_argument("--epochs", type=positive_int, default=3, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per EOPM step")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (b1=0.5, b2=0.999)")
    p.add_argument("--decay-rate", type=finite_float, default=0.5, help="step decay factor")
    p.add_argument("--decay-every", type=positive_int, default=None, help="steps between decays (default: a third of the run)")
    p.add_argument("--train-subset", type=positive_int, default=None, help="train on a random subset of this many images")
    p.add_argument("--checkpoint", default=None, help="base classifier checkpoint (default: cached QAT --model)")
    p.add_argument("--model", default="lenet", help="base model from the cache when no --checkpoint")
    p.add_argument("--data-dir", default=None, help="folder with IDX files or the TFDS data_dir")
    p.add_argument("--strategy", type=strategy_flag, default="auto", help="batching of the N models: auto, map, vmap, map:B")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the data order and the per-step perturbed models")
    p.add_argument("--precision", choices=PRECISIONS, default="default",
                   help="float32 matmul/conv precision of the EOPM steps ('default': the backend's fast mode)")
    p.add_argument("--save-every", type=positive_int, default=50, help="steps between resumable state saves")
    p.add_argument("--out", default="runs/neuralfuse", help="output folder (generator/ and state/)")
    p.add_argument("--init-generator", default=None, metavar="DIR",
                   help="fine-tune the generator checkpoint DIR of an earlier run instead of a random start")
    p.add_argument("--eval-models", type=nonneg_int, default=10,
                   help="unseen perturbed models of the final evaluation (OUT/neuralfuse_eval.json; 0: skip it)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/state")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds an earlier run's state/ or generator/ "
                        "(each is replaced atomically when the new run saves its own)")
    return p


def check_outputs(out, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, an --out that cannot be written or whose earlier run would be lost:
    OUT/state or OUT/generator of an earlier run need --resume (to continue it) or --overwrite."""
    from pathlib import Path

    from jaxfault.checkpoints import is_checkpoint
    from jaxfault.io import check_output_path

    out = Path(out)
    check_output_path(out, overwrite=True, kind="dir", flag="--out")
    state, generator = out / "state", out / "generator"
    for sub in (state, generator):
        if sub.exists() and not sub.is_dir():
            raise JaxfaultError(f"--out: {sub} is a file, expected a checkpoint folder")
    check_output_path(out / "neuralfuse_eval.json", overwrite=overwrite or resume, flag="--out")
    if overwrite:
        return
    if not resume and (state.exists() or generator.exists()):
        found = state if state.exists() else generator
        raise JaxfaultError(f"--out {out} holds an earlier run ({found}); pass --resume to continue it or "
                            f"--overwrite to start a new run there")
    if resume and not is_checkpoint(state) and generator.exists():
        raise JaxfaultError(f"--out {out} holds a generator ({generator}) but no state to resume; pass "
                            f"--overwrite to train a new one there")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args.out, resume=args.resume, overwrite=args.overwrite)
    if args.bits is not None:
        check_bits(args.bits)
    create_generator(args.generator)  # validates the name before any expensive work
    resolve_layout(args.layout, args.placement)  # validates the placement and the layout, as the library does
    from jaxfault.checkpoints import read_metadata

    for flag, path, kind in (("--checkpoint", args.checkpoint, "classifier"),
                             ("--init-generator", args.init_generator, "neuralfuse_generator")):
        if path is not None and read_metadata(path)["kind"] != kind:  # one line now, not after data loading
            raise JaxfaultError(f"{flag} {path} holds a {read_metadata(path)['kind']!r}, expected a {kind!r}")
    from jaxfault.neuralfuse.train import train_neuralfuse

    base = args.checkpoint
    if base is None:
        if args.model not in MODEL_NAMES:
            raise JaxfaultError(f"unknown model {args.model!r}{nearest_hint(args.model, MODEL_NAMES)}; choose one of {', '.join(MODEL_NAMES)}")
        from jaxfault.zoo import default_classifier

        base = default_classifier(model=args.model, qat=True, data_dir=args.data_dir)
    res = train_neuralfuse(base, args.out, generator=args.generator, ber=args.ber, ber0=args.ber0, bits=args.bits,
                           placement=args.placement, layout=args.layout, n_models=args.n_models, lam=args.lam, epochs=args.epochs,
                           batch_size=args.batch_size, learning_rate=args.lr, decay_rate=args.decay_rate,
                           decay_every=args.decay_every, seed=args.seed, train_subset=args.train_subset,
                           strategy=args.strategy, data_dir=args.data_dir, save_every=args.save_every,
                           resume=args.resume, init_generator_checkpoint=args.init_generator,
                           precision=args.precision)
    print(f"generator checkpoint: {res['generator_checkpoint']}  ({res['steps']} steps)")
    eval_command = f"python -m eval.neuralfuse --generator-checkpoint {args.out} --models 10"
    if args.eval_models == 0:
        print(f"next: evaluate it on unseen perturbed models: {eval_command}")
        return 0
    from pathlib import Path

    from jaxfault.io import atomic_write_json
    from jaxfault.neuralfuse.evaluate import evaluate_generator, format_table

    print(f"evaluating on {args.eval_models} unseen perturbed models (as {eval_command.replace('10', str(args.eval_models))})",
          flush=True)
    report = evaluate_generator(res["generator_checkpoint"], models=args.eval_models, data_dir=args.data_dir)
    path = atomic_write_json(Path(args.out) / "neuralfuse_eval.json", report)
    print(format_table(report))
    print(f"wrote {path}")
    print(f"next: accuracy vs BER: python -m eval.neuralfuse --generator-checkpoint {args.out} "
          f"--sweep 0.005,0.01,0.02 --out {args.out}_sweep")
    return 0


if __name__ == "__main__":
    run_main(main)
