"""Accuracy vs energy of protection: read the eval JSONs of the protection methods, give every
operating point its energy, and find the Pareto front (max accuracy, min energy) per method.

Minimal input schema (anything else in the file is ignored; records may be nested anywhere):
  {"method": "sparrow" | "secded" | "none" | "neuralfuse" | "swim",   # or per record
   "model": "lenet", "input_shape": [28, 28, 1],                      # optional
   "points": [ {<operating point>, <accuracy>, "label": "..."}, ... ]}
operating point: "ber" (sparrow/secded/none: retention BER -> refresh interval; neuralfuse: SRAM
BER -> voltage), "refresh_interval_s", "voltage", "mask_p" / "fraction" (swim: fraction verified).
accuracy: "accuracy_mean" | "acc_mean" | "mean_accuracy" | "top1_mean" | "accuracy" | "acc" | "top1"
| "mean" (a number, {"mean": x}, or a list of per-trial values); optional "accuracy_std".
Also read as they are: eval.sparrow results and sweeps (records with scheme, block_size,
stored_bits_per_weight, ber, top1.mean), eval.swim reports (selected[*] with method, mask_p and
mean; "none"/"all" -> fraction 0/1) and eval.neuralfuse reports (results[*] with ber and
perturbed_without / perturbed_with; base_model, generator).
"dataset" (mnist, fashion_mnist, cifar10, ...) sets the input shape when input_shape is absent.
A language model's record is scored by perplexity instead (lower is better): eval.sparrow's
{"perplexity": {"median", "median_ci95"}} or a campaign row's perplexity_median with
perplexity_median_lo/_hi; its energy is that of the model it names ("checkpoint", a jaxfault or
Hugging Face folder, or "model"), for one window of the model's context. Accuracy and perplexity
rows are not mixed in one trade-off.
Optional "ecc"/"scheme" (none/secded/sparrow/...), "block_size", for SWIM "selection" (SM,
magnitude, ...), and for NeuralFuse "generator" (a network name whose energy is added at the same
voltage).

Every row gets a label naming its method and the configuration that tells it apart from the
other rows of its family (the operating point is a column of its own): "sparrow B64", "secded",
"none" (DRAM); "neuralfuse UNetS", "neuralfuse none" (SRAM, with and without a generator);
"swim SM", "swim none", "swim all" (write-verify). A record's own "label" replaces it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxfault.energy import protection as P
from jaxfault.energy.analysis import evaluate, pareto_mask
from jaxfault.energy.core import Hardware
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.stats import mean_ci

ACC_KEYS = ("accuracy_mean", "acc_mean", "mean_accuracy", "top1_mean", "accuracy", "acc", "top1", "mean")
DATASET_INPUTS = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                  "gtsrb": (32, 32, 3)}
POINT_KEYS = ("ber", "voltage", "refresh_interval_s", "mask_p", "fraction")
DRAM_METHODS = {"unprotected", "ecc", "dram"}  # plus every registered ECC scheme name (P.ecc_names())
FAMILIES = {"dram": "DRAM refresh (Sparrow / SEC-DED)", "sram": "SRAM voltage (NeuralFuse)", "verify": "write-verify (SWIM)"}
FAMILY_NAMES = {"dram": "DRAM refresh", "sram": "SRAM voltage", "verify": "write-verify"}
# what each family's "relative" column divides by (the row's energy over this reference)
REFERENCE_NAMES = {"dram": "unprotected 16-bit weights refreshed every 64 ms (the nominal interval)",
                   "sram": "the model alone at the nominal voltage",
                   "verify": "write-verifying every weight"}


def _accuracy(rec: dict):
    for k in ACC_KEYS:
        if k in rec:
            v = rec[k]
            if isinstance(v, dict):
                v = v.get("mean", v.get("top1"))
            if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                v = float(np.mean(v))  # per-trial accuracies
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return None


def _accuracy_std(rec: dict):
    if isinstance(rec.get("accuracy_std"), (int, float)):
        return float(rec["accuracy_std"])
    for k in ACC_KEYS:
        if k in rec:
            v = rec[k]
            if isinstance(v, dict) and isinstance(v.get("std"), (int, float)):
                return float(v["std"])
            if k == "mean" and isinstance(rec.get("std"), (int, float)):
                return float(rec["std"])
            return None
    return None


def _accuracy_ci(rec: dict):
    """[lo, hi] of the accuracy's 95 % interval: the one a record stores (campaign rows, eval
    summaries with ci_lo/ci_hi), else from its per-trial accuracies (jaxfault.core.stats.mean_ci), else
    None (a file in the minimal schema carries no interval)."""
    if isinstance(rec.get("accuracy_ci_lo"), (int, float)) and isinstance(rec.get("accuracy_ci_hi"), (int, float)):
        return [float(rec["accuracy_ci_lo"]), float(rec["accuracy_ci_hi"])]
    for k in ("accuracy_summary",) + ACC_KEYS:
        v = rec.get(k)
        if isinstance(v, dict) and isinstance(v.get("ci_lo"), (int, float)):
            return [float(v["ci_lo"]), float(v["ci_hi"])]
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            bounded = all(0.0 <= x <= 1.0 for x in v)
            return [float(b) for b in mean_ci(v, method="betting" if bounded else "student-t")]
    return None


def _perplexity(rec: dict):
    """(median, [lo, hi]) of a language model's record (module docstring), else None."""
    v = rec.get("perplexity")
    if isinstance(v, dict) and isinstance(v.get("median"), (int, float)):
        ci = v.get("median_ci95")
        return float(v["median"]), ([float(c) for c in ci] if isinstance(ci, list) and len(ci) == 2 else None)
    if isinstance(rec.get("perplexity_median"), (int, float)):
        lo, hi = rec.get("perplexity_median_lo"), rec.get("perplexity_median_hi")
        ok = all(isinstance(c, (int, float)) for c in (lo, hi))
        return float(rec["perplexity_median"]), ([float(lo), float(hi)] if ok else None)
    return None


