"""A plan's answer: energy and score of every configuration, the Pareto fronts, the cheapest
configuration meeting the target, as JSON, a Markdown table and a plot.

**Scores.** Every trial of a configuration has one score in [0, 1], higher is better: its top-1
accuracy for a classifier, its inverse perplexity 1 / perplexity for a language model (a
diverged trial, perplexity inf, scores 0). The target's statistic maps onto a statistic of the
score: a classifier's ``mean``, ``p5`` (5th percentile) or ``median`` of accuracy are those of the
score; a language model's ``median`` perplexity is 1 / the score's median and its ``p95`` (95th
percentile) is 1 / the score's 5th percentile, since 1/x reverses the order of the trials.
Quantiles are numpy's linear interpolation between order statistics (with 20 trials the 5th
percentile lies between the lowest and the second-lowest score). Drops are in percentage points
of accuracy, and increases in per cent of perplexity, against the target's reference: ``clean``
(the deployed model without any fault: bf16 words / quantized kernels, no generator) or
``nominal`` (the unprotected nominal design's own statistic).

A configuration is on the front of a statistic when no other configuration has lower or equal
energy and a higher or equal score statistic with one of them strict.

Intervals (jaxfault.core.stats): every mean carries its betting interval, every quantile its
order-statistic interval, at the target's level (95 % by default), over the configuration's
trials. **Certification**: each configuration's target statistic also gets an interval at the
Bonferroni-corrected level 1 - (1 - level) / (K x L), K the number of configurations, L the looks
a configuration may get (1 + the extra chunks a certified plan may add; 1 for the mean, whose
betting interval with its bets tuned for the trial budget stays valid under any stopping rule).
A configuration **met** the target when that interval's lower end is >= the threshold, **not met**
when its upper end is below it, **undecided** otherwise. All these claims hold together with
probability >= level, so the chosen configuration's "met" holds at that level. Without
``certify`` the choice is made on the point estimates and the statuses are reported alongside;
with it, the cheapest configuration that met the target is chosen.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxfault.core import stats
from jaxfault.energy.analysis import pareto_mask
from jaxfault.plan.stages import knob_text, nominal_text

STATUSES = ("met", "not met", "undecided")
QUANTILES = {"p5": 0.05, "median": 0.5}        # score statistics that are quantiles
# the score statistic behind each target metric (module docstring)
SCORE_STATISTIC = {"classification": {"mean": "mean", "p5": "p5", "median": "median"},
                   "language_model": {"median": "median", "p95": "p5"}}
# the two statistics whose fronts a report draws, per task
PANELS = {"classification": ("mean", "p5"), "language_model": ("median", "p95")}


def score_stats(values, level: float = 0.95, horizon: int | None = None) -> dict:
    """mean, p5, median, std, min, max and n of a configuration's per-trial scores (kept as
    "values"), with the mean's betting interval (bets tuned for `horizon` trials) and each
    quantile's order-statistic interval at `level` (each [lo, hi])."""
    a = np.asarray(values, np.float64)
    out = {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
           "n": int(a.size), "level": level,
           "mean_ci": list(stats.mean_ci(a, level, horizon=max(horizon or a.size, a.size)))}
    for name, q in QUANTILES.items():
        out[name] = float(np.percentile(a, 100 * q))
        out[f"{name}_ci"] = list(stats.quantile_ci(a, q, level, bounds=(0.0, 1.0)))
    out["values"] = a.tolist()
    return out


def perplexity_stats(score: dict) -> dict:
    """A language model's perplexity statistics from its score statistics: the median and the
    95th percentile (1 / the score's median and 5th percentile, intervals reversed), and the
    diverged trials (score 0, perplexity inf) with their Wilson interval."""
    inv = lambda v: math.inf if v <= 0 else 1.0 / v  # noqa: E731
    n = score["n"]
    k = int(sum(v <= 0 for v in score["values"]))
    return {"median": inv(score["median"]), "median_ci": [inv(score["median_ci"][1]), inv(score["median_ci"][0])],
            "p95": inv(score["p5"]), "p95_ci": [inv(score["p5_ci"][1]), inv(score["p5_ci"][0])],
            "diverged": k, "diverged_fraction": k / n, "diverged_ci": list(stats.proportion_ci(k, n, score["level"])),
            "n": n}


