"""Train a base classifier: python -m train.base --model lenet --dataset fashion_mnist --epochs 10."""
from __future__ import annotations

from jaxfault.training.checkpoints import check_checkpoint_output
from jaxfault.cli import ArgumentParser, positive_float, positive_int, run_main, seed_int
from jaxfault.core.precision import PRECISIONS
from jaxfault.core.errors import JaxfaultError, nearest_hint
from jaxfault.models import MODEL_NAMES
from jaxfault.training.zoo import DEFAULTS, train_and_save


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.base", description=__doc__)
    p.add_argument("--model", default=DEFAULTS["model"], help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="TFDS name or local IDX dataset")
    p.add_argument("--data-dir", default=None, help="folder with IDX files or the TFDS data_dir")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"], help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"], help="training batch size")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["learning_rate"],
                   help="peak Adam learning rate (cosine decay)")
    p.add_argument("--seed", type=seed_int, default=DEFAULTS["seed"], help="seed of the initialisation and the data order")
    p.add_argument("--precision", choices=PRECISIONS, default="default",
                   help="float32 matmul/conv precision of the training steps ('default': the backend's fast mode)")
    p.add_argument("--qat", action="store_true",
                   help="weight fake-quantization while training: symmetric per tensor, straight-through gradient "
                        "(docs/faults.md, 'The quantizer'; --quant-bits sets the precision)")
    p.add_argument("--quant-bits", type=positive_int, default=DEFAULTS["quant_bits"], help="precision for --qat: 4, 8 or 16")
    p.add_argument("--train-var", type=float, default=None,  # checked (finite, >= 0) by make_training_noise_fn
                   help="SWIM noise-aware training: a fresh device-variation draw of this sigma every step "
                        "(docs/swim.md, 'The model of device variation')")
    p.add_argument("--out", default="runs/base", help="checkpoint directory (default runs/base)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint already in --out (atomically, once the new one is saved)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.model not in MODEL_NAMES:
        raise JaxfaultError(f"unknown model {args.model!r}{nearest_hint(args.model, MODEL_NAMES)}; "
                            f"choose one of {', '.join(MODEL_NAMES)}")
    if args.qat:
        from jaxfault.core.quant import check_bits

        check_bits(args.quant_bits)
    check_checkpoint_output(args.out, overwrite=args.overwrite)  # before a single epoch is spent
    noise_fn, extra = None, None
    if args.train_var is not None:
        from jaxfault.swim.variation import make_training_noise_fn

        noise_fn, extra = make_training_noise_fn(args.train_var), {"train_var": args.train_var}
    metrics = train_and_save(args.out, model=args.model, dataset=args.dataset, epochs=args.epochs,
                             batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, qat=args.qat,
                             quant_bits=args.quant_bits, data_dir=args.data_dir, weight_noise_fn=noise_fn,
                             extra_config=extra, precision=args.precision)
    print(f"final test accuracy {metrics['test_accuracy']:.4f}  "
          f"({metrics['seconds_per_epoch']:.1f} s/epoch)  checkpoint: {args.out}")
    print(f"next: python -m eval.sparrow --ber 1e-3 --checkpoint {args.out}   (or eval.swim / eval.accuracy)")
    return 0


if __name__ == "__main__":
    run_main(main)
