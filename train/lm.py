"""Train a small byte-level language model: python -m train.lm --layers 2 --width 128 --steps 600.

Without --out the model goes into the model cache as the default language model (the one the
language-model CLIs use when no --checkpoint is given)."""
from __future__ import annotations

from jaxfault.cli import ArgumentParser, add_setting_flags, run_main, settings_from_args
from jaxfault.training.zoo import LMTraining


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.lm", description=__doc__)
    add_setting_flags(p, LMTraining)
    p.add_argument("--out", default=None,
                   help="checkpoint directory (default: the model cache, where it becomes the default language model)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out, metrics = LMTraining(**settings_from_args(args, LMTraining)).train(args.out, overwrite=args.overwrite)
    print(f"validation perplexity {metrics['val_perplexity']:.3f} (nll {metrics['val_nll']:.4f} nats/byte over "
          f"{metrics['val_tokens']} tokens); unigram baseline {metrics['unigram_perplexity']:.3f}; "
          f"{metrics['seconds']:.0f} s of training; checkpoint: {out}")
    print(f"next: python -m eval.sparrow --checkpoint {out} --ber 1e-3")
    return 0


if __name__ == "__main__":
    run_main(main)