def certification_settings(plan: dict, n_configs: int) -> dict:
    """The multiple-comparison correction of a plan's target claims (module docstring): the
    family level, K, L, the per-configuration level and the trial budget."""
    t, trials = plan["target"], plan["trials"]
    cap = (t["max_trials"] or 10 * trials) if t["certify"] else trials
    looks = 1 + math.ceil((cap - trials) / trials)
    per_looks = looks if t["metric"] != "mean" else 1
    alpha = (1.0 - t["level"]) / (n_configs * per_looks)
    return {"certify": t["certify"], "level": t["level"], "correction": "bonferroni", "comparisons": n_configs,
            "looks": per_looks, "per_configuration_level": 1.0 - alpha, "max_trials": cap}


def score_statistic(plan: dict) -> str:
    """The score statistic (mean, p5, median) the plan's target is decided on."""
    return SCORE_STATISTIC[plan.get("task") or "classification"][plan["target"]["metric"]]


def target_interval(values, statistic: str, settings: dict) -> tuple[float, float]:
    """The corrected interval of a configuration's score statistic (see certification_settings)."""
    a = np.asarray(values, np.float64)
    level = settings["per_configuration_level"]
    if statistic == "mean":
        return stats.mean_ci(a, level, horizon=max(settings["max_trials"], a.size))
    return stats.quantile_ci(a, QUANTILES[statistic], level, bounds=(0.0, 1.0))


def target_status(lo: float, hi: float, threshold: float) -> str:
    """met / not met / undecided of an interval against the threshold (tolerance: scores are
    means over the evaluation images or tokens in float32/float64)."""
    if lo >= threshold - 1e-9:
        return "met"
    if hi < threshold - 1e-9:
        return "not met"
    return "undecided"


def target_threshold(target: dict, task: str, reference: float) -> float:
    """The score a configuration's target statistic must reach: min_accuracy or reference minus
    max_drop_points for a classifier; 1 / max_perplexity, or the reference score divided by
    1 + max_increase_percent / 100, for a language model."""
    if task == "language_model":
        if target["max_perplexity"] is not None:
            return 1.0 / target["max_perplexity"]
        return reference / (1.0 + target["max_increase_percent"] / 100.0)
    if target["min_accuracy"] is not None:
        return target["min_accuracy"]
    return reference - target["max_drop_points"] / 100.0


def _rule(target: dict, task: str, reference: float) -> str:
    m = target["metric"]
    where = {"mean": "mean", "p5": "5th percentile", "median": "median", "p95": "95th percentile"}[m]
    if task == "language_model":
        if target["max_perplexity"] is not None:
            return f"perplexity {m} <= {target['max_perplexity']:g}"
        return (f"perplexity increase <= {target['max_increase_percent']:g} % at the {where} over trials, against "
                f"the {target['reference']} perplexity {1.0 / reference:.4g}")
    if target["min_accuracy"] is not None:
        return f"top-1 {m} >= {100 * target['min_accuracy']:.2f} %"
    return (f"top-1 drop <= {target['max_drop_points']:g} point(s) at the {where} over trials, against the "
            f"{target['reference']} accuracy {100 * reference:.2f} %")


