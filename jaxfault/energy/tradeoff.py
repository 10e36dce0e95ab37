"""Accuracy vs energy of protection: read the rows of the protection methods' results, give every
operating point its energy, and find the Pareto front (max accuracy, min energy) per family.

Input: files in the row schema ``jaxfault.rows/1`` (jaxfault.core.rows), which every evaluation
CLI writes (eval.run, eval.sparrow, eval.swim, eval.neuralfuse) and a campaign's results file
holds; nothing else is read, and a file in another form is a one-line error. A row's family is
that of its fault model:

* ``hbm`` -> DRAM refresh: the rate is the retention BER, priced through the refresh interval it
  needs (or the row's own ``refresh_interval_s``), with the scheme's stored bits
  (``fault.scheme``, or the row's ``stored_bits_per_weight``);
* ``sram`` -> SRAM voltage: the rate is the SRAM BER, priced through the supply voltage (or the
  row's ``voltage``), plus the row's ``generator`` network at the same voltage when it has one;
* ``cim`` -> write-verify: priced by the fraction verified, the row's ``mask_p`` (0, none
  verified, when the row has none), with ``selection`` naming the selection method.

Rows of other fault models, and HBM rows of formats other than bfloat16 (the DRAM model prices
16-bit words), have no energy model: they are listed as skipped (or refused). The
model whose energy is computed is the row's (or its report's) ``model`` or ``checkpoint``, with
``input_shape`` or ``dataset`` giving the input. A language model's rows (metric
``perplexity``, lower is better) are scored by their median perplexity, for one window of the
model's context; accuracy and perplexity rows are not mixed in one trade-off.

Every row gets a label naming its method and the configuration that tells it apart from the
other rows of its family (the operating point is a column of its own): "sparrow B64", "secded",
"none" (DRAM); "neuralfuse UNetS", "neuralfuse none" (SRAM, with and without a generator);
"swim SM", "swim none", "swim all" (write-verify). A row's own "label" replaces it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfault.energy import protection as P
from jaxfault.energy.analysis import evaluate, pareto_mask
from jaxfault.energy.core import Hardware
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.rows import is_number

DATASET_INPUTS = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                  "gtsrb": (32, 32, 3)}
POINT_KEYS = ("ber", "voltage", "refresh_interval_s", "mask_p")
FAMILY_OF = {"hbm": "dram", "sram": "sram", "cim": "verify"}   # fault model -> energy family
FAMILIES = {"dram": "DRAM refresh (Sparrow / SEC-DED)", "sram": "SRAM voltage (NeuralFuse)", "verify": "write-verify (SWIM)"}
FAMILY_NAMES = {"dram": "DRAM refresh", "sram": "SRAM voltage", "verify": "write-verify"}
# what each family's "relative" column divides by (the row's energy over this reference)
REFERENCE_NAMES = {"dram": "unprotected 16-bit weights refreshed every 64 ms (the nominal interval)",
                   "sram": "the model alone at the nominal voltage",
                   "verify": "write-verifying every weight"}


def record_of(row: dict, context: dict, source: str) -> dict:
    """The pricing record of one row: its context and scalar fields, its family, its scheme and
    fraction verified where its family has them, and its score (accuracy mean, std and interval,
    or median perplexity and interval)."""
    rec = {**context, **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}, "source": source}
    if "input_shape" in row or "input_shape" in context:
        rec["input_shape"] = row.get("input_shape", context.get("input_shape"))
    rec["family"] = FAMILY_OF.get(row["fault_model"])
    fault = row.get("fault") or {}
    if rec["family"] == "dram" and fault.get("format", "bfloat16") != "bfloat16":
        rec["family"] = None          # the energy of protection is modelled for 16-bit (bf16) words
    if rec["family"] == "dram":
        rec.setdefault("scheme", fault.get("scheme", "none"))
        if fault.get("block_size") is not None:
            rec.setdefault("block_size", fault["block_size"])
    elif rec["family"] == "verify":
        rec.setdefault("mask_p", 0.0)
    s = row["summary"]
    if row["metric"] == "perplexity":
        rec.update(metric="perplexity", perplexity_median=float(s["median"]),
                   perplexity_ci=_interval(s, "median_lo", "median_hi"))
        if rec.get("checkpoint"):
            rec["model"] = str(rec["checkpoint"])
    else:
        rec.update(metric=row["metric"], accuracy_mean=float(s["mean"]),
                   accuracy_std=float(s["std"]) if is_number(s.get("std")) else None,
                   accuracy_ci=_interval(s, "ci_lo", "ci_hi"))
    return rec


def _interval(summary: dict, lo: str, hi: str) -> list | None:
    """[lo, hi] of a summary's interval, None when it carries none."""
    ok = is_number(summary.get(lo)) and is_number(summary.get(hi))
    return [float(summary[lo]), float(summary[hi])] if ok else None


