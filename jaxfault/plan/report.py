"""A plan's answer: energy and accuracy of every configuration, the Pareto fronts, the cheapest
configuration meeting the target, as JSON, a Markdown table and a plot.

Accuracy statistics over the trials of a configuration: ``mean`` and ``p5``, the 5th percentile
(numpy's linear interpolation between order statistics; with 20 trials it lies between the
lowest and the second-lowest accuracy). Drops are in percentage points against the target's
reference: ``clean`` (the deployed model without any fault: bf16 words / quantized kernels,
no generator) or ``nominal`` (the unprotected nominal design's own statistic).

A configuration is on the front of a metric when no other configuration has lower or equal
energy and higher or equal accuracy with one of them strict.

Intervals (jaxfault.stats): every mean carries its betting interval, every p5 its
order-statistic interval, at the target's level (95 % by default), over the configuration's
trials. **Certification**: each configuration's target statistic also gets an interval at the
Bonferroni-corrected level 1 - (1 - level) / (K x L), K the number of configurations, L the looks
a configuration may get (1 + the extra chunks a certified plan may add; 1 for the mean, whose
betting interval with its bets tuned for the trial budget stays valid under any stopping rule).
A configuration **met** the target when that interval's lower end is >= the threshold, **not met**
when its upper end is below it, **undecided** otherwise. All these claims hold together with
probability >= level, so the chosen configuration's "met" holds at that level. Without
``certify`` the choice is made on the point estimates (as before) and the statuses are reported
alongside; with it, the cheapest configuration that met the target is chosen.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxfault import stats
from jaxfault.energy.analysis import pareto_mask

STATUSES = ("met", "not met", "undecided")


def accuracy_stats(acc, level: float = 0.95, horizon: int | None = None) -> dict:
    """mean, p5, std, min, max and n of a configuration's per-trial accuracies (kept as
    "values"), with the mean's betting interval (bets tuned for `horizon` trials) and p5's
    order-statistic interval at `level` (each [lo, hi])."""
    a = np.asarray(acc, np.float64)
    return {"mean": float(a.mean()), "p5": float(np.percentile(a, 5)), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size), "level": level,
            "mean_ci": list(stats.mean_ci(a, level, horizon=max(horizon or a.size, a.size))),
            "p5_ci": list(stats.quantile_ci(a, 0.05, level, bounds=(0.0, 1.0))), "values": a.tolist()}


def certification_settings(plan: dict, n_configs: int) -> dict:
    """The multiple-comparison correction of a plan's target claims (module docstring): the
    family level, K, L, the per-configuration level and the trial budget."""
    t, trials = plan["target"], plan["trials"]
    cap = (t["max_trials"] or 10 * trials) if t["certify"] else trials
    looks = 1 + math.ceil((cap - trials) / trials)
    per_looks = looks if t["metric"] == "p5" else 1
    alpha = (1.0 - t["level"]) / (n_configs * per_looks)
    return {"certify": t["certify"], "level": t["level"], "correction": "bonferroni", "comparisons": n_configs,
            "looks": per_looks, "per_configuration_level": 1.0 - alpha, "max_trials": cap}


def target_interval(acc, metric: str, settings: dict) -> tuple[float, float]:
    """The corrected interval of a configuration's target statistic (see certification_settings)."""
    a = np.asarray(acc, np.float64)
    level = settings["per_configuration_level"]
    if metric == "mean":
        return stats.mean_ci(a, level, horizon=max(settings["max_trials"], a.size))
    return stats.quantile_ci(a, 0.05, level, bounds=(0.0, 1.0))


def target_status(lo: float, hi: float, threshold: float) -> str:
    """met / not met / undecided of an interval against the threshold (tolerance: accuracies are
    means over the evaluation images in float32/float64)."""
    if lo >= threshold - 1e-9:
        return "met"
    if hi < threshold - 1e-9:
        return "not met"
    return "undecided"


