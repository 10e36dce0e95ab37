"""Exponent-difference histogram of a model's weights (which blocks fit Sparrow's 4-bit mode).

    python -m eval.exponents [--checkpoint DIR] [--block-size 64] [--exclude-zeros] [--out DIR]

Writes exponents_B{B}_{policy}.csv / .json / .xlsx (sheets Count and Proportion; only when
openpyxl is installed) / .png under --out, and prints which zero policy was used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxfault.cli import ArgumentParser, positive_int, run_main
from jaxfault.ecc.exponents import checkpoint_histogram, write_outputs
from jaxfault.errors import check


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m eval.exponents", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="classifier checkpoint dir, optional (default: the cached default LeNet)")
    ap.add_argument("--block-size", type=positive_int, default=64, help="weights per block, >= 2 (default: 64)")
    ap.add_argument("--exclude-zeros", action="store_true", help="ignore zeros for max/min instead of the "
                    "reference's exponent 255 (default: off)")
    ap.add_argument("--include-partial", action="store_true", help="also count the last partial block (default: off)")
    ap.add_argument("--params", choices=("kernels", "all"), default="kernels", help="leaves counted (default: kernels)")
    ap.add_argument("--out", default="runs/exponents", help="output directory (default: runs/exponents)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing result files (default: refuse)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check(a.block_size >= 2, f"--block-size must be >= 2, got {a.block_size}")
    if a.checkpoint is not None:
        check(Path(a.checkpoint).is_dir(), f"--checkpoint {a.checkpoint!r} is not a directory")
    from jaxfault.checkpoints import load_checkpoint
    from jaxfault.ecc.exponents import output_paths
    from jaxfault.io import check_output_path

    for path in output_paths(a.out, a.block_size, "exclude-zeros" if a.exclude_zeros else "reference"):
        check_output_path(path, overwrite=a.overwrite, flag="--out")

    ck_dir = a.checkpoint
    if ck_dir is None:
        from jaxfault.zoo import default_classifier

        ck_dir = default_classifier()
    ck = load_checkpoint(ck_dir, kind="classifier")
    r = checkpoint_histogram(ck.variables, a.block_size, leaves=a.params, exclude_zeros=a.exclude_zeros,
                             include_partial=a.include_partial)
    name = str(ck.config.get("model", Path(ck_dir).name))
    r.update({"model": name, "checkpoint": str(ck_dir)})
    print(f"zero policy: {r['zero_policy']} ("
          + ("zeros ignored for max/min" if a.exclude_zeros else "zeros set to exponent 255, differences > 128 dropped")
          + f"); block size {a.block_size}; {r['weights']} weights")
    print(f"blocks: {r['blocks']}, counted {r['blocks_counted']}, dropped {r['blocks_dropped']}; "
          f"diff <= 15 (F = 0): {100 * r['share_within_15']:.2f}%, diff <= 31: {100 * r['share_within_31']:.2f}%")
    print("diff  count  proportion")
    for d, (c, p) in enumerate(zip(r["counts"], r["proportions"])):
        if c:
            print(f"{d:4d} {c:6d}  {p:.4f}")
    files = write_outputs(a.out, name, r)
    print("wrote " + ", ".join(map(str, files)))
    print(f"next: python -m eval.sparrow --ber 1e-3 --block-size {a.block_size}"
          + (f" --checkpoint {a.checkpoint}" if a.checkpoint else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