def _lm_record(obj: dict, inherited: dict, source: str) -> dict:
    """The record of a language model's operating point: its median perplexity (metric
    'perplexity') and the model it was measured on (its checkpoint folder, else its 'model')."""
    med, ci = _perplexity(obj)
    rec = {**inherited, **{k: v for k, v in obj.items() if not isinstance(v, (dict, list))}}
    rec.update(metric="perplexity", perplexity_median=med, perplexity_ci=ci)
    if rec.get("checkpoint"):
        rec["model"] = str(rec["checkpoint"])
    rec.setdefault("source", source)
    return rec


def _swim_report(obj: dict, inherited: dict, source: str) -> list[dict]:
    """Rows of an eval.swim report: "none" / "all" verified (fractions 0 and 1) and every
    selected (method, mask_p); the selection method is the row's "selection", the method "swim"."""
    base = {**inherited, "method": "swim", "source": source}
    out = []
    for key, frac in (("none", 0.0), ("all", 1.0)):
        if isinstance(obj.get(key), dict) and _accuracy(obj[key]) is not None:
            out.append({**base, "selection": key, "fraction": frac, "accuracy_mean": _accuracy(obj[key]),
                        "accuracy_std": _accuracy_std(obj[key]), "accuracy_ci": _accuracy_ci(obj[key])})
    for sel in obj.get("selected") or []:
        if isinstance(sel, dict) and _accuracy(sel) is not None and any(k in sel for k in ("mask_p", "fraction")):
            rec = {**base, **{k: v for k, v in sel.items() if not isinstance(v, (dict, list))}}
            rec.update(method="swim", selection=sel.get("method", sel.get("selection")),
                       accuracy_mean=_accuracy(sel), accuracy_std=_accuracy_std(sel), accuracy_ci=_accuracy_ci(sel))
            out.append(rec)
    return out


def _neuralfuse_report(obj: dict, inherited: dict, source: str) -> list[dict]:
    """Rows of an eval.neuralfuse report: for every BER the perturbed models without the generator
    ("generator": None) and with it (its energy is added)."""
    base = {**inherited, "method": "neuralfuse", "source": source}
    if obj.get("base_model"):
        base["model"] = obj["base_model"]
    out = []
    for r in obj.get("results") or []:
        if not isinstance(r, dict) or "ber" not in r:
            continue
        for key, gen in (("perturbed_without", None), ("perturbed_with", obj.get("generator"))):
            if isinstance(r.get(key), dict) and _accuracy(r[key]) is not None:
                out.append({**base, "ber": r["ber"], "generator": gen, "accuracy_mean": _accuracy(r[key]),
                            "accuracy_std": _accuracy_std(r[key]), "accuracy_ci": _accuracy_ci(r[key])})
    return out