def build_report(plan: dict, rows: list[dict], energy_model, clean_score: float, *,
                 compiled: int | None = None, seconds: float | None = None, block_size: int = 64) -> dict:
    """The JSON-ready report of a plan run (see the module docstring)."""
    task = plan.get("task") or "classification"
    entries = []
    settings = certification_settings(plan, len(rows))
    horizon = settings["max_trials"] if settings["certify"] else None
    for r in rows:
        e = energy_model.breakdown(r["knobs"], block_size)
        sc = score_stats(r["score"], plan["target"]["level"], horizon)
        entries.append({"knobs": r["knobs"], "rates": r["rates"], "nominal": bool(r.get("nominal")),
                        "energy": e, "score": sc, "realised_rates": r.get("realised_rates", {}),
                        "forward_passes": r.get("forward_passes")})
        if task == "language_model":
            entries[-1]["perplexity"] = perplexity_stats(sc)
    nominal = next(e for e in entries if e["nominal"])
    e_ref = nominal["energy"]["total"]
    target = plan["target"]
    stat = score_statistic(plan)
    reference = clean_score if target["reference"] == "clean" else nominal["score"][stat]
    threshold = target_threshold(target, task, reference)
    panels = PANELS[task]
    for e in entries:
        e["relative_energy"] = e["energy"]["total"] / e_ref
        e["saving"] = 1.0 - e["relative_energy"]
        e["change"] = {m: change(e["score"][SCORE_STATISTIC[task][m]], reference, task) for m in panels}
        # tolerance: scores are means over the evaluation images or tokens in float32/float64
        e["meets_target"] = bool(e["score"][stat] >= threshold - 1e-9)
        lo, hi = target_interval(e["score"]["values"], stat, settings)
        e["certification"] = {"status": target_status(lo, hi, threshold), "bound": lo, "upper": hi,
                              "trials": e["score"]["n"]}
        if settings["certify"]:
            e["meets_target"] = e["certification"]["status"] == "met"
    fronts = {}
    for m in panels:
        obj = np.array([[e["energy"]["total"], e["score"][SCORE_STATISTIC[task][m]]] for e in entries])
        mask = pareto_mask(obj, [True, False])
        for e, on in zip(entries, mask):
            e[f"pareto_{m}"] = bool(on)
        fronts[m] = sorted((i for i, on in enumerate(mask) if on), key=lambda i: entries[i]["energy"]["total"])
    meeting = [i for i, e in enumerate(entries) if e["meets_target"]]
    chosen = min(meeting, key=lambda i: (entries[i]["energy"]["total"], -entries[i]["score"][stat])) if meeting else None
    if settings["certify"]:   # the best: the highest certified bound, the cheapest among equals
        best = max(range(len(entries)), key=lambda i: (entries[i]["certification"]["bound"], -entries[i]["energy"]["total"]))
    else:
        best = max(range(len(entries)), key=lambda i: (entries[i]["score"][stat], -entries[i]["energy"]["total"]))
    settings["counts"] = {s: sum(e["certification"]["status"] == s for e in entries) for s in STATUSES}
    return {"task": task, "score": SCORE_NAMES[task],
            "target": {**target, "rule": _rule(target, task, reference), "statistic": stat,
                       "threshold_score": threshold, "reference_score": reference},
            "reachable": chosen is not None, "chosen": chosen, "best": best,
            "clean_score": clean_score, "nominal": entries.index(nominal), "nominal_energy": e_ref,
            "energy_unit": "normalised energy per inference (one 16-bit MAC = 1)"
                           + ("; one inference is one window of the evaluation's length" if task == "language_model" else ""),
            "inference_period_s": plan["inference_period_s"], "fronts": fronts, "configurations": entries,
            "compiled_programs": compiled, "seconds": seconds, "trials": plan["trials"],
            "certification": settings, "trials_run": int(sum(len(r["score"]) for r in rows))}


SCORE_NAMES = {"classification": "top-1 accuracy", "language_model": "inverse perplexity (1 / perplexity)"}


def change(score: float, reference: float, task: str) -> float:
    """A score statistic against the reference: the drop in accuracy points for a classifier, the
    increase of perplexity in per cent for a language model (inf for a diverged statistic)."""
    if task == "language_model":
        return math.inf if score <= 0 else 100.0 * (reference / score - 1.0)
    return 100.0 * (reference - score)


# ------------------------------------------------------------------------------ text
def show(value: float, task: str) -> str:
    """A score as printed: accuracy in %, or the perplexity it stands for."""
    if task == "language_model":
        return "inf" if value <= 0 else f"{1.0 / value:.4g}"
    return f"{100 * value:.2f} %"


def show_interval(ci, task: str) -> str:
    """A score interval as printed: [lo, hi] in %, or the perplexity interval (ends reversed)."""
    if task == "language_model":
        inv = lambda v: "inf" if v <= 0 else f"{1.0 / v:.4g}"  # noqa: E731
        return f"[{inv(ci[1])}, {inv(ci[0])}]"
    return f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def target_value(report: dict, e: dict) -> str:
    """A configuration's target statistic as printed (e.g. 'p5 88.98 %', 'p95 perplexity 5.2')."""
    t = report["target"]
    unit = " perplexity" if report["task"] == "language_model" else ""
    return f"{t['metric']}{unit} {show(e['score'][t['statistic']], report['task'])}"


