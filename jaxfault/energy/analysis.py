"""Evaluation helpers around the estimator: validated single evaluations, per-layer report rows,
design-point grids evaluated in one vmapped call, Pareto fronts, and the reference-style plots."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxfault.energy.core import LEVELS, TYPES, Energy, Hardware, check_design, energy_core
from jaxfault.energy.layers import Layer, to_arrays
from jaxfault.core.errors import JaxfaultError, plain

ROW_KEYS = ("computation", "weights", "inputs", "psums", "DRAM", "GLB", "NoC", "RF", "total")
HW_FIELDS = Hardware._fields


def per_layer(values, n: int, name: str) -> np.ndarray:
    """Broadcast a scalar or a length-n sequence to a float array (n,), naming bad lengths."""
    a = np.asarray(values, np.float64)
    if a.ndim == 0 or a.shape == (1,):
        return np.full((n,), float(a.reshape(-1)[0]))
    if a.shape != (n,):
        raise JaxfaultError(f"{name} has {a.size} per-layer values, the network has {n} layers")
    return a


def evaluate(layers: Sequence[Layer], qw=16, qa=16, pw=0.0, hw: Hardware = Hardware()) -> Energy:
    """Validated energy of one design point (host numpy inputs, jitted core)."""
    n = len(layers)
    qw, qa, pw = per_layer(qw, n, "qw"), per_layer(qa, n, "qa"), per_layer(pw, n, "pw")
    check_design(qw, qa, pw, n, hw)
    la = to_arrays(layers)
    return _energy_jit(la, qw.astype(np.float32), qa.astype(np.float32), pw.astype(np.float32), _hw_arrays(hw))


_energy_jit = jax.jit(energy_core)


def _hw_arrays(hw: Hardware) -> Hardware:
    return Hardware(*(np.asarray(v, np.int32 if f.startswith("pe_") else np.float32) for f, v in zip(HW_FIELDS, hw)))


def layer_rows(layers: Sequence[Layer], energy: Energy, qw, qa, pw) -> list[dict[str, Any]]:
    """One dict per layer: shape description, qw/qa/pw and the energy keys of ROW_KEYS."""
    n = len(layers)
    qw, qa, pw = per_layer(qw, n, "qw"), per_layer(qa, n, "qa"), per_layer(pw, n, "pw")
    comp = np.asarray(energy.computation, np.float64)
    bt = np.asarray(energy.by_type, np.float64)
    bl = np.asarray(energy.by_level, np.float64)
    rows = []
    for i, l in enumerate(layers):
        r = {
            "name": l.name,
            "kind": l.kind,
            "kernel": list(l.kernel),
            "in_channels": l.in_channels,
            "out_channels": l.out_channels,
            "input_size": list(l.input_size),
            "output_size": list(l.output_size),
            "padding": [list(p) for p in l.padding],
            "stride": list(l.stride),
            "groups": l.groups,
            "qw": float(qw[i]),
            "qa": float(qa[i]),
            "pw": float(pw[i]),
            "computation": float(comp[i]),
        }
        for j, t in enumerate(TYPES):
            r[t] = float(bt[i, j])
        for j, lv in enumerate(LEVELS):
            r[lv] = float(bl[i, j])
        r["total"] = r["computation"] + float(bt[i].sum())
        rows.append(r)
    return rows


def totals(rows: Sequence[dict]) -> dict[str, float]:
    return {k: float(sum(r[k] for r in rows)) for k in ROW_KEYS}


def format_table(rows: Sequence[dict], tot: dict | None = None) -> str:
    """Fixed-width text table of the per-layer energies (scientific notation)."""
    nw = max([5] + [len(r["name"]) for r in rows]) + 2
    shapes = [f"{r['kernel'][0]}x{r['kernel'][1]} {r['in_channels']}->{r['out_channels']} @{r['input_size'][0]}x{r['input_size'][1]}" for r in rows]
    sw = max([5] + [len(x) for x in shapes]) + 2
    head = f"{'layer':<{nw}}{'kind':<5}{'shape':<{sw}}" + "".join(f"{k:>11}" for k in ROW_KEYS)
    by_type, by_level = 11 * 4, 11 * 4
    groups = (" " * (nw + 5 + sw) + f"{'|-- by data type --|':>{by_type}}" + f"{'|-- by memory level --|':>{by_level}}")
    lines = [groups, head, "-" * len(head)]
    for r, shape in zip(rows, shapes):
        lines.append(f"{r['name']:<{nw}}{r['kind']:<5}{shape:<{sw}}" + "".join(f"{r[k]:>11.4g}" for k in ROW_KEYS))
    tot = tot or totals(rows)
    lines.append("-" * len(head))
    lines.append(f"{'TOTAL':<{nw + 5 + sw}}" + "".join(f"{tot[k]:>11.4g}" for k in ROW_KEYS))
    lines.append("energy per inference, normalised so that one 16-bit MAC costs 1; the total splits by data type "
                 "(computation + weights + inputs + psums) and, for the data, by memory level "
                 "(computation + DRAM + GLB + NoC + RF)")
    return "\n".join(lines)


# ------------------------------------------------------------------ design-point grids


# Sweeps: bit widths of the Eyeriss-like estimate, and the most design points of one vmapped call
# (every point is a row of the report; 1..100000 asked for 10**10 of them)
MIN_SWEEP_BITS, MAX_SWEEP_BITS = 1, 32
MAX_SWEEP_POINTS = 100_000


def parse_range(text: str, name: str = "`sweep_bits`") -> list[float]:
    """'2..16' (inclusive integers) or '2,4,8': bit widths, each an integer in [MIN_SWEEP_BITS,
    MAX_SWEEP_BITS]; an empty, reversed or out-of-range range is a one-line JaxfaultError naming
    the flag and the text."""
    text = str(text).strip()
    bounds = f"[{MIN_SWEEP_BITS}, {MAX_SWEEP_BITS}]"
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            a, b = int(a), int(b)
            if b < a:
                raise JaxfaultError(f"{name}: empty range {text!r} (the end is below the start)")
            values = [a, b]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
            if not values:
                raise JaxfaultError(f"{name}: no bit widths in {text!r}")
    except ValueError:
        raise JaxfaultError(f"{name}: cannot parse {text!r} (use A..B or a comma list)") from None
    for v in values:
        if not (float(v).is_integer() and MIN_SWEEP_BITS <= v <= MAX_SWEEP_BITS):
            raise JaxfaultError(f"{name}: bit widths must be integers in {bounds}, got {v:g} in {text!r}")
    if ".." in text:
        return [float(v) for v in range(values[0], values[1] + 1)]
    return values


def check_grid_size(grid: dict, name: str = "`grid`") -> int:
    """The number of design points of a sweep grid (the product of its axes' lengths); a one-line
    JaxfaultError when it exceeds MAX_SWEEP_POINTS."""
    n = 1
    for vals in grid.values():
        n *= max(1, len(vals) if isinstance(vals, (list, tuple)) else 1)
    if n > MAX_SWEEP_POINTS:
        raise JaxfaultError(f"{name} has {n} design points; at most {MAX_SWEEP_POINTS} are evaluated at once")
    return n


def expand_grid(grid: dict, num_layers: int, base: dict) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Cartesian product of the axes in grid (keys qw, qa, pw and Hardware fields; each a list of
    scalars or per-layer lists); unspecified keys come from base. Returns stacked arrays
    {qw, qa, pw: (P, L); hardware fields: (P,)} and one descriptor dict per point."""
    allowed = {"qw", "qa", "pw", *HW_FIELDS}
    unknown = set(grid) - allowed
    if unknown:
        raise JaxfaultError(f"unknown grid key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    axes = []
    for k, vals in grid.items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise JaxfaultError(f"grid[{k!r}] must be a non-empty list of values, got {plain(vals)!r}")
        axes.append((k, list(vals)))
    check_grid_size(dict(axes), "the sweep grid")
    names = [k for k, _ in axes]
    points = []
    cols: dict[str, list] = {k: [] for k in ("qw", "qa", "pw", *HW_FIELDS)}
    for combo in itertools.product(*[v for _, v in axes]):
        d = dict(zip(names, combo))
        points.append(d)
        for k in ("qw", "qa", "pw"):
            cols[k].append(per_layer(d.get(k, base[k]), num_layers, k))
        for k in HW_FIELDS:
            v = d.get(k, base[k])
            if np.ndim(v) != 0:
                raise JaxfaultError(f"grid[{k!r}] values must be scalars, got {plain(v)!r}")
            cols[k].append(v)
    arrays = {k: np.asarray(cols[k], np.float32) for k in ("qw", "qa", "pw")}
    for k in HW_FIELDS:
        arrays[k] = np.asarray(cols[k], np.int32 if k.startswith("pe_") else np.float32)
    hw = Hardware(*(arrays[k] for k in HW_FIELDS))
    check_design(arrays["qw"], arrays["qa"], arrays["pw"], num_layers, hw)
    if np.any(arrays["pe_rows"] != np.asarray(cols["pe_rows"], np.float64)) or np.any(arrays["pe_cols"] != np.asarray(cols["pe_cols"], np.float64)):
        raise JaxfaultError("PE array sizes must be integers")
    return arrays, points


def make_sweep_fn(layers: Sequence[Layer]):
    """jit(vmap(energy)) over design points: fn(qw (P,L), qa, pw, hw fields (P,)) -> Energy."""
    la = to_arrays(layers)
    return jax.jit(jax.vmap(lambda qw, qa, pw, hw: energy_core(la, qw, qa, pw, hw)))


def sweep_totals(layers: Sequence[Layer], arrays: dict[str, np.ndarray]) -> Energy:
    """All design points of `arrays` (from expand_grid) in one vmapped call."""
    fn = make_sweep_fn(layers)
    hw = Hardware(*(arrays[k] for k in HW_FIELDS))
    return fn(arrays["qw"], arrays["qa"], arrays["pw"], hw)


def pareto_mask(objectives: np.ndarray, minimize: Sequence[bool]) -> np.ndarray:
    """Non-dominated points of objectives (P, k): no other point is at least as good in every
    objective and strictly better in one."""
    o = np.asarray(objectives, np.float64)
    sign = np.where(np.asarray(minimize), 1.0, -1.0)
    o = o * sign  # all minimised
    p = len(o)
    mask = np.ones(p, bool)
    chunk = max(1, 2_000_000 // max(p, 1))
    for s in range(0, p, chunk):
        blk = o[s : s + chunk]
        le = (o[None, :, :] <= blk[:, None, :]).all(-1)
        lt = (o[None, :, :] < blk[:, None, :]).any(-1)
        mask[s : s + chunk] = ~(le & lt).any(-1)
    return mask


# ------------------------------------------------------------------ plots like the reference


BREAKDOWN_PLOTS = ("bars_by_type.png", "bars_by_level.png", "pie_by_level.png", "pie_by_type.png", "pie_by_layer.png")
SWEEP_PLOT = "sweep.png"


PIE_OTHER_BELOW = 0.03     # slices under 3 % of the total are merged into one "other" slice
PIE_PERCENT_INSIDE = 4.0   # percentages printed on slices of at least 4 %


def pie_slices(vals, labels, min_share: float = PIE_OTHER_BELOW) -> tuple[np.ndarray, list[str]]:
    """The slices a pie draws: values under min_share of the total merged into one "other (N)"
    slice at the end, when at least two are that small (one small slice keeps its own name)."""
    vals = np.asarray(vals, float)
    labels = [str(lab) for lab in labels]
    frac = vals / max(vals.sum(), 1e-30)
    small = frac < min_share
    if small.sum() < 2:
        return vals, labels
    keep = ~small
    return (np.append(vals[keep], vals[small].sum()),
            [lab for lab, k in zip(labels, keep) if k] + [f"other ({int(small.sum())}, each < {100 * min_share:g}%)"])


def plot_breakdown(rows: Sequence[dict], outdir, title: str) -> list[Path]:
    """Stacked bars per layer by data type and by level; pies by level, type and layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    outdir = Path(outdir)
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    tot = totals(rows)
    paths = []

    def bars(keys, labels, fname, ttl):
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 3), 4.2))
        bottom = np.zeros(len(rows))
        for k, lab in zip(keys, labels):
            v = np.array([r[k] for r in rows])
            ax.bar(x, v, bottom=bottom, label=lab)
            bottom += v
        ax.set_xticks(x, names, rotation=45 if len(rows) > 8 else 0, ha="right" if len(rows) > 8 else "center", fontsize=8)
        ax.set_ylabel("normalised energy (16-bit MAC = 1)")
        ax.set_title(f"{title}: {ttl}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(atomic_savefig(fig, outdir / fname, dpi=90))
        plt.close(fig)

    bars(("inputs", "psums", "weights", "computation"), ("Ifmap", "Psum", "Weights", "Computation"), "bars_by_type.png", "per layer by data type")
    bars(LEVELS, ("DRAM", "Global buffer", "NoC", "RF"), "bars_by_level.png", "per layer by memory level (data only)")

    def pie(vals, labels, fname, ttl):
        vals, labels = pie_slices(vals, labels)
        fig, ax = plt.subplots(figsize=(7.2, 4.4))
        frac = vals / max(vals.sum(), 1e-30)
        cmap = plt.get_cmap("tab10" if len(vals) <= 10 else "tab20")  # no two slices of one colour
        colors = [cmap(i % cmap.N) for i in range(len(vals))]
        wedges, _, _ = ax.pie(vals, startangle=90, counterclock=False, pctdistance=0.75, colors=colors,
                              autopct=lambda q: f"{q:.1f}%" if q >= PIE_PERCENT_INSIDE else "",
                              wedgeprops={"linewidth": 0.8, "edgecolor": "white"}, textprops={"fontsize": 8})
        ax.set_aspect("equal")
        # names (with their share) in a legend beside the pie: never clipped, never on top of each other
        ax.legend(wedges, [f"{lab}  {100 * f:.1f}%" for lab, f in zip(labels, frac)], loc="center left",
                  bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        ax.set_title(f"{title}: {ttl}", fontsize=10)
        paths.append(atomic_savefig(fig, outdir / fname, dpi=90, bbox_inches="tight"))
        plt.close(fig)

    pie([tot[k] for k in LEVELS], ["DRAM", "Buffer", "NoC", "RF"], "pie_by_level.png", "by memory level")
    pie([tot[k] for k in ("computation", "weights", "inputs", "psums")], ["Computation", "Weights", "Ifmap", "Psum"], "pie_by_type.png", "computation and data types")
    pie([r["total"] for r in rows], names, "pie_by_layer.png", "by layer")
    return paths


def plot_sweep(sweep: dict, path, title: str) -> Path:
    """Total energy of every design point against its mean weight+activation bits; Pareto front
    points highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    pts = sweep["points"]
    x = np.array([(p["mean_qw"] + p["mean_qa"]) / 2 for p in pts])
    y = np.array([p["total"] for p in pts])
    par = np.array([p["pareto"] for p in pts])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(x[~par], y[~par], s=10, c="0.6", label="dominated")
    ax.scatter(x[par], y[par], s=12, c="C3", label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("mean of (qw + qa) / 2 over layers")
    ax.set_ylabel("total energy (16-bit MAC = 1)")
    ax.set_title(f"{title}: {len(pts)} design points", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return p