def find_records(obj: Any, inherited: dict | None = None, source: str = "") -> list[dict]:
    """Every dict holding an accuracy and an operating point, with method/model/... inherited
    from enclosing objects."""
    inherited = dict(inherited or {})
    out = []
    if isinstance(obj, dict):
        for k in ("method", "model", "dataset", "input_shape", "ecc", "scheme", "block_size", "generator",
                  "selection", "label", "checkpoint", "task"):
            if k in obj and not isinstance(obj[k], (dict, list)) or (k == "input_shape" and k in obj):
                inherited[k] = obj[k]
        if "selected" in obj:  # an eval.swim report
            return out + _swim_report(obj, inherited, source)
        if isinstance(obj.get("results"), list) and any(isinstance(r, dict) and "perturbed_with" in r
                                                        for r in obj["results"]):  # an eval.neuralfuse report
            return out + _neuralfuse_report(obj, inherited, source)
        lm = _perplexity(obj) is not None and any(k in obj for k in POINT_KEYS)
        acc = None if lm or inherited.get("task") == "language_model" else _accuracy(obj)
        if lm:
            out.append(_lm_record(obj, inherited, source))
        elif acc is not None and any(k in obj for k in POINT_KEYS):
            rec = {**inherited, **{k: v for k, v in obj.items() if not isinstance(v, (dict, list)) or k == "input_shape"}}
            rec["accuracy_mean"] = acc
            rec["accuracy_std"] = _accuracy_std(obj)
            rec["accuracy_ci"] = _accuracy_ci(obj)
            rec.setdefault("source", source)
            out.append(rec)
        for v in obj.values():
            if isinstance(v, (dict, list)):
                out.extend(find_records(v, inherited, source))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(find_records(v, inherited, source))
    return out


def _file_method(obj: Any, path: str) -> str:
    """The method of a file without a top-level "method": known report shapes by their keys
    (eval.swim: "selected"; eval.neuralfuse: "results" with "perturbed_with"; eval.sparrow: a
    "scheme" or rows with one), else the file's name."""
    if isinstance(obj, dict):
        if "selected" in obj:
            return "swim"
        if any(isinstance(r, dict) and "perturbed_with" in r for r in obj.get("results") or []):
            return "neuralfuse"
        rows = obj.get("rows") or obj.get("sweep") or []
        if "scheme" in obj or "ecc" in obj or any(isinstance(r, dict) and "scheme" in r for r in rows):
            return "dram"
    return Path(path).stem


def _read(path: str):
    """A JSON file, or a JSON-lines file (a campaign's results: a header line, then one row per
    line; a torn last line is ignored) as a list of its objects; read with the limits of
    jaxfault.core.config.parse_json (one-line errors for binary files, huge integers, deep nesting)."""
    from jaxfault.core.config import JSONSyntaxError, parse_json

    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise JaxfaultError(f"cannot read {path}: it is not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise JaxfaultError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return parse_json(text, str(path))
    except JSONSyntaxError as e:
        whole = e
    lines = [ln for ln in text.splitlines() if ln.strip()]
    objs = []
    for i, ln in enumerate(lines):
        try:
            objs.append(parse_json(ln, f"{path} line {i + 1}"))
        except JSONSyntaxError:
            if i == len(lines) - 1 and objs:  # a run killed during an append
                break
            raise JaxfaultError(f"cannot read {whole}") from None
    if len(objs) < 2:
        raise JaxfaultError(f"cannot read {whole}") from None
    return objs


def _campaign_rows(objs: list, source: str, skipped: list | None) -> list[dict] | None:
    """Rows of a campaign results file (header {"jaxfault_results": ..., "identity": ...}, then rows
    {"config": {"method", <fields>, <rate>}, "accuracy_mean", ...}), or None for another file.
    Rows of methods without an energy model (bitflip) go to `skipped` (an error without it)."""
    if not (objs and isinstance(objs[0], dict) and "jaxfault_results" in objs[0]):
        return None
    ident = objs[0].get("identity") or {}
    inherited = {k: ident[k] for k in ("dataset", "model", "checkpoint", "task") if isinstance(ident.get(k), str)}
    out = []
    for row in objs[1:]:
        if not (isinstance(row, dict) and isinstance(row.get("config"), dict)):
            continue
        if _perplexity(row) is not None:
            rec = {**_lm_record({**row["config"], **{k: v for k, v in row.items() if k != "config"}}, inherited,
                                source)}
        elif _accuracy(row) is not None and inherited.get("task") != "language_model":
            rec = {**inherited, **row["config"], "accuracy_mean": _accuracy(row), "accuracy_std": _accuracy_std(row),
                   "accuracy_ci": _accuracy_ci(row), "source": source}
        else:
            continue
        try:
            family(rec)
        except JaxfaultError:
            if skipped is None:
                raise
            skipped.append(rec)
            continue
        out.append(rec)
    return out


# what an operating point's value must be: (check, requirement)
POINT_RANGES = {"ber": (lambda v: 0 <= v <= 1, "in [0, 1]"), "voltage": (lambda v: v > 0, "> 0"),
                "refresh_interval_s": (lambda v: v > 0, "> 0"), "mask_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
                "fraction": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def check_record(rec: dict, path: str, row: int) -> None:
    """Refuse, in one line naming the file, the row (1-based, in file order) and the value, a
    record whose accuracy is not a number in [0, 1] (NaN included) or whose operating point is not
    a finite number in its range (a BER given as a string, a fraction of 2)."""
    label = f" ({rec['label']})" if rec.get("label") else ""
    where = f"{path}: row {row}{label}"
    if rec.get("metric") == "perplexity":
        ppl = rec.get("perplexity_median")
        if not (isinstance(ppl, (int, float)) and not isinstance(ppl, bool) and ppl >= 1.0):
            raise JaxfaultError(f"{where}: perplexity must be a number >= 1 (inf for a diverged model), got {ppl!r}")
        if not rec.get("model"):
            raise JaxfaultError(f"{where}: a perplexity row needs the language model it was measured on "
                                "(a 'checkpoint' folder or a 'model')")
    else:
        acc = rec.get("accuracy_mean")
        if not (isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0.0 <= acc <= 1.0):
            raise JaxfaultError(f"{where}: accuracy must be a number in [0, 1], got {acc!r}")
    for k, (ok, requirement) in POINT_RANGES.items():
        if k not in rec:
            continue
        v = rec[k]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)):
            raise JaxfaultError(f"{where}: {k} must be a finite number {requirement}, got {v!r}")


