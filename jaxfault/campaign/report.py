"""Campaign tables and plots from result records."""
from __future__ import annotations

import json
import numbers


def format_value(v) -> str:
    """A config value in full and short: floats (numpy's too) in %g form (0.01, 1e-05), lists
    item by item; never cut."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return f"{float(v):g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


def point_label(config: dict) -> str:
    """'key=value, ...' of a point's fields other than its method, values in full."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in config.items() if k != "method")


def format_table(records: list[dict]) -> str:
    """One row per point: method, every field, accuracy mean/std/min, realised rate. Columns are
    as wide as their longest entry, so no label or number is ever cut."""
    methods = [str(r["config"].get("method", "")) for r in records]
    labels = [point_label(r["config"]) for r in records]
    wm = max([len("method")] + [len(s) for s in methods])
    w = max([len("point")] + [len(s) for s in labels])
    lines = [f"{'method':{wm}s} {'point':{w}s} {'acc mean':>9s} {'std':>7s} {'min':>7s} {'fault rate':>11s}"]
    for r, method, label in zip(records, methods, labels):
        lines.append(f"{method:{wm}s} {label:{w}s} {r['accuracy_mean']:9.4f} {r['accuracy_std']:7.4f} "
                     f"{r['accuracy_min']:7.4f} {r['fault_rate_mean']:11.3e}")
    return "\n".join(lines)


def plot_records(records: list[dict], path: str) -> None:
    """Accuracy (mean +- std over trials) against the fault rate, one line per method and scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.campaign.methods import split_point
    from jaxfault.io import atomic_savefig

    groups: dict[str, list] = {}
    fields = {k for r in records for k in r["config"]}
    varying = {k for k in fields if len({json.dumps(r["config"].get(k)) for r in records}) > 1}
    rate_names = set()
    for r in records:
        c = r["config"]
        rate_name = split_point(c)[2]
        rate_names.add(rate_name)
        parts = [f"{k}={format_value(v)}" for k, v in sorted(c.items()) if k in varying and k not in ("method", rate_name)]
        label = " ".join(([c["method"]] if "method" in varying or not parts else []) + parts)
        groups.setdefault(label, []).append((c[rate_name], r["accuracy_mean"], r["accuracy_std"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(groups.items()):
        pts.sort()
        x, m, s = zip(*pts)
        ax.errorbar(x, [100 * v for v in m], yerr=[100 * v for v in s], marker="o", capsize=3, label=label)
    if all(x > 0 for pts in groups.values() for x, _, _ in pts):
        ax.set_xscale("log")
    ax.set_xlabel(" / ".join(sorted(rate_names)))
    ax.set_ylabel("top-1 accuracy (%), mean +- std over trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
