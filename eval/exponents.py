"""Exponent-difference histogram of a model's weights (SPEC 1.5).

    python -m eval.exponents --checkpoint DIR [--block-size 64] [--exclude-zeros] [--out DIR]

Writes exponents_B{B}_{policy}.csv / .json / .xlsx (sheets Count and Proportion, one row per
model; only when openpyxl is installed) / .png under --out, and prints which zero policy was used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxfault.cli import ArgumentParser, run_main
from jaxfault.ecc.exponents import MAX_DIFF, histogram
from jaxfault.errors import check
from jaxfault.io import atomic_savefig, atomic_write_bytes, atomic_write_json, atomic_write_text


def write_xlsx(path, rows) -> bool:
    """rows: list of (model name, result dict). Returns False when openpyxl is missing."""
    try:
        import openpyxl
    except ImportError:
        return False
    import io

    wb = openpyxl.Workbook()
    for i, (sheet, key) in enumerate((("Count", "counts"), ("Proportion", "proportions"))):
        ws = wb.active if i == 0 else wb.create_sheet()
        ws.title = sheet
        ws.append(["model"] + list(range(MAX_DIFF + 1)))
        for name, r in rows:
            ws.append([name] + list(r[key]))
    buf = io.BytesIO()
    wb.save(buf)
    atomic_write_bytes(path, buf.getvalue())
    return True


def plot(path, name, r):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    last = max([i for i, c in enumerate(r["counts"]) if c] + [16])
    ax.bar(range(last + 1), [100 * p for p in r["proportions"][:last + 1]], width=0.9)
    ax.axvline(15.5, color="gray", ls="--", lw=1)
    ax.text(15.7, ax.get_ylim()[1] * 0.9, "F = 1 above", fontsize=8, color="gray")
    ax.set_xlabel(f"max_e - min_e within a block of {r['block_size']}")
    ax.set_ylabel("blocks (%)")
    ax.set_title(f"{name} ({r['zero_policy']}, {r['blocks_counted']} of {r['blocks']} blocks)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m eval.exponents", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="classifier checkpoint dir (default: the zoo LeNet)")
    ap.add_argument("--block-size", type=int, default=64, help="weights per block (>= 2)")
    ap.add_argument("--exclude-zeros", action="store_true", help="ignore zeros for max/min instead of the "
                    "reference's exponent 255")
    ap.add_argument("--include-partial", action="store_true", help="also count the last partial block")
    ap.add_argument("--params", choices=("kernels", "all"), default="kernels")
    ap.add_argument("--out", default="runs/exponents")
    a = ap.parse_args(argv)
    check(a.block_size >= 2, f"--block-size must be >= 2, got {a.block_size}")
    if a.checkpoint is not None:
        check(Path(a.checkpoint).is_dir(), f"--checkpoint {a.checkpoint!r} is not a directory")

    from eval.sparrow import SELECTORS
    from jaxfault.bits import pytree_to_words
    from jaxfault.checkpoints import load_checkpoint
    from jaxfault.ecc.pipeline import check_finite_leaves

    ck_dir = a.checkpoint
    if ck_dir is None:
        from jaxfault.zoo import default_classifier

        ck_dir = default_classifier()
    ck = load_checkpoint(ck_dir, kind="classifier")
    select = SELECTORS[a.params]
    check_finite_leaves(ck.variables["params"], select)
    words, layout = pytree_to_words(ck.variables["params"], 1, select=select)
    r = histogram(words[:layout.n_values], a.block_size, exclude_zeros=a.exclude_zeros,
                  include_partial=a.include_partial)
    name = str(ck.config.get("model", Path(ck_dir).name))
    r.update({"model": name, "checkpoint": str(ck_dir), "params": a.params, "weights": layout.n_values})
    print(f"zero policy: {r['zero_policy']} ("
          + ("zeros ignored for max/min" if a.exclude_zeros else "zeros set to exponent 255, differences > 128 dropped")
          + f"); block size {a.block_size}; {r['weights']} weights")
    print(f"blocks: {r['blocks']}, counted {r['blocks_counted']}, dropped {r['blocks_dropped']}; "
          f"diff <= 15 (F = 0): {100 * r['share_within_15']:.2f}%, diff <= 31: {100 * r['share_within_31']:.2f}%")
    nz = [(d, c, p) for d, (c, p) in enumerate(zip(r["counts"], r["proportions"])) if c]
    print("diff  count  proportion")
    for d, c, p in nz:
        print(f"{d:4d} {c:6d}  {p:.4f}")
    out = Path(a.out)
    stem = f"exponents_B{a.block_size}_{r['zero_policy']}"
    atomic_write_json(out / f"{stem}.json", r)
    atomic_write_text(out / f"{stem}.csv", "diff,count,proportion\n"
                      + "".join(f"{d},{c},{p:.8g}\n" for d, (c, p) in enumerate(zip(r["counts"], r["proportions"]))))
    files = [f"{stem}.json", f"{stem}.csv"]
    if write_xlsx(out / f"{stem}.xlsx", [(name, r)]):
        files.append(f"{stem}.xlsx")
    plot(out / f"{stem}.png", name, r)
    files.append(f"{stem}.png")
    print("wrote " + ", ".join(str(out / f) for f in files))
    return 0


if __name__ == "__main__":
    run_main(main)