def build_report(plan: dict, rows: list[dict], energy_model, clean_accuracy: float, *,
                 compiled: int | None = None, seconds: float | None = None, block_size: int = 64) -> dict:
    """The JSON-ready report of a plan run (see the module docstring)."""
    entries = []
    settings = certification_settings(plan, len(rows))
    horizon = settings["max_trials"] if settings["certify"] else None
    for r in rows:
        e = energy_model.breakdown(r["knobs"], block_size)
        entries.append({"knobs": r["knobs"], "rates": r["rates"], "nominal": bool(r.get("nominal")),
                        "energy": e, "accuracy": accuracy_stats(r["accuracy"], plan["target"]["level"], horizon),
                        "realised_rates": r.get("realised_rates", {}), "forward_passes": r.get("forward_passes")})
    nominal = next(e for e in entries if e["nominal"])
    e_ref = nominal["energy"]["total"]
    target = plan["target"]
    metric = target["metric"]
    reference = clean_accuracy if target["reference"] == "clean" else nominal["accuracy"][metric]
    if target["min_accuracy"] is not None:
        threshold = target["min_accuracy"]
        rule = f"top-1 {metric} >= {100 * threshold:.2f} %"
    else:
        threshold = reference - target["max_drop_points"] / 100.0
        rule = (f"top-1 drop <= {target['max_drop_points']:g} point(s) at the {'5th percentile' if metric == 'p5' else 'mean'}"
                f" over trials, against the {target['reference']} accuracy {100 * reference:.2f} %")
    for e in entries:
        e["relative_energy"] = e["energy"]["total"] / e_ref
        e["saving"] = 1.0 - e["relative_energy"]
        e["drop_points"] = {m: 100.0 * (reference - e["accuracy"][m]) for m in ("mean", "p5")}
        # tolerance: accuracies are means over the evaluation images in float32/float64
        e["meets_target"] = bool(e["accuracy"][metric] >= threshold - 1e-9)
        lo, hi = target_interval(e["accuracy"]["values"], metric, settings)
        e["certification"] = {"status": target_status(lo, hi, threshold), "bound": lo, "upper": hi,
                              "trials": e["accuracy"]["n"]}
        if settings["certify"]:
            e["meets_target"] = e["certification"]["status"] == "met"
    fronts = {}
    for m in ("mean", "p5"):
        obj = np.array([[e["energy"]["total"], e["accuracy"][m]] for e in entries])
        mask = pareto_mask(obj, [True, False])
        for e, on in zip(entries, mask):
            e[f"pareto_{m}"] = bool(on)
        fronts[m] = sorted((i for i, on in enumerate(mask) if on), key=lambda i: entries[i]["energy"]["total"])
    meeting = [i for i, e in enumerate(entries) if e["meets_target"]]
    chosen = min(meeting, key=lambda i: (entries[i]["energy"]["total"], -entries[i]["accuracy"][metric])) if meeting else None
    if settings["certify"]:   # the best: the highest certified bound, the cheapest among equals
        best = max(range(len(entries)), key=lambda i: (entries[i]["certification"]["bound"], -entries[i]["energy"]["total"]))
    else:
        best = max(range(len(entries)), key=lambda i: (entries[i]["accuracy"][metric], -entries[i]["energy"]["total"]))
    settings["counts"] = {s: sum(e["certification"]["status"] == s for e in entries) for s in STATUSES}
    return {"target": {**target, "rule": rule, "threshold_accuracy": threshold, "reference_accuracy": reference},
            "reachable": chosen is not None, "chosen": chosen, "best": best,
            "clean_accuracy": clean_accuracy, "nominal": entries.index(nominal), "nominal_energy": e_ref,
            "energy_unit": "normalised energy per inference (one 16-bit MAC = 1)",
            "inference_period_s": plan["inference_period_s"], "fronts": fronts, "configurations": entries,
            "compiled_programs": compiled, "seconds": seconds, "trials": plan["trials"],
            "certification": settings, "trials_run": int(sum(len(r["accuracy"]) for r in rows))}


def knob_text(knobs: dict) -> str:
    parts = []
    if "scheme" in knobs:
        parts.append(f"{knobs['scheme']} @ {1000 * knobs['refresh_interval_s']:g} ms")
    if "voltage" in knobs:
        g = knobs.get("generator")
        parts.append(f"{knobs['voltage']:g} V_nom" + (f" + G({Path(g).name})" if g else ""))
    if "write_verify" in knobs:
        parts.append(f"verify {100 * knobs['write_verify']:g} %")
    return ", ".join(parts)


def summary_lines(report: dict) -> list[str]:
    """The answer in a few lines: target, chosen configuration and saving (or unreachable, best)."""
    c = report["configurations"]
    t = report["target"]
    out = [f"target: {t['rule']} (threshold {100 * t['threshold_accuracy']:.2f} %)",
           f"nominal design (unprotected, 64 ms, nominal voltage{', full write-verify' if 'write_verify' in c[report['nominal']]['knobs'] else ''}): "
           f"{_line(c[report['nominal']])}"]
    cert = report["certification"]
    k = cert["counts"]
    out.append(f"{'certified' if cert['certify'] else 'certification (not used for the choice)'}: "
               f"{metric_name(t['metric'])} bound at {100 * cert['level']:g} % for all {cert['comparisons']} "
               f"configurations together (Bonferroni: each at {100 * cert['per_configuration_level']:.4g} %"
               + (f", {cert['looks']} looks each" if cert["looks"] > 1 else "")
               + f"): {k['met']} met, {k['not met']} not met, {k['undecided']} undecided; "
               f"{report['trials_run']} trials in all")
    if report["reachable"]:
        ch = c[report["chosen"]]
        out.append(f"chosen: {knob_text(ch['knobs'])}: {_line(ch)}; saves {100 * ch['saving']:.2f} % of the nominal "
                   f"design's energy per inference; {_cert(ch, t['metric'])}")
    else:
        b = c[report["best"]]
        out.append(f"unreachable: no configuration {'certainly ' if cert['certify'] else ''}meets the target; "
                   f"best found: {knob_text(b['knobs'])}: {_line(b)}; {_cert(b, t['metric'])}")
    return out


def metric_name(metric: str) -> str:
    return "5th-percentile" if metric == "p5" else "mean"


