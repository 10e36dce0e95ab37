"""Train a small byte-level language model: python -m train.lm --layers 2 --width 128 --steps 600.

Without --out the model goes into the model cache as the default language model (the one the
language-model CLIs use when no --checkpoint is given)."""
from __future__ import annotations

from jaxfault.checkpoints import check_checkpoint_output
from jaxfault.cli import ArgumentParser, positive_float, positive_int, run_main, seed_int
from jaxfault.errors import JaxfaultError, nearest_hint
from jaxfault.lm import LM_FAMILIES
from jaxfault.precision import PRECISIONS
from jaxfault.zoo import LM_DEFAULTS, default_language_model, train_and_save_lm

D = LM_DEFAULTS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.lm", description=__doc__)
    p.add_argument("--family", default=D["family"], help=f"model family: {', '.join(LM_FAMILIES)}")
    p.add_argument("--corpus", default=D["corpus"],
                   help="text corpus: kjv (Debian's bible-kjv), a TFDS text dataset, or NAME for NAME.txt in --data-dir")
    p.add_argument("--data-dir", default=None, help="folder with NAME.txt corpora or the TFDS data_dir")
    p.add_argument("--layers", type=positive_int, default=D["layers"], help="decoder layers")
    p.add_argument("--width", type=positive_int, default=D["width"], help="model width (embedding size)")
    p.add_argument("--heads", type=positive_int, default=D["heads"], help="attention heads (must divide --width)")
    p.add_argument("--seq-len", type=positive_int, default=D["seq_len"], help="tokens per training window")
    p.add_argument("--steps", type=positive_int, default=D["steps"], help="optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=D["batch_size"], help="windows per step")
    p.add_argument("--lr", type=positive_float, default=D["learning_rate"],
                   help="peak AdamW learning rate (linear warm-up, cosine decay)")
    p.add_argument("--seed", type=seed_int, default=D["seed"], help="seed of the initialisation and the batches")
    p.add_argument("--val-windows", type=positive_int, default=D["val_windows"],
                   help="validation windows of --seq-len tokens")
    p.add_argument("--precision", choices=PRECISIONS, default="default",
                   help="float32 matmul precision of the training steps ('default': the backend's fast mode)")
    p.add_argument("--out", default=None,
                   help="checkpoint directory (default: the model cache, where it becomes the default language model)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.family not in LM_FAMILIES:
        raise JaxfaultError(f"unknown model family {args.family!r}{nearest_hint(args.family, LM_FAMILIES)}; "
                            f"choose one of {', '.join(LM_FAMILIES)}")
    if args.width % args.heads:
        raise JaxfaultError(f"--width {args.width} is not a multiple of --heads {args.heads}")
    settings = dict(family=args.family, corpus=args.corpus, layers=args.layers, width=args.width, heads=args.heads,
                    seq_len=args.seq_len, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                    seed=args.seed, val_windows=args.val_windows)
    if args.out is not None:
        check_checkpoint_output(args.out, overwrite=args.overwrite)  # before a single step is spent
        metrics = train_and_save_lm(args.out, data_dir=args.data_dir, precision=args.precision, **settings)
        out = args.out
    else:
        from jaxfault.checkpoints import read_metadata

        out = default_language_model(data_dir=args.data_dir, **settings)
        metrics = read_metadata(out)["metrics"]
    print(f"validation perplexity {metrics['val_perplexity']:.3f} (nll {metrics['val_nll']:.4f} nats/byte over "
          f"{metrics['val_tokens']} tokens); unigram baseline {metrics['unigram_perplexity']:.3f}; "
          f"{metrics['seconds']:.0f} s of training; checkpoint: {out}")
    print(f"next: python -m eval.sparrow --checkpoint {out} --ber 1e-3")
    return 0


if __name__ == "__main__":
    run_main(main)
