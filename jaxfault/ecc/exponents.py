"""Exponent-difference analysis (docs/sparrow.md, "Exponent analysis"): how many exponent steps a
block of B weights spans.

The weights (bf16 view) are concatenated leaf after leaf (a partial block carries over into the
next leaf, as the reference does) and cut into blocks of B; the last partial block is dropped
unless include_partial. Two zero policies:
  * "reference": every zero word gets exponent 255 before max and min, and only differences 0..128
    are counted, so a block holding an exact zero usually drops out (it stays in when all its
    nonzero weights have exponents >= 127, i.e. |w| >= 1: then 255 - min_e <= 128);
  * "exclude-zeros": zeros are ignored for max and min; all-zero blocks drop out.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from jaxfault.core.bits import BF16_MASK
from jaxfault.core.config import setting
from jaxfault.core.errors import check, check_folder
from jaxfault.core.io import atomic_savefig, atomic_write_bytes

MAX_DIFF = 128


def block_differences(words, block_size: int = 64, *, exclude_zeros: bool = False,
                      include_partial: bool = False) -> np.ndarray:
    """max_e - min_e per block of fp32 words (bf16 view); -1 marks a block that drops out."""
    check(isinstance(block_size, (int, np.integer)) and not isinstance(block_size, bool) and block_size >= 2,
          f"block_size must be an integer >= 2, got {block_size!r}")
    w = np.asarray(words)
    check(w.dtype == np.uint32 and w.ndim == 1, f"words must be a 1-D uint32 array, got {w.dtype} {w.shape}")
    w = w & BF16_MASK
    n = (w.size // block_size) * block_size
    rest = w.size - n
    blocks = w[:n].reshape(-1, block_size)
    e = ((blocks >> 23) & 0xFF).astype(np.int64)
    zero = (blocks & np.uint32(0x7FFF0000)) == 0
    parts = [(e, zero)]
    if include_partial and rest:
        tail = w[n:]
        parts.append((((tail >> 23) & 0xFF).astype(np.int64)[None], ((tail & np.uint32(0x7FFF0000)) == 0)[None]))
    out = []
    for e, zero in parts:
        if exclude_zeros:
            mx = np.where(zero, -1, e).max(axis=1)
            mn = np.where(zero, 256, e).min(axis=1)
            diff = np.where(zero.all(axis=1), -1, mx - mn)
        else:
            ez = np.where(zero, 255, e)
            diff = ez.max(axis=1) - ez.min(axis=1)
            diff = np.where(diff <= MAX_DIFF, diff, -1)
        out.append(diff)
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def histogram(words, block_size: int = 64, *, exclude_zeros: bool = False, include_partial: bool = False) -> dict:
    """Counts and proportions of blocks by exponent difference 0..128, with the totals."""
    d = block_differences(words, block_size, exclude_zeros=exclude_zeros, include_partial=include_partial)
    counted = d[d >= 0]
    counts = np.bincount(counted, minlength=MAX_DIFF + 1)[:MAX_DIFF + 1]
    total = int(counts.sum())
    props = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    return {"block_size": int(block_size), "zero_policy": "exclude-zeros" if exclude_zeros else "reference",
            "blocks": int(d.size), "blocks_counted": total, "blocks_dropped": int(d.size - total),
            "counts": counts.astype(int).tolist(), "proportions": props.astype(float).tolist(),
            "share_within_15": float(counts[:16].sum() / total) if total else 0.0,
            "share_within_31": float(counts[:32].sum() / total) if total else 0.0}


def checkpoint_histogram(variables, block_size: int = 64, *, leaves: str = "kernels", exclude_zeros: bool = False,
                         include_partial: bool = False) -> dict:
    """Histogram of a model's selected leaves (bf16 view, tree_flatten order, one stream of words)."""
    from jaxfault.core.bits import pytree_to_words
    from jaxfault.ecc.hbm import LEAF_SELECTORS, check_finite_leaves

    check(isinstance(block_size, int) and block_size >= 2, f"block size must be an integer >= 2, got {block_size!r}")
    select = LEAF_SELECTORS[leaves]
    check_finite_leaves(variables["params"], select)
    words, layout = pytree_to_words(variables["params"], 1, select=select)
    r = histogram(words[:layout.n_values], block_size, exclude_zeros=exclude_zeros, include_partial=include_partial)
    r.update({"params": leaves, "weights": layout.n_values})
    return r