def load_records(paths: Sequence[str], skipped: list | None = None) -> list[dict]:
    """Records of every file, each range-checked (check_record). Campaign rows of methods without
    an energy model are appended to `skipped` when a list is given (else they are an error)."""
    recs = []
    for p in paths:
        obj = _read(str(p))
        found = _campaign_rows(obj, str(p), skipped) if isinstance(obj, list) else None
        if found is None:
            has_method = isinstance(obj, dict) and "method" in obj
            found = find_records(obj, None if has_method else {"method": _file_method(obj, str(p))}, str(p))
        if not found:
            raise JaxfaultError(f"{p}: no records with an accuracy ({'/'.join(ACC_KEYS[:4])}) and an operating point ({'/'.join(POINT_KEYS)})")
        for row, rec in enumerate(found, 1):
            check_record(rec, str(p), row)
        recs.extend(found)
    kinds = {r.get("metric") == "perplexity" for r in recs}
    if len(kinds) > 1:
        first = next(str(r.get("source")) for r in recs if r.get("metric") == "perplexity")
        raise JaxfaultError(f"{first} holds a language model's perplexities, the other files accuracies; a "
                            "trade-off compares one metric: run eval.tradeoff on each")
    return recs


def family(rec: dict) -> str:
    m = str(rec.get("method", "")).lower()
    if m in DRAM_METHODS or m in P.ecc_names() or "refresh_interval_s" in rec or "stored_bits_per_weight" in rec \
            or str(rec.get("scheme", rec.get("ecc", ""))).lower() in P.ecc_names():
        return "dram"
    if m.startswith("neuralfuse") or "voltage" in rec:
        return "sram"
    if m.startswith("swim") or "mask_p" in rec or "fraction" in rec:
        return "verify"
    raise JaxfaultError(f"record of method {rec.get('method')!r} has no known operating point ({rec})")


def point_energy(rec: dict, net_layers, energy, qw, pw, *, dram_kw: dict, retention_table, voltage_table,
                 v_nominal: float, write_verify: P.WriteVerify, generator_energy=None,
                 ecc_read_scaling: float = P.ECC_READ_SCALING) -> dict:
    """Energy of one operating point and its reference (unprotected / nominal / full verify)."""
    fam = family(rec)
    base = float(energy.total)
    if fam == "dram":
        m = str(rec.get("method", "")).lower()
        scheme = rec.get("ecc") or rec.get("scheme") or (m if m in P.ecc_names() else ("none" if m == "unprotected" else "sparrow"))
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
    f = float(rec.get("mask_p", rec.get("fraction")))
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
