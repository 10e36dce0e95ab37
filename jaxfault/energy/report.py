"""One energy report, as ``python -m eval.energy`` makes it: a network's per-layer energy and
totals (docs/energy.md), design-point sweeps with their Pareto front, and the energy of
protection (DRAM refresh with ECC, SRAM voltage scaling, write-verify cycles).

    run = EnergyRun(network="lenet", ecc="sparrow", refresh_interval="0.064,0.256,1")
    run.check(overwrite=False)          # every setting and output path, before any work
    report = run.evaluate()
    print(report_text(report)); run.write(report)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from jaxfault.core.config import parse_float_list, setting
from jaxfault.energy import analysis as A
from jaxfault.energy import protection as P
from jaxfault.energy.core import Hardware
from jaxfault.energy.inputs import load_grid, load_table, parse_per_layer
from jaxfault.energy.networks import get_network, network_names
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import atomic_write_json, atomic_write_text, check_output_folder

_HW = Hardware()

# comma-list settings: (name, check, requirement)
LIST_SETTINGS = (("refresh_interval", lambda v: v > 0, "> 0"), ("voltage", lambda v: v > 0, "> 0"),
                 ("ber", lambda v: 0 < v <= 1, "in (0, 1]"), ("verify_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"))


ENERGY_FILE, PARETO_FILE = "energy.json", "pareto.csv"            # what eval.energy writes into its folder
TRADEOFF_FILE, TRADEOFF_PLOT = "tradeoff.json", "tradeoff.png"    # and eval.tradeoff

@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """The settings an energy report and a trade-off share: the network and its input, its bits
    and pruning, and the constants of the energy of protection (docs/energy.md)."""

    network: str = setting("alexnet", f"one of {', '.join(network_names())}, a Hugging Face folder or config.json "
                                      f"(gpt2/llama/mistral/qwen2), or package.module:attribute (a Flax module or "
                                      f"factory)", flag=("network", "model"))
    input: Optional[tuple] = setting(None, "H,W,C of one input image (default: the network's dataset shape; alexnet "
                                           "227,227,3), or for a language model its context length L in tokens "
                                           "(default: 1024, at most its positions)", kind="shape")
    num_classes: Optional[int] = setting(None, "classifier outputs (default: 1000 for alexnet, else 10)",
                                         kind="positive_int")
    qw: str = setting("16", "weight bits: one value, a per-layer comma list, or 'reference' (alexnet)")
    qa: str = setting("16", "activation bits (same forms as `qw`)")
    pw: str = setting("0", "weight pruning ratio in [0, 1) (same forms as `qw`)")
    refresh_pj_per_bit: float = setting(P.REFRESH_PJ_PER_BIT, "DRAM refresh energy per stored bit and refresh, pJ",
                                        kind="nonneg_float")
    ecc_read_scaling: float = setting(P.ECC_READ_SCALING, "share of DRAM weight-read energy that grows with the "
                                                          "ECC's stored bits (1: check bits move with the data)",
                                      kind="probability")
    inference_period: float = setting(P.INFERENCE_PERIOD_S, "seconds of DRAM residency charged to one inference",
                                      kind="positive_float")
    pj_per_unit: float = setting(P.PJ_PER_UNIT, "pJ per normalised energy unit (one 16-bit MAC)", kind="positive_float")
    retention_table: Optional[str] = setting(None, "JSON [[interval_s, ber], ...]")
    v_nominal: float = setting(P.NOMINAL_VOLTAGE, "nominal SRAM supply voltage", kind="positive_float")
    voltage_table: Optional[str] = setting(None, "JSON [[voltage, ber], ...]")
    verify_iterations: float = setting(P.VERIFY_ITERATIONS, "mean program-and-verify pulses per verified device",
                                       kind="positive_float")
    weight_bits: int = setting(P.WEIGHT_BITS, "bits per weight in the CiM array (N)", kind="positive_int")
    bits_per_device: int = setting(P.BITS_PER_DEVICE, "bits per CiM device (m)", kind="positive_int")


@dataclasses.dataclass(frozen=True)
class EnergyRun(EnergyModel):
    """The settings of one energy report (the command line's flags are made from them)."""

    mac: float = setting(_HW.mac, "hardware: energy of one 16-bit MAC", kind="nonneg_float")
    rf: float = setting(_HW.rf, "hardware: register-file access energy", kind="nonneg_float")
    noc: float = setting(_HW.noc, "hardware: NoC transfer energy", kind="nonneg_float")
    glb: float = setting(_HW.glb, "hardware: global-buffer access energy", kind="nonneg_float")
    dram: float = setting(_HW.dram, "hardware: DRAM access energy", kind="nonneg_float")
    pe_rows: int = setting(_HW.pe_rows, "hardware: PE array rows", kind="positive_int")
    pe_cols: int = setting(_HW.pe_cols, "hardware: PE array columns", kind="positive_int")
    out: Optional[str] = setting(None, "output folder: energy.json, and pareto.csv with a sweep (default: print only)")
    plots: bool = setting(False, "also draw the PNG plots into `out`", kind="switch")
    sweep_bits: Optional[str] = setting(None, "design-point sweep: A..B or a comma list: all (qw, qa) pairs, uniform "
                                              "over layers (one vmapped call)")
    grid: Optional[str] = setting(None, "design-point sweep: JSON file {axis: [values]} over qw, qa, pw (scalar or "
                                        "per-layer lists) and hardware fields")
    ecc: Optional[str] = setting(None, "DRAM ECC: none, secded, sparrow, sparrow-b16 or stored bits per 16-bit weight")
    refresh_interval: Optional[str] = setting(None, "refresh intervals in s, comma list (default 0.064)")
    voltage: Optional[str] = setting(None, "SRAM supply voltages (relative to `v_nominal`), comma list")
    ber: Optional[str] = setting(None, "SRAM BERs to map to voltages through the voltage table, comma list")
    verify_fraction: Optional[str] = setting(None, "fractions of weights write-verified (SWIM), comma list")

    @property
    def sweeps(self) -> bool:
        return self.sweep_bits is not None or self.grid is not None

    def output_names(self) -> list[str]:
        """The files this run writes into `out`: energy.json, pareto.csv with a sweep, the plots
        with `plots`."""
        names = [ENERGY_FILE] + ([PARETO_FILE] if self.sweeps else [])
        if self.plots:
            names += list(A.BREAKDOWN_PLOTS) + ([A.SWEEP_PLOT] if self.sweeps else [])
        return names

    def check(self, overwrite: bool = False) -> None:
        """Every output path and every setting checked before any work, so that no table is printed
        before an error: the folder not under a file, writable, and no file this run writes
        replaced unless `overwrite`."""
        if self.plots and self.out is None:
            raise JaxfaultError("`plots` draws into the output folder: give `out`")
        if self.out is not None:
            check_output_folder(self.out, self.output_names(), overwrite=overwrite, flag="`out`")
        for name in ("retention_table", "voltage_table"):
            if getattr(self, name) is not None:
                load_table(getattr(self, name), f"`{name}`", None)
        if self.grid is not None:
            A.check_grid_size(load_grid(self.grid, ("qw", "qa", "pw", *A.HW_FIELDS)))
        if self.sweep_bits is not None:
            A.parse_range(self.sweep_bits)
        if self.ecc is not None:
            P.ecc_stored_bits(self.ecc)
        for name, check, requirement in LIST_SETTINGS:
            if getattr(self, name) is not None:
                parse_float_list(getattr(self, name), f"`{name}`", check=check, requirement=requirement)

    def evaluate(self) -> dict:
        """The report: network, input shape, hardware, per-layer rows and totals, and the
        protection and sweep sections whose settings were given."""
        net = get_network(self.network, self.input, self.num_classes)
        n = len(net.layers)
        qw = A.per_layer(parse_per_layer(self.qw, "qw", self.network), n, "qw")
        qa = A.per_layer(parse_per_layer(self.qa, "qa", self.network), n, "qa")
        pw = A.per_layer(parse_per_layer(self.pw, "pw", self.network), n, "pw")
        hw = Hardware(*(getattr(self, f) for f in Hardware._fields))
        energy = A.evaluate(net.layers, qw, qa, pw, hw)
        rows = A.layer_rows(net.layers, energy, qw, qa, pw)
        tot = A.totals(rows)
        num_weights = int(sum(l.num_weights for l in net.layers))
        report = {"network": net.name, "input_shape": list(net.input_shape), "hardware": hw._asdict(),
                  "num_weights": num_weights, "layers": rows, "totals": tot}
        prot = protection_report(self, net, energy, num_weights, qw, pw)
        if prot:
            report["protection"] = prot
        if self.sweep_bits is not None or self.grid is not None:
            base = {"qw": qw, "qa": qa, "pw": pw, **hw._asdict()}
            sweep = run_sweep(self, net, base)
            report["sweep"] = sweep
        return report

    def write(self, report: dict) -> list[str]:
        """Write energy.json, the Pareto CSV of a sweep and, with `plots`, the plots into `out`
        (nothing without it); the paths written."""
        written = []
        if self.out is None:
            return written
        out = Path(self.out)
        if "sweep" in report:
            sweep = report["sweep"]
            keys = sweep["axes"] + ["mean_qw", "mean_qa", "mean_pw", "total"]
            lines = [",".join(keys)]
            for r in sweep["points"]:
                if r["pareto"]:
                    lines.append(",".join(str(r[k]) if np.ndim(r[k]) == 0 else '"' + " ".join(map(str, r[k])) + '"'
                                          for k in keys))
            written.append(str(atomic_write_text(out / PARETO_FILE, "\n".join(lines) + "\n")))
        atomic_write_json(out / ENERGY_FILE, report)
        written.append(str(out / ENERGY_FILE))
        if self.plots:
            paths = A.plot_breakdown(report["layers"], out, report["network"])
            if "sweep" in report:
                paths.append(A.plot_sweep(report["sweep"], out / A.SWEEP_PLOT, report["network"]))
            written += [str(p) for p in paths]
        return written



@dataclasses.dataclass(frozen=True)
class TradeoffRun(EnergyModel):
    """The settings of one accuracy-vs-energy trade-off over result files (jaxfault.energy.tradeoff)."""

    network: Optional[str] = setting(None, "network for the energy model (default: each file's 'model', else lenet)")
    input: Optional[tuple] = setting(None, "H,W,C (default: the file's input_shape or the network's default)",
                                     kind="shape")
    num_classes: Optional[int] = setting(None, "classifier outputs (default: the network's)", kind="positive_int")
    qw: str = setting("16", "weight bits of the energy model: one value or a per-layer comma list")
    out: Optional[str] = setting(None, "output folder: tradeoff.json (every point with its energy and Pareto flag) "
                                       "and tradeoff.png (default: print only)")

    def check(self, overwrite: bool = False) -> None:
        """The output folder and files and the tables checked before any work."""
        if self.out is not None:
            check_output_folder(self.out, (TRADEOFF_FILE, TRADEOFF_PLOT), overwrite=overwrite, flag="`out`")
        for name in ("retention_table", "voltage_table"):
            if getattr(self, name) is not None:
                load_table(getattr(self, name), f"`{name}`", None)

    def evaluate(self, results, log=print) -> list[dict]:
        """The trade-off rows of every operating point in the result files `results` (row schema
        jaxfault.rows/1); rows of a fault model without an energy model are skipped, with one line
        to `log`."""
        from jaxfault.energy import tradeoff as T
        from jaxfault.energy.networks import DEFAULT_INPUTS, GENERIC_INPUT

        skipped: list = []
        records = T.load_records(results, skipped=skipped)
        if skipped:
            methods = sorted({str(r.get("method")) for r in skipped})
            if not records:
                raise JaxfaultError(f"no row of these files has an energy model: {len(skipped)} row(s) of "
                                    f"{', '.join(methods)} (the energy of protection prices hbm, sram and cim rows)")
            log(f"skipped {len(skipped)} row(s) of {', '.join(methods)}: no energy model for that fault model")

        def layers_for(model, shape):
            shp = self.input or (tuple(shape) if shape else None)
            return get_network(self.network or model or "lenet", shp, self.num_classes).layers

        def generator_layers_for(name, shape, model):
            # a NeuralFuse generator in front of the classifier: `network` names the classifier only,
            # and the generator sees the classifier's input
            net = self.network or (model if model not in (None, "None") else None) or "lenet"
            shp = self.input or (tuple(shape) if shape else None) or DEFAULT_INPUTS.get(net, GENERIC_INPUT)
            return get_network(name, shp).layers

        def one(name):
            v = parse_float_list(getattr(self, name), f"`{name}`", allow_duplicates=True)
            return v[0] if len(v) == 1 else v

        return T.tradeoff(
            records, layers_for, generator_layers_for=generator_layers_for, qw=one("qw"), qa=one("qa"), pw=one("pw"),
            hw=Hardware(), dram_kw=dict(pj_per_bit=self.refresh_pj_per_bit, period_s=self.inference_period,
                                        pj_per_unit=self.pj_per_unit),
            retention_table=load_table(self.retention_table, "`retention_table`", P.RETENTION_BER_TABLE),
            voltage_table=load_table(self.voltage_table, "`voltage_table`", P.VOLTAGE_BER_TABLE),
            v_nominal=self.v_nominal, ecc_read_scaling=self.ecc_read_scaling,
            write_verify=P.WriteVerify(self.weight_bits, self.bits_per_device, self.verify_iterations))

    def write(self, rows: list[dict]) -> list[str]:
        """Write tradeoff.json and tradeoff.png into `out` (nothing without it); the paths written."""
        from jaxfault.energy import tradeoff as T

        if self.out is None:
            return []
        out = Path(self.out)
        atomic_write_json(out / TRADEOFF_FILE, {"points": rows})
        T.plot_tradeoff(rows, out / TRADEOFF_PLOT)
        return [str(out / TRADEOFF_FILE), str(out / TRADEOFF_PLOT)]

def report_text(report: dict) -> str:
    """A report as the command line prints it: the per-layer table and totals, then the
    protection tables and the Pareto front when present."""
    head = (f"{report['network']} on input {','.join(map(str, report['input_shape']))}: {len(report['layers'])} "
            f"conv/FC layers, {report['num_weights']} weights")
    parts = [head, A.format_table(report["layers"], report["totals"])]
    if "protection" in report:
        parts.append(format_protection(report["protection"]))
    if "sweep" in report:
        parts.append(format_pareto(report["sweep"]))
    return "\n".join(parts) + "\n"


def protection_report(run: "EnergyRun", net, energy, num_weights: int, qw, pw) -> dict:
    """The protection-energy section of a report: only the parts whose settings were given."""
    out: dict = {}
    base_total = float(energy.total)
    if run.ecc is not None or run.refresh_interval is not None:
        ecc = run.ecc or "none"
        bits = P.ecc_stored_bits(ecc)
        table = load_table(run.retention_table, "`retention_table`", P.RETENTION_BER_TABLE)
        intervals = (parse_float_list(run.refresh_interval, "`refresh_interval`", check=lambda v: v > 0,
                                      requirement="> 0")
                     if run.refresh_interval is not None else [P.NOMINAL_REFRESH_S])
        iv = np.asarray(intervals)
        kw = dict(pj_per_bit=run.refresh_pj_per_bit, period_s=run.inference_period, pj_per_unit=run.pj_per_unit)
        nw = np.asarray([l.num_weights for l in net.layers], np.float64)
        store = float(P.weight_storage_bits(nw, qw, pw, bits))
        store0 = float(P.weight_storage_bits(nw, qw, pw, 16))
        refresh = np.asarray(P.dram_refresh_energy(store, iv, **kw), np.float64)
        ref0 = float(P.dram_refresh_energy(store0, P.NOMINAL_REFRESH_S, **kw))
        dram_w = float(np.sum(P.dram_weight_energy_with_ecc(energy, bits, run.ecc_read_scaling)))
        dram_w0 = float(np.sum(energy.data[..., 0, 0]))
        ber = np.asarray(P.retention_ber(iv, table), np.float64)
        pts = []
        for t, r, b in zip(intervals, refresh, ber):
            tot = base_total - dram_w0 + dram_w + r
            pts.append({"refresh_interval_s": t, "retention_ber": b, "refresh_energy": r, "total_energy": tot,
                        "relative_to_unprotected_64ms": tot / (base_total + ref0)})
        out["dram_refresh"] = {"ecc": ecc, "stored_bits_per_weight": bits, "num_weights": num_weights, "storage_bits": store,
                               "dram_weight_read_energy": dram_w, "points": pts}
    if run.voltage is not None or run.ber is not None:
        table = load_table(run.voltage_table, "`voltage_table`", P.VOLTAGE_BER_TABLE)
        volts = np.asarray(parse_float_list(run.voltage, "`voltage`", check=lambda v: v > 0, requirement="> 0")
                           if run.voltage is not None else [], np.float64)
        if run.ber is not None:  # SRAM BERs -> the lowest voltage with that BER (voltage table)
            bers = np.asarray(parse_float_list(run.ber, "`ber`", check=lambda v: 0 < v <= 1, requirement="in (0, 1]"))
            volts = np.concatenate([volts, np.asarray(P.voltage_for_ber(bers, table), np.float64) * run.v_nominal])
        if np.any(volts <= 0):
            raise JaxfaultError(f"`voltage` values must be > 0, got {volts.tolist()}")
        vrel = volts / run.v_nominal
        tot = np.asarray(P.total_energy_at_voltage(energy, volts, run.v_nominal), np.float64)
        sram = np.asarray(P.sram_energy(energy, volts, run.v_nominal), np.float64).sum(-1)
        sber = np.asarray(P.voltage_ber(vrel, table), np.float64)
        out["sram_voltage"] = {"v_nominal": run.v_nominal, "levels": list(P.SRAM_LEVELS), "points": [
            {"voltage": float(v), "sram_ber": float(b), "sram_energy": float(s), "total_energy": float(t),
             "sram_saving": 1 - float(v / run.v_nominal) ** 2, "relative_total": float(t) / base_total}
            for v, b, s, t in zip(volts, sber, sram, tot)]}
    if run.verify_fraction is not None:
        fr = parse_float_list(run.verify_fraction, "`verify_fraction`", check=lambda v: 0 <= v <= 1,
                              requirement="in [0, 1]")
        model = P.WriteVerify(run.weight_bits, run.bits_per_device, run.verify_iterations)
        cyc = np.asarray(P.write_verify_cycles(num_weights, np.asarray(fr), model), np.float64)
        rel = np.asarray(P.relative_write_verify_cost(np.asarray(fr), model), np.float64)
        out["write_verify"] = {"num_weights": num_weights, "model": vars(model) if hasattr(model, "__dict__") else str(model),
                               "points": [{"fraction": f, "cycles": float(c), "relative_to_full_verify": float(r)} for f, c, r in zip(fr, cyc, rel)]}
    return out


# the columns of each protection table: (point key, header, width, number format)
PROTECTION_COLUMNS = {
    "dram_refresh": (("refresh_interval_s", "interval_s", 10, ".4g"), ("retention_ber", "ret_BER", 10, ".3g"),
                     ("refresh_energy", "refresh", 11, ".4g"), ("total_energy", "total", 11, ".4g"),
                     ("relative_to_unprotected_64ms", "rel", 7, ".4f")),
    "sram_voltage": (("voltage", "voltage", 8, ".4f"), ("sram_ber", "SRAM_BER", 10, ".3g"),
                     ("sram_energy", "sram", 11, ".4g"), ("total_energy", "total", 11, ".4g"),
                     ("sram_saving", "saving", 7, ".3f"), ("relative_total", "rel", 7, ".4f")),
    "write_verify": (("fraction", "fraction", 8, ".4g"), ("cycles", "cycles", 12, ".4g"),
                     ("relative_to_full_verify", "rel_full", 9, ".4f")),
}


def format_protection(prot: dict) -> str:
    """The protection section as text tables: a title line, then one column per PROTECTION_COLUMNS
    entry and one row per point."""
    titles = {
        "dram_refresh": lambda d: f"DRAM refresh ({d['ecc']}, {d['stored_bits_per_weight']} bits/weight, "
                                  f"{d['num_weights']} weights):",
        "sram_voltage": lambda d: f"SRAM ({'+'.join(d['levels'])}) at reduced voltage (nominal {d['v_nominal']}):",
        "write_verify": lambda d: f"Write-verify ({d['num_weights']} weights):",
    }
    lines = []
    for part, columns in PROTECTION_COLUMNS.items():
        if part not in prot:
            continue
        d = prot[part]
        lines.append(titles[part](d))
        lines.append("  " + " ".join(f"{head:>{width}}" for _, head, width, _ in columns))
        lines += ["  " + " ".join(f"{q[key]:>{width}{fmt}}" for key, _, width, fmt in columns) for q in d["points"]]
    return "\n".join(lines)


def run_sweep(run: "EnergyRun", net, base: dict) -> dict:
    """Every design point of the run's grid (or bit sweep) in one vmapped call, with its Pareto flag."""
    n = len(net.layers)
    if run.grid is not None:
        grid = load_grid(run.grid, ("qw", "qa", "pw", *A.HW_FIELDS))
    else:
        bits = A.parse_range(run.sweep_bits)
        grid = {"qw": bits, "qa": bits}
    arrays, points = A.expand_grid(grid, n, base)
    e = A.sweep_totals(net.layers, arrays)
    tot = np.asarray(e.total, np.float64)
    obj = np.stack([tot, arrays["qw"].mean(1), arrays["qa"].mean(1), arrays["pw"].mean(1)], 1)
    mask = A.pareto_mask(obj, [True, False, False, True])
    rows = []
    for i, d in enumerate(points):
        rows.append({**{k: (v if np.ndim(v) == 0 else list(v)) for k, v in d.items()},
                     "mean_qw": float(obj[i, 1]), "mean_qa": float(obj[i, 2]), "mean_pw": float(obj[i, 3]),
                     "total": float(tot[i]), "pareto": bool(mask[i])})
    return {"axes": list(grid), "num_points": len(points),
            "pareto_objectives": "minimise total energy and mean pw, maximise mean qw and mean qa",
            "points": rows}


def format_pareto(sweep: dict, max_rows: int = 24) -> str:
    """The Pareto front of a sweep as a text table (at most max_rows rows shown)."""
    front = sorted((r for r in sweep["points"] if r["pareto"]), key=lambda r: r["total"])
    shown = front if len(front) <= max_rows else front[: max_rows // 2] + [None] + front[-(max_rows // 2):]
    keys = [k for k in sweep["axes"]]
    lines = [f"Pareto front: {len(front)} of {sweep['num_points']} design points ({sweep['pareto_objectives']})",
             "  " + "".join(f"{k:>10}" for k in keys) + f"{'total':>12}"]
    for r in shown:
        if r is None:
            lines.append(f"  ... {len(front) - max_rows} more (see the JSON or Pareto CSV)")
            continue
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:>10.4g}" if np.ndim(v) == 0 else f"{'[..]':>10}")
        lines.append("  " + "".join(cells) + f"{r['total']:>12.4g}")
    return "\n".join(lines)