# what an operating point's value must be: (check, requirement)
POINT_RANGES = {"ber": (lambda v: 0 <= v <= 1, "in [0, 1]"), "voltage": (lambda v: v > 0, "> 0"),
                "refresh_interval_s": (lambda v: v > 0, "> 0"), "mask_p": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def check_record(rec: dict, path: str, row: int) -> None:
    """Refuse, in one line naming the file, the row (1-based, in file order) and the value, a
    record whose accuracy is not a number in [0, 1] (NaN included) or whose operating point is not
    a finite number in its range (a BER given as a string, a fraction of 2)."""
    label = f" ({rec['label']})" if rec.get("label") else ""
    where = f"{path}: row {row}{label}"
    if rec.get("metric") == "perplexity":
        ppl = rec.get("perplexity_median")
        if not (is_number(ppl) and ppl >= 1.0):
            raise JaxfaultError(f"{where}: perplexity must be a number >= 1 (inf for a diverged model), got {ppl!r}")
        if not rec.get("model"):
            raise JaxfaultError(f"{where}: a perplexity row needs the language model it was measured on "
                                "(a 'checkpoint' folder or a 'model')")
    else:
        acc = rec.get("accuracy_mean")
        if not (is_number(acc) and 0.0 <= acc <= 1.0):
            raise JaxfaultError(f"{where}: accuracy must be a number in [0, 1], got {acc!r}")
    for k, (ok, requirement) in POINT_RANGES.items():
        if k not in rec:
            continue
        v = rec[k]
        if not (is_number(v) and math.isfinite(v) and ok(v)):
            raise JaxfaultError(f"{where}: {k} must be a finite number {requirement}, got {v!r}")


def load_records(paths: Sequence[str], skipped: list | None = None) -> list[dict]:
    """Records of every file's rows (jaxfault.core.rows.read), each range-checked (check_record).
    Rows of fault models without an energy model are appended to `skipped` when a list is given
    (else they are an error)."""
    from jaxfault.core import rows as R

    recs = []
    for p in paths:
        context, rows = R.read(str(p))
        if not rows:
            raise JaxfaultError(f"{p}: no rows")
        for i, row in enumerate(rows, 1):
            rec = record_of(row, context, str(p))
            if rec["family"] is None:
                if skipped is None:
                    raise JaxfaultError(f"{p}: row {i}: fault model {row['fault_model']!r} has no energy model "
                                        f"(priced: {', '.join(FAMILY_OF)})")
                skipped.append(rec)
                continue
            check_record(rec, str(p), i)
            recs.append(rec)
    kinds = {r.get("metric") == "perplexity" for r in recs}
    if len(kinds) > 1:
        first = next(str(r.get("source")) for r in recs if r.get("metric") == "perplexity")
        raise JaxfaultError(f"{first} holds a language model's perplexities, the other files accuracies; a "
                            "trade-off compares one metric: run eval.tradeoff on each")
    return recs


def family(rec: dict) -> str:
    """A record's energy family (record_of: from its row's fault model)."""
    if rec.get("family") not in FAMILIES:
        raise JaxfaultError(f"record of fault model {rec.get('fault_model')!r} has no energy model")
    return rec["family"]


def point_energy(rec: dict, net_layers, energy, qw, pw, *, dram_kw: dict, retention_table, voltage_table,
                 v_nominal: float, write_verify: P.WriteVerify, generator_energy=None,
                 ecc_read_scaling: float = P.ECC_READ_SCALING) -> dict:
    """Energy of one operating point and its reference (unprotected / nominal / full verify)."""
    fam = family(rec)
    base = float(energy.total)
    if fam == "dram":
        scheme = rec["scheme"]
        bits = int(rec["stored_bits_per_weight"]) if "stored_bits_per_weight" in rec else P.ecc_stored_bits(scheme)
        if bits < 16:
            raise JaxfaultError(f"stored bits per weight must be >= 16, got {bits}")
        if "refresh_interval_s" in rec:
            interval = float(rec["refresh_interval_s"])
        elif "ber" in rec:
            interval = float(P.interval_for_ber(max(float(rec["ber"]), 1e-30), retention_table))
        else:
            raise JaxfaultError(f"DRAM record needs ber or refresh_interval_s: {rec}")
        if interval <= 0:
            raise JaxfaultError(f"refresh interval must be > 0, got {interval}")
        nw = np.asarray([l.num_weights for l in net_layers], np.float64)
        store = float(P.weight_storage_bits(nw, qw, pw, bits))
        store0 = float(P.weight_storage_bits(nw, qw, pw, 16))
        dram_w0 = float(np.sum(energy.data[..., 0, 0]))
        e = base - dram_w0 + float(np.sum(P.dram_weight_energy_with_ecc(energy, bits, ecc_read_scaling))) + float(P.dram_refresh_energy(store, interval, **dram_kw))
        ref = base + float(P.dram_refresh_energy(store0, P.NOMINAL_REFRESH_S, **dram_kw))
        return {"family": fam, "scheme": scheme, "refresh_interval_s": interval, "energy": e, "reference_energy": ref,
                "unit": "normalised energy per inference (MAC = 1), incl. refresh"}
    if fam == "sram":
        if "voltage" in rec:
            v = float(rec["voltage"])
        elif "ber" in rec:
            v = float(P.voltage_for_ber(max(float(rec["ber"]), 1e-30), voltage_table)) * v_nominal
        else:
            raise JaxfaultError(f"NeuralFuse record needs voltage or ber: {rec}")
        if v <= 0:
            raise JaxfaultError(f"voltage must be > 0, got {v}")
        e = float(P.total_energy_at_voltage(energy, v, v_nominal))
        if rec.get("generator") and generator_energy is not None:
            e += float(P.total_energy_at_voltage(generator_energy(rec["generator"]), v, v_nominal))
        return {"family": fam, "voltage": v, "energy": e, "reference_energy": base,
                "unit": "normalised energy per inference (MAC = 1)"}
    f = float(rec["mask_p"])
    if not 0 <= f <= 1:
        raise JaxfaultError(f"fraction verified must be in [0, 1], got {f}")
    nw = sum(l.num_weights for l in net_layers)
    return {"family": fam, "fraction": f, "energy": float(P.write_verify_cycles(nw, f, write_verify)),
            "reference_energy": float(P.write_verify_cycles(nw, 1.0, write_verify)), "unit": "programming cycles (write-verify)"}


def _takes_block_size(scheme: str) -> bool:
    from jaxfault.ecc import SCHEMES

    try:
        return SCHEMES.get(scheme).info.get("block_sizes") is not None
    except JaxfaultError:
        return False


def method_and_label(rec: dict, fam: str, scheme: str | None = None) -> tuple[str, str]:
    """(method, label) of a row: the method of its family (DRAM rows: the ECC scheme) and the method
    with the configuration that tells the row apart from the others of its family; the operating
    point (BER, voltage, fraction) is not part of it. A record's own "label" wins."""
    if fam == "dram":
        method = "none" if str(scheme).lower() in ("none", "unprotected") else str(scheme)
        bs = rec.get("block_size")
        label = f"{method} B{bs}" if bs is not None and method != "none" and _takes_block_size(method) else method
    elif fam == "sram":
        method = "neuralfuse"
        label = f"neuralfuse {rec.get('generator') or 'none'}"
    else:
        method = "swim"
        sel = rec.get("selection")
        label = f"swim {sel}" if sel else "swim"
    if rec.get("label"):
        label = str(rec["label"])
    return method, label


def tradeoff(records: Sequence[dict], layers_for, *, qw=16, qa=16, pw=0.0, hw: Hardware = Hardware(),
             generator_layers_for=None, **kw) -> list[dict]:
    """Energy and Pareto flag for every record. layers_for(model, input_shape) -> layer list of a
    classifier; generator_layers_for(name, input_shape, model) that of a NeuralFuse generator in
    front of classifier `model` (input_shape None: the classifier's input; default: layers_for)."""
    cache: dict = {}
    generator_layers_for = generator_layers_for or (lambda name, shape, model: layers_for(name, shape))

    def energy_of(model, shape, in_front_of=None):
        key = (model, tuple(shape) if shape else None, in_front_of)
        if key not in cache:
            layers = (generator_layers_for(model, shape, in_front_of) if in_front_of is not None
                      else layers_for(model, shape))
            cache[key] = (layers, evaluate(layers, qw, qa, pw, hw))
        return cache[key]

    rows = []
    for rec in records:
        shape = rec.get("input_shape") or DATASET_INPUTS.get(str(rec.get("dataset", "")).lower())
        layers, e = energy_of(rec.get("model"), shape)
        n = len(layers)
        qwv = np.broadcast_to(np.asarray(qw, float), (n,))
        pwv = np.broadcast_to(np.asarray(pw, float), (n,))
        gen = (lambda name, shape=shape, model=rec.get("model"): energy_of(name, shape, in_front_of=str(model))[1])
        info = point_energy(rec, layers, e, qwv, pwv, generator_energy=gen, **kw)
        info["relative_energy"] = info["energy"] / info["reference_energy"]
        method, label = method_and_label(rec, info["family"], info.get("scheme"))
        score = ({"metric": "perplexity", "perplexity_median": rec["perplexity_median"],
                  "perplexity_ci": rec.get("perplexity_ci")} if rec.get("metric") == "perplexity" else
                 {"metric": "top1", "accuracy_mean": rec["accuracy_mean"], "accuracy_std": rec.get("accuracy_std"),
                  "accuracy_ci": rec.get("accuracy_ci")})
        rows.append({"method": method, "label": label, "model": rec.get("model"), **score,
                     "operating_point": {k: rec[k] for k in POINT_KEYS if k in rec}, **info, "source": rec.get("source")})
    for fam in {r["family"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["family"] == fam]
        # the score to maximise: accuracy, or minus the perplexity (a diverged inf is the worst)
        obj = np.array([[rows[i]["relative_energy"], _score(rows[i])] for i in idx])
        mask = pareto_mask(obj, [True, False])
        for i, m in zip(idx, mask):
            rows[i]["pareto"] = bool(m)
    return rows


def _score(row: dict) -> float:
    if row.get("metric") == "perplexity":
        v = row["perplexity_median"]
        return -v if math.isfinite(v) else -1e300
    return row["accuracy_mean"]


def _value_text(row: dict) -> tuple[str, str]:
    """(value, 95 % interval) of a row as printed."""
    if row.get("metric") == "perplexity":
        ci = row.get("perplexity_ci")
        return f"{row['perplexity_median']:.4g}", (f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "n/a")
    ci = row.get("accuracy_ci")
    return f"{row['accuracy_mean']:.4f}", (f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "n/a")


def format_rows(rows: Sequence[dict]) -> str:
    """The table eval.tradeoff prints: family, label, operating point, accuracy with its 95 %
    interval ("n/a" when the source file carries neither an interval nor per-trial values),
    energy, energy relative to the family's reference, Pareto flag; columns as wide as their
    longest entry."""
    rows = sorted(rows, key=lambda r: (r["family"], r["label"], r["relative_energy"]))
    fams = [FAMILY_NAMES.get(r["family"], r["family"]) for r in rows]
    points = [", ".join(f"{k}={float(v):g}" for k, v in r["operating_point"].items()) for r in rows]
    wf = max([len("family")] + [len(s) for s in fams])
    wl = max([len("label")] + [len(r["label"]) for r in rows])
    wp = max([len("point")] + [len(s) for s in points])
    values = [_value_text(r) for r in rows]
    head = "perplexity" if rows and rows[0].get("metric") == "perplexity" else "accuracy"
    wv = max([len(head)] + [len(v) for v, _ in values])
    wc = max([len("95% interval")] + [len(c) for _, c in values])
    lines = [f"{'family':<{wf}}  {'label':<{wl}}  {'point':<{wp}}  {head:>{wv}}  {'95% interval':>{wc}}  {'energy':>10}  "
             f"{'relative':>8}  pareto"]
    for r, f, p, (v, ci) in zip(rows, fams, points, values):
        lines.append(f"{f:<{wf}}  {r['label']:<{wl}}  {p:<{wp}}  {v:>{wv}}  {ci:>{wc}}  {r['energy']:>10.4g}  "
                     f"{r['relative_energy']:>8.4f}  {'*' if r['pareto'] else ''}".rstrip())
    return "\n".join(lines)


def format_legend(rows: Sequence[dict]) -> str:
    """The lines under eval.tradeoff's table: what accuracy and pareto mean, and per family the
    energy's unit and what 'relative' divides by."""
    if rows and rows[0].get("metric") == "perplexity":
        lines = ["perplexity: median over trials with its 95 % order-statistic interval (inf: diverged); pareto *: "
                 "no other row of the family has both less energy and a lower perplexity"]
    else:
        lines = ["accuracy: top-1 as a fraction; pareto *: no other row of the family has both less energy and "
                 "more accuracy"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        unit = next(r.get("unit") for r in rows if r["family"] == fam)
        lines.append(f"{FAMILY_NAMES.get(fam, fam)}: energy in {unit}; relative = energy / energy of "
                     f"{REFERENCE_NAMES.get(fam, 'the family reference')}")
    return "\n".join(lines)


PLOT_CAP = 1e6     # a diverged (inf) perplexity is drawn at this height


def _plotted(row: dict) -> float:
    if row.get("metric") == "perplexity":
        return min(row["perplexity_median"], PLOT_CAP)
    return row["accuracy_mean"]


def _plotted_ci(row: dict) -> list:
    if row.get("metric") == "perplexity":
        return [min(c, PLOT_CAP) for c in (row.get("perplexity_ci") or [row["perplexity_median"]] * 2)]
    return row.get("accuracy_ci") or [row["accuracy_mean"]] * 2


def plot_tradeoff(rows: Sequence[dict], path) -> Path:
    """One panel per method family: accuracy vs relative energy, Pareto front drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    fams = [f for f in ("dram", "sram", "verify") if any(r["family"] == f for r in rows)]
    fig, axes = plt.subplots(1, len(fams), figsize=(4.6 * len(fams), 3.8), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        rs = [r for r in rows if r["family"] == fam]
        for lab in sorted({r["label"] for r in rs}):
            pts = sorted((r for r in rs if r["label"] == lab), key=lambda r: r["relative_energy"])
            m = np.array([_plotted(r) for r in pts])
            ci = np.array([_plotted_ci(r) for r in pts], float)
            ax.errorbar([r["relative_energy"] for r in pts], m, yerr=[m - ci[:, 0], ci[:, 1] - m], fmt="o", alpha=0.7,
                        capsize=2, label=lab)
        front = sorted((r for r in rs if r["pareto"]), key=lambda r: r["relative_energy"])
        ax.plot([r["relative_energy"] for r in front], [_plotted(r) for r in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel("energy relative to " + {"dram": "no ECC, 64 ms refresh", "sram": "nominal voltage", "verify": "full write-verify"}[fam])
        if rs[0].get("metric") == "perplexity":
            ax.set_yscale("log")
            ax.set_ylabel("perplexity, median and 95 % interval")
        else:
            ax.set_ylabel("accuracy, mean and 95 % interval")
        ax.set_title(FAMILIES[fam], fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return p
