"""Campaign tables and plots from result records."""
from __future__ import annotations

import json
import numbers

import numpy as np

from jaxfault.core.stats import mean_ci


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


def accuracy_interval(record: dict) -> tuple[float, float, int]:
    """(lo, hi, trials) of a record's mean-accuracy interval: the one stored with it, else computed
    from its per-trial accuracies (records written before intervals were stored)."""
    s = record.get("accuracy_summary")
    if isinstance(s, dict) and "ci_lo" in s:
        return float(s["ci_lo"]), float(s["ci_hi"]), int(s["n"])
    acc = record.get("accuracy")
    if isinstance(acc, list) and acc:
        lo, hi = mean_ci(acc)
        return lo, hi, len(acc)
    return float("nan"), float("nan"), int(record.get("trials", 0))


def is_lm_record(record: dict) -> bool:
    """True for a language-model point (scored by perplexity)."""
    return record.get("metric") == "perplexity"


def point_summary(record: dict) -> str:
    """The one-line figure of a point: mean accuracy with its interval, or median perplexity with
    its interval and the trials that diverged."""
    if is_lm_record(record):
        return (f"perplexity median {_ppl(record['perplexity_median'])} [{_ppl(record['perplexity_median_lo'])}, "
                f"{_ppl(record['perplexity_median_hi'])}], diverged {100 * record['diverged_fraction']:.0f} % "
                f"over {record['trials']} trials")
    lo, hi, trials = accuracy_interval(record)
    return (f"acc {record['accuracy_mean']:.4f} [{lo:.4f}, {hi:.4f}] over {trials} trials"
            + (f" ({record['stop']})" if record.get("stop") else ""))


def _ppl(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.4f}"


def format_lm_table(records: list[dict]) -> str:
    """One row per language-model point: method, fields, median perplexity with its 95 %
    order-statistic interval, the trials that diverged (Wilson interval), mean next-token top-1,
    trials, realised rate."""
    methods = [str(r["config"].get("method", "")) for r in records]
    labels = [point_label(r["config"]) for r in records]
    meds = [f"{_ppl(r['perplexity_median'])} [{_ppl(r['perplexity_median_lo'])}, {_ppl(r['perplexity_median_hi'])}]"
            for r in records]
    div = [f"{100 * r['diverged_fraction']:.0f} % [{100 * r['diverged_lo']:.0f}, {100 * r['diverged_hi']:.0f}]"
           for r in records]
    wm = max([len("method")] + [len(x) for x in methods])
    w = max([len("point")] + [len(x) for x in labels])
    wp = max([len("perplexity median [95% interval]")] + [len(x) for x in meds])
    wd = max([len("diverged")] + [len(x) for x in div])
    lines = [f"{'method':{wm}s} {'point':{w}s} {'perplexity median [95% interval]':>{wp}s} {'diverged':>{wd}s} "
             f"{'top1':>7s} {'trials':>6s} {'fault rate':>11s}"]
    for r, m, label, med, d in zip(records, methods, labels, meds, div):
        lines.append(f"{m:{wm}s} {label:{w}s} {med:>{wp}s} {d:>{wd}s} {r['top1_mean']:7.4f} {r['trials']:6d} "
                     f"{r['fault_rate_mean']:11.3e}")
    return "\n".join(lines)


def format_table(records: list[dict]) -> str:
    """One row per point: method, every field, accuracy mean with its 95 % interval, std, min,
    trials (and why they stopped, for runs until a target width), realised rate. Columns are as
    wide as their longest entry, so no label or number is ever cut. Language-model points get
    :func:`format_lm_table`."""
    if records and all(is_lm_record(r) for r in records):
        return format_lm_table(records)
    methods = [str(r["config"].get("method", "")) for r in records]
    labels = [point_label(r["config"]) for r in records]
    cis = [accuracy_interval(r) for r in records]
    trials = [f"{n}" + (f" ({r['stop']})" if r.get("stop") else "") for r, (_, _, n) in zip(records, cis)]
    wm = max([len("method")] + [len(s) for s in methods])
    w = max([len("point")] + [len(s) for s in labels])
    wt = max([len("trials")] + [len(s) for s in trials])
    lines = [f"{'method':{wm}s} {'point':{w}s} {'acc mean':>9s} {'95% interval':>17s} {'std':>7s} {'min':>7s} "
             f"{'trials':>{wt}s} {'fault rate':>11s}"]
    for r, method, label, (lo, hi, _), t in zip(records, methods, labels, cis, trials):
        lines.append(f"{method:{wm}s} {label:{w}s} {r['accuracy_mean']:9.4f} {f'[{lo:.4f}, {hi:.4f}]':>17s} "
                     f"{r['accuracy_std']:7.4f} {r['accuracy_min']:7.4f} {t:>{wt}s} {r['fault_rate_mean']:11.3e}")
    return "\n".join(lines)


def plot_records(records: list[dict], path: str) -> None:
    """Accuracy (mean with its 95 % interval over trials), or a language model's median
    perplexity with its interval, against the fault rate, one line per method and scheme; the
    title gives the trials per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.campaign.methods import split_point
    from jaxfault.core.io import atomic_savefig

    groups: dict[str, list] = {}
    lm = bool(records) and all(is_lm_record(r) for r in records)
    fields = {k for r in records for k in r["config"]}
    varying = {k for k in fields if len({json.dumps(r["config"].get(k)) for r in records}) > 1}
    rate_names = set()
    for r in records:
        c = r["config"]
        rate_name = split_point(c)[2]
        rate_names.add(rate_name)
        parts = [f"{k}={format_value(v)}" for k, v in sorted(c.items()) if k in varying and k not in ("method", rate_name)]
        label = " ".join(([c["method"]] if "method" in varying or not parts else []) + parts)
        if lm:
            groups.setdefault(label, []).append((c[rate_name], r["perplexity_median"], r["perplexity_median_lo"],
                                                 r["perplexity_median_hi"]))
        else:
            lo, hi, _ = accuracy_interval(r)
            groups.setdefault(label, []).append((c[rate_name], r["accuracy_mean"], lo, hi))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(groups.items()):
        pts.sort()
        x, m, lo, hi = (np.asarray(v, float) for v in zip(*pts))
        if lm:                              # inf (diverged) drawn at twice the largest finite value
            finite = [v for p in pts for v in p[1:] if np.isfinite(v)]
            cap = 2 * max(finite) if finite else 1.0
            m, lo, hi = np.minimum(m, cap), np.minimum(lo, cap), np.minimum(hi, cap)
            ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=label)
        else:
            ax.errorbar(x, 100 * m, yerr=[100 * (m - lo), 100 * (hi - m)], marker="o", capsize=3, label=label)
    if all(p[0] > 0 for pts in groups.values() for p in pts):
        ax.set_xscale("log")
    ax.set_xlabel(" / ".join(sorted(rate_names)))
    trials = sorted({int(r["trials"]) if lm else accuracy_interval(r)[2] for r in records})
    if lm:
        ax.set_yscale("log")
        ax.set_ylabel("perplexity, median and 95 % interval (inf at the top)")
    else:
        ax.set_ylabel("top-1 accuracy (%), mean and 95 % interval")
    ax.set_title(f"trials per point: {', '.join(map(str, trials))}" if len(trials) <= 4
                 else f"trials per point: {trials[0]}-{trials[-1]}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