def summary_lines(report: dict) -> list[str]:
    """The answer in a few lines: target, chosen configuration and saving (or unreachable, best)."""
    c = report["configurations"]
    t = report["target"]
    task = report["task"]
    thr = f"perplexity {show(t['threshold_score'], task)}" if task == "language_model" else show(t['threshold_score'], task)
    out = [f"target: {t['rule']} (threshold {thr})",
           f"nominal design ({nominal_text(c[report['nominal']]['knobs'])}): "
           f"{_line(c[report['nominal']], task)}"]
    cert = report["certification"]
    k = cert["counts"]
    out.append(f"{'certified' if cert['certify'] else 'certification (not used for the choice)'}: "
               f"{metric_name(t['metric'])} bound at {100 * cert['level']:g} % for all {cert['comparisons']} "
               f"configurations together (Bonferroni: each at {level_text(cert['per_configuration_level'])} %"
               + (f", {cert['looks']} looks each" if cert["looks"] > 1 else "")
               + f"): {k['met']} met, {k['not met']} not met, {k['undecided']} undecided; "
               f"{report['trials_run']} trials in all")
    if report["reachable"]:
        ch = c[report["chosen"]]
        out.append(f"chosen: {knob_text(ch['knobs'])}: {_line(ch, task)}; saves {100 * ch['saving']:.2f} % of the nominal "
                   f"design's energy per inference; {_cert(ch, t['metric'], task)}")
    else:
        b = c[report["best"]]
        out.append(f"unreachable: no configuration {'certainly ' if cert['certify'] else ''}meets the target; "
                   f"best found: {knob_text(b['knobs'])}: {_line(b, task)}; {_cert(b, t['metric'], task)}")
    return out


def level_text(level: float) -> str:
    """A confidence level in per cent with the digits that keep it below 100 (99.98, 99.999)."""
    for digits in range(4, 12):
        text = f"{100 * level:.{digits}g}"
        if float(text) < 100:
            return text
    return f"{100 * level!r}"


def metric_name(metric: str) -> str:
    return {"p5": "5th-percentile", "p95": "95th-percentile", "median": "median", "mean": "mean"}[metric]


def _cert(e: dict, metric: str, task: str) -> str:
    c = e["certification"]
    return f"{c['status']} ({metric} bound {show(c['bound'], task)}, {c['trials']} trials)"


def _line(e: dict, task: str) -> str:
    a = e["score"]
    if task == "language_model":
        p = e["perplexity"]
        body = (f"perplexity median {show(a['median'], task)} {show_interval(a['median_ci'], task)}, p95 "
                f"{show(a['p5'], task)} {show_interval(a['p5_ci'], task)}, diverged {p['diverged']}/{p['n']}")
    else:
        body = (f"mean {show(a['mean'], task)} {show_interval(a['mean_ci'], task)}, p5 {show(a['p5'], task)} "
                f"{show_interval(a['p5_ci'], task)}")
    return (f"{body} over {a['n']} trials, energy {e['energy']['total']:.4g} "
            f"({e['relative_energy']:.4f} x nominal)")


def format_table(report: dict, only_front: bool = False) -> str:
    """Markdown table of the configurations (or of those on either front), cheapest first."""
    c, task = report["configurations"], report["task"]
    panels = PANELS[task]
    idx = sorted(range(len(c)), key=lambda i: c[i]["energy"]["total"])
    if only_front:
        idx = [i for i in idx if any(c[i][f"pareto_{m}"] for m in panels)]
    lv = f"{100 * report['certification']['level']:g} %"
    lm = task == "language_model"
    stat = {m: SCORE_STATISTIC[task][m] for m in panels}
    unit = "" if lm else " %"
    head = " | ".join(f"{m}{' perplexity' if lm else ''}{unit} [{lv}]" for m in panels)
    last = panels[1]
    change_col = f"increase {last} (%)" if lm else f"drop {last} (pts)"
    lines = [f"| configuration | BER / rates | energy (x nominal) | {head} | trials | "
             + ("diverged | " if lm else "") + f"{change_col} | front | target (bound) |",
             "|---|---|---|---|---|---|" + ("---|" if lm else "") + "---|---|---|"]
    for i in idx:
        e = c[i]
        mark = "chosen" if i == report["chosen"] else ("nominal" if i == report["nominal"] else "")
        front = "/".join(m for m in panels if e[f"pareto_{m}"])
        a, cert = e["score"], e["certification"]
        cells = " | ".join(f"{show(a[stat[m]], task).rstrip(' %')} {show_interval(a[stat[m] + '_ci'], task)}"
                           for m in panels)
        div = f"{e['perplexity']['diverged']} | " if lm else ""
        lines.append(f"| {knob_text(e['knobs'])} | {', '.join(f'{r:.2g}' for r in e['rates'])} | "
                     f"{e['relative_energy']:.4f} | {cells} | {a['n']} | {div}"
                     f"{e['change'][last]:+.2f} | {front} | {'yes' if e['meets_target'] else 'no'}, {cert['status']} "
                     f"({show(cert['bound'], task).rstrip(' %')}) {mark} |")
    return "\n".join(lines) + "\n"