def output_paths(out, block_size: int, zero_policy: str) -> list:
    """The files write_outputs writes (JSON, CSV, XLSX, PNG) for a block size and zero policy."""
    from pathlib import Path

    stem = Path(out) / f"exponents_B{block_size}_{zero_policy}"
    return [stem.with_suffix(ext) for ext in (".json", ".csv", ".xlsx", ".png")]


def write_outputs(out, name: str, r: dict) -> list:
    """JSON, CSV, XLSX (when openpyxl is installed) and PNG of one histogram; the paths written."""
    from pathlib import Path

    from jaxfault.core.io import atomic_write_json, atomic_write_text

    out = Path(out)
    stem = output_paths(out, r["block_size"], r["zero_policy"])[0].stem
    atomic_write_json(out / f"{stem}.json", r)
    atomic_write_text(out / f"{stem}.csv", "diff,count,proportion\n"
                      + "".join(f"{d},{c},{p:.8g}\n" for d, (c, p) in enumerate(zip(r["counts"], r["proportions"]))))
    files = [out / f"{stem}.json", out / f"{stem}.csv"]
    if write_xlsx(out / f"{stem}.xlsx", [(name, r)]):
        files.append(out / f"{stem}.xlsx")
    plot(out / f"{stem}.png", name, r)
    files.append(out / f"{stem}.png")
    return files


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




@dataclasses.dataclass(frozen=True)
class ExponentRun:
    """The settings of one histogram of a checkpoint's weights (``python -m eval.exponents``)."""

    checkpoint: Optional[str] = setting(None, "classifier checkpoint dir, optional (default: the cached default LeNet)")
    block_size: int = setting(64, "weights per block, >= 2", kind="positive_int")
    exclude_zeros: bool = setting(False, "ignore zeros for max/min instead of the reference's exponent 255",
                                  kind="switch")
    include_partial: bool = setting(False, "also count the last partial block", kind="switch")
    leaves: str = setting("kernels", "leaves counted: conv/dense kernels or all float parameters",
                          choices=("kernels", "all"))

    def prepare_output(self, out, overwrite: bool = False) -> None:
        """Validate the settings and check, before any work, that every output file can be written."""
        from jaxfault.core.io import check_output_path

        check(self.block_size >= 2, f"`block_size` must be >= 2, got {self.block_size}")
        check_folder("checkpoint", self.checkpoint)
        for path in output_paths(out, self.block_size, "exclude-zeros" if self.exclude_zeros else "reference"):
            check_output_path(path, overwrite=overwrite, flag="`out`")

    def evaluate(self) -> dict:
        """The histogram of the checkpoint's (default: the cached LeNet's) weights, with its model name."""
        from jaxfault.training.checkpoints import load_checkpoint
        from jaxfault.training.zoo import default_classifier

        ck_dir = self.checkpoint if self.checkpoint is not None else default_classifier()
        ck = load_checkpoint(ck_dir, kind="classifier")
        r = checkpoint_histogram(ck.variables, self.block_size, leaves=self.leaves, exclude_zeros=self.exclude_zeros,
                                 include_partial=self.include_partial)
        return {**r, "model": str(ck.config.get("model", Path(ck_dir).name)), "checkpoint": str(ck_dir)}


def summary_text(r: dict, block_size: int) -> str:
    """The histogram as printed: the zero policy, block counts, shares within 15 and 31, and the table."""
    policy = ("zeros ignored for max/min" if r["zero_policy"] == "exclude-zeros"
              else "zeros set to exponent 255, differences > 128 dropped")
    lines = [f"zero policy: {r['zero_policy']} ({policy}); block size {block_size}; {r['weights']} weights",
             f"blocks: {r['blocks']}, counted {r['blocks_counted']}, dropped {r['blocks_dropped']}; "
             f"diff <= 15 (F = 0): {100 * r['share_within_15']:.2f}%, diff <= 31: {100 * r['share_within_31']:.2f}%",
             "diff  count  proportion"]
    lines += [f"{d:4d} {c:6d}  {p:.4f}" for d, (c, p) in enumerate(zip(r["counts"], r["proportions"])) if c]
    return "\n".join(lines) + "\n"
