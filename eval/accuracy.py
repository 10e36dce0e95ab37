"""Reload a checkpoint and print its test accuracy: python -m eval.accuracy --checkpoint DIR."""
from __future__ import annotations

from jaxfault.training.checkpoints import load_checkpoint
from jaxfault.cli import ArgumentParser, run_main
from jaxfault.data import load_dataset
from jaxfault.core.errors import JaxfaultError
from jaxfault.training import evaluate


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.accuracy", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="directory written by train.base")
    p.add_argument("--data-dir", default=None, help="folder with IDX files or the TFDS data_dir")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    data = load_dataset(ckpt.config["dataset"], data_dir=args.data_dir,
                        value_range=ckpt.config.get("value_range", "symmetric"))
    n = int(ckpt.config["num_classes"])
    if data.num_classes > n:
        raise JaxfaultError(f"{data.name} data ({data.source}) has labels up to {data.num_classes - 1}; the "
                            f"checkpoint {args.checkpoint} classifies {n} classes")
    topk = (1, 5) if n > 5 else (1,)
    acc = evaluate(ckpt.model, ckpt.variables, data.test_images, data.test_labels, topk=topk)
    saved = ckpt.metrics.get("test_accuracy")
    line = "  ".join(f"{k} {v:.4f}" for k, v in acc.items())
    print(f"{ckpt.config['model']} on {data.name} test: {line}"
          + (f"  (saved at training: {saved:.4f})" if saved is not None else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