def score_axis(report: dict) -> tuple[float, float]:
    """The y range of the plan's chart: every configuration's two plotted statistics on it, the
    unprotected ones far below the target included, with a point of margin; for perplexity, up to
    three times the clean perplexity, higher and diverged statistics drawn at the top)."""
    task = report["task"]
    ys = [_y(e["score"][SCORE_STATISTIC[task][m]], task) for e in report["configurations"] for m in PANELS[task]]
    ys = [y for y in ys if math.isfinite(y)]
    if task == "language_model":   # a log axis up to 3x the clean perplexity: collapsed points at the top
        top = min(max(ys), 3.0 / report["clean_score"]) if report["clean_score"] > 0 else max(ys)
        return 0.98 * min(ys), 1.05 * max(top, min(ys))
    return min(ys) - 1, max(ys) + 1


def _y(score: float, task: str) -> float:
    if task == "language_model":
        return math.inf if score <= 0 else 1.0 / score
    return 100 * score


def plot_report(report: dict, path) -> Path:
    """Two panels (a classifier's mean and 5th percentile of accuracy, a language model's median
    and 95th percentile of perplexity) against energy relative to the nominal design, all
    configurations coloured by their discrete knobs, the Pareto front as a step line, the target
    threshold dashed, the nominal design and the chosen configuration marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    c, task = report["configurations"], report["task"]
    lm = task == "language_model"
    low, high = score_axis(report)
    clip = lambda v: min(v, high) if lm else v  # noqa: E731  (a diverged statistic at the top)

    def family(e):
        k = e["knobs"]
        parts = [k["scheme"]] if "scheme" in k else []
        if k.get("generator"):
            parts.append("NeuralFuse")
        return " + ".join(parts) or "configurations"

    titles = {"mean": "mean over trials", "p5": "5th percentile over trials", "median": "median over trials",
              "p95": "95th percentile over trials"}
    fams = list(dict.fromkeys(family(e) for e in c))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, m in zip(axes, PANELS[task]):
        st = SCORE_STATISTIC[task][m]
        for j, f in enumerate(fams):
            pts = [e for e in c if family(e) == f]
            y = np.array([clip(_y(e["score"][st], task)) for e in pts])
            ci = np.array([sorted(clip(_y(v, task)) for v in e["score"][f"{st}_ci"]) for e in pts])
            # one hollow marker shape per family, so that families at the same point stay visible
            ax.errorbar([e["relative_energy"] for e in pts], y, yerr=[np.maximum(y - ci[:, 0], 0), np.maximum(ci[:, 1] - y, 0)],
                        fmt="osD^vP"[j % 6], ms=4.5 + 1.5 * (j % 3), mfc="none", alpha=0.7, lw=0.6,
                        color=f"C{j}", label=f)
        front = [c[i] for i in report["fronts"][m]]
        ax.step([e["relative_energy"] for e in front], [clip(_y(e["score"][st], task)) for e in front],
                where="post", color="k", lw=1.2, label="Pareto front")
        nom = c[report["nominal"]]
        ax.scatter([nom["relative_energy"]], [clip(_y(nom["score"][st], task))], marker="s", s=60, facecolor="none",
                   edgecolor="k", lw=1.5, label="nominal design", zorder=5)
        if m == report["target"]["metric"]:
            ax.axhline(_y(report["target"]["threshold_score"], task), color="C3", ls="--", lw=1, label="target")
        if report["reachable"]:
            ch = c[report["chosen"]]
            ax.scatter([ch["relative_energy"]], [clip(_y(ch["score"][st], task))], marker="*", s=260, color="C3",
                       edgecolor="k", zorder=6, label=f"chosen: {knob_text(ch['knobs'])}")
        ax.set_xlabel("energy per inference relative to the nominal design")
        ax.set_title(f"{'perplexity' if lm else 'top-1 accuracy'}, {titles[m]}, "
                     f"{100 * report['certification']['level']:g} % intervals", fontsize=9)
        ax.grid(alpha=0.3)
    if lm:
        axes[0].set_yscale("log")
    axes[0].set_ylim(low, high)
    axes[0].set_ylabel("perplexity (lower is better)" if lm else "top-1 accuracy (%)")
    axes[1].legend(fontsize=7, loc="upper right" if lm else "lower right")
    fig.tight_layout()
    p = atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return p