def _pct(ci) -> str:
    return f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _cert(e: dict, metric: str) -> str:
    c = e["certification"]
    return f"{c['status']} ({metric} bound {100 * c['bound']:.2f} %, {c['trials']} trials)"


def _line(e: dict) -> str:
    a = e["accuracy"]
    return (f"mean {100 * a['mean']:.2f} % {_pct(a['mean_ci'])}, p5 {100 * a['p5']:.2f} % {_pct(a['p5_ci'])} "
            f"over {a['n']} trials, energy {e['energy']['total']:.4g} ({e['relative_energy']:.4f} x nominal)")


def format_table(report: dict, only_front: bool = False) -> str:
    """Markdown table of the configurations (or of those on either front), cheapest first."""
    c = report["configurations"]
    idx = sorted(range(len(c)), key=lambda i: c[i]["energy"]["total"])
    if only_front:
        idx = [i for i in idx if c[i]["pareto_mean"] or c[i]["pareto_p5"]]
    lv = f"{100 * report['certification']['level']:g} %"
    lines = [f"| configuration | BER / rates | energy (x nominal) | mean % [{lv}] | p5 % [{lv}] | trials | drop p5 (pts) "
             f"| front | target (bound %) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i in idx:
        e = c[i]
        mark = "chosen" if i == report["chosen"] else ("nominal" if i == report["nominal"] else "")
        front = "/".join(m for m in ("mean", "p5") if e[f"pareto_{m}"])
        a, cert = e["accuracy"], e["certification"]
        lines.append(f"| {knob_text(e['knobs'])} | {', '.join(f'{r:.2g}' for r in e['rates'])} | "
                     f"{e['relative_energy']:.4f} | {100 * a['mean']:.2f} {_pct(a['mean_ci'])} | "
                     f"{100 * a['p5']:.2f} {_pct(a['p5_ci'])} | {a['n']} | "
                     f"{e['drop_points']['p5']:+.2f} | {front} | {'yes' if e['meets_target'] else 'no'}, {cert['status']} "
                     f"({100 * cert['bound']:.2f}) {mark} |")
    return "\n".join(lines) + "\n"


def accuracy_axis(report: dict) -> tuple[float, float]:
    """The y range (%) of the plan's chart: every configuration's mean and 5th percentile on it,
    the unprotected ones far below the target included, with a point of margin."""
    accs = [100 * e["accuracy"][m] for e in report["configurations"] for m in ("mean", "p5")]
    return min(accs) - 1, max(accs) + 1


def plot_report(report: dict, path) -> Path:
    """Two panels (mean, 5th percentile): accuracy (with its interval) vs energy relative to the
    nominal design, all configurations coloured by their discrete knobs, the Pareto front as a step line, the target
    threshold dashed, the nominal design and the chosen configuration marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.io import atomic_savefig

    c = report["configurations"]

    def family(e):
        k = e["knobs"]
        parts = [k["scheme"]] if "scheme" in k else []
        if k.get("generator"):
            parts.append("NeuralFuse")
        return " + ".join(parts) or "configurations"

    fams = list(dict.fromkeys(family(e) for e in c))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, m, title in zip(axes, ("mean", "p5"), ("mean over trials", "5th percentile over trials")):
        for j, f in enumerate(fams):
            pts = [e for e in c if family(e) == f]
            y = np.array([100 * e["accuracy"][m] for e in pts])
            ci = 100 * np.array([e["accuracy"][f"{m}_ci"] for e in pts])
            # one hollow marker shape per family, so that families at the same point stay visible
            ax.errorbar([e["relative_energy"] for e in pts], y, yerr=[y - ci[:, 0], ci[:, 1] - y],
                        fmt="osD^vP"[j % 6], ms=4.5 + 1.5 * (j % 3), mfc="none", alpha=0.7, lw=0.6,
                        color=f"C{j}", label=f)
        front = [c[i] for i in report["fronts"][m]]
        xs = [e["relative_energy"] for e in front]
        ys = [100 * e["accuracy"][m] for e in front]
        ax.step(xs, ys, where="post", color="k", lw=1.2, label="Pareto front")
        nom = c[report["nominal"]]
        ax.scatter([nom["relative_energy"]], [100 * nom["accuracy"][m]], marker="s", s=60, facecolor="none",
                   edgecolor="k", lw=1.5, label="nominal design", zorder=5)
        if m == report["target"]["metric"]:
            ax.axhline(100 * report["target"]["threshold_accuracy"], color="C3", ls="--", lw=1, label="target")
        if report["reachable"]:
            ch = c[report["chosen"]]
            ax.scatter([ch["relative_energy"]], [100 * ch["accuracy"][m]], marker="*", s=260, color="C3",
                       edgecolor="k", zorder=6, label=f"chosen: {knob_text(ch['knobs'])}")
        ax.set_xlabel("energy per inference relative to the nominal design")
        ax.set_title(f"top-1 accuracy, {title}, {100 * report['certification']['level']:g} % intervals", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(*accuracy_axis(report))
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return p
