"""Eyeriss-like energy of a network (docs/energy.md): per-layer table, totals, JSON, plots, design-point
sweeps in one vmapped call with a Pareto table, and the energy of protection (DRAM refresh with
ECC, SRAM voltage scaling, write-verify cycles).

  python -m eval.energy --network alexnet --qw reference --qa reference --pw reference
  python -m eval.energy --network lenet --json runs/energy/lenet.json --plot runs/energy/lenet
  python -m eval.energy --network alexnet --sweep-bits 2..16
  python -m eval.energy --network resnet18 --ecc sparrow --refresh-interval 0.064,0.256,1
  python -m eval.energy --network gpt2 --input 1024
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfault.cli import (ArgumentParser, input_shape_flag, nonneg_float, positive_float, positive_int, probability,
                          run_main)
from jaxfault.config import parse_float_list
from jaxfault.energy import analysis as A
from jaxfault.energy import protection as P
from jaxfault.energy.core import Hardware
from jaxfault.energy.inputs import load_grid, load_table, parse_per_layer, parse_shape  # noqa: F401
from jaxfault.energy.networks import get_network, network_names
from jaxfault.errors import JaxfaultError
from jaxfault.io import atomic_write_json, atomic_write_text, check_output_path


HARDWARE_HELP = {"mac": "energy of one 16-bit MAC", "rf": "register-file access energy", "noc": "NoC transfer energy",
                 "glb": "global-buffer access energy", "dram": "DRAM access energy",
                 "pe_rows": "PE array rows", "pe_cols": "PE array columns"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.energy", description=__doc__.split("\n\n")[0])
    p.add_argument("--network", "--model", dest="network", default="alexnet", help=f"one of {', '.join(network_names())}, a Hugging Face folder or config.json (gpt2/llama/mistral/qwen2), or package.module:attribute (a Flax module or factory)")
    p.add_argument("--input", type=input_shape_flag, default=None, help="H,W,C of one input image (default: the network's dataset shape; alexnet 227,227,3), or for a language model its context length L in tokens (default: 1024, at most its positions)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="classifier outputs (default: 1000 for alexnet, else 10)")
    p.add_argument("--qw", default="16", help="weight bits: one value, a per-layer comma list, or 'reference' (alexnet)")
    p.add_argument("--qa", default="16", help="activation bits (same forms as --qw)")
    p.add_argument("--pw", default="0", help="weight pruning ratio in [0, 1) (same forms as --qw)")
    g = p.add_argument_group("hardware: unit energies per 16-bit access and the PE array (Eyeriss defaults, docs/energy.md)")
    for f, d in zip(Hardware._fields, Hardware()):
        g.add_argument(f"--{f.replace('_', '-')}", type=(positive_int if f.startswith("pe_") else nonneg_float), default=d,
                       help=HARDWARE_HELP[f])
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--plot", default=None, help="write PNG plots into this directory")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json, --pareto-csv and plot files")
    s = p.add_argument_group("design-point sweeps (one vmapped call)")
    s.add_argument("--sweep-bits", default=None, help="A..B or a comma list: all (qw, qa) pairs, uniform over layers")
    s.add_argument("--grid", default=None, help="JSON file {axis: [values]} over qw, qa, pw (scalar or per-layer lists) and hardware fields")
    s.add_argument("--pareto-csv", default=None, help="also write the Pareto table as CSV")
    e = p.add_argument_group("energy of protection (constants: docs/energy.md)")
    e.add_argument("--ecc", default=None, help="DRAM ECC: none, secded, sparrow, sparrow-b16 or stored bits per 16-bit weight")
    e.add_argument("--refresh-interval", default=None, help="refresh intervals in s, comma list (default 0.064)")
    e.add_argument("--refresh-pj-per-bit", type=nonneg_float, default=P.REFRESH_PJ_PER_BIT, help="DRAM refresh energy per stored bit and refresh, pJ")
    e.add_argument("--ecc-read-scaling", type=probability, default=P.ECC_READ_SCALING, help="share of DRAM weight-read energy that grows with the ECC's stored bits (1: check bits move with the data)")
    e.add_argument("--inference-period", type=positive_float, default=P.INFERENCE_PERIOD_S, help="seconds of DRAM residency charged to one inference")
    e.add_argument("--pj-per-unit", type=positive_float, default=P.PJ_PER_UNIT, help="pJ per normalised energy unit (one 16-bit MAC)")
    e.add_argument("--retention-table", default=None, help="JSON [[interval_s, ber], ...]")
    e.add_argument("--voltage", default=None, help="SRAM supply voltages (relative to --v-nominal), comma list")
    e.add_argument("--ber", default=None, help="SRAM BERs to map to voltages through the voltage table, comma list")
    e.add_argument("--v-nominal", type=positive_float, default=P.NOMINAL_VOLTAGE, help="nominal SRAM supply voltage")
    e.add_argument("--voltage-table", default=None, help="JSON [[voltage, ber], ...]")
    e.add_argument("--verify-fraction", default=None, help="fractions of weights write-verified (SWIM), comma list")
    e.add_argument("--verify-iterations", type=positive_float, default=P.VERIFY_ITERATIONS, help="mean program-and-verify pulses per verified device")
    e.add_argument("--weight-bits", type=positive_int, default=P.WEIGHT_BITS, help="bits per weight in the CiM array (N)")
    e.add_argument("--bits-per-device", type=positive_int, default=P.BITS_PER_DEVICE, help="bits per CiM device (m)")
    return p


def protection_report(args, net, energy, num_weights: int, qw, pw) -> dict:
    """Protection-energy section (only the parts whose options were given)."""
    out: dict = {}
    base_total = float(energy.total)
    if args.ecc is not None or args.refresh_interval is not None:
        ecc = args.ecc or "none"
        bits = P.ecc_stored_bits(ecc)
        table = load_table(args.retention_table, "--retention-table", P.RETENTION_BER_TABLE)
        intervals = (parse_float_list(args.refresh_interval, "--refresh-interval", check=lambda v: v > 0,
                                      requirement="> 0")
                     if args.refresh_interval is not None else [P.NOMINAL_REFRESH_S])
        iv = np.asarray(intervals)
        kw = dict(pj_per_bit=args.refresh_pj_per_bit, period_s=args.inference_period, pj_per_unit=args.pj_per_unit)
        nw = np.asarray([l.num_weights for l in net.layers], np.float64)
        store = float(P.weight_storage_bits(nw, qw, pw, bits))
        store0 = float(P.weight_storage_bits(nw, qw, pw, 16))
        refresh = np.asarray(P.dram_refresh_energy(store, iv, **kw), np.float64)
        ref0 = float(P.dram_refresh_energy(store0, P.NOMINAL_REFRESH_S, **kw))
        dram_w = float(np.sum(P.dram_weight_energy_with_ecc(energy, bits, args.ecc_read_scaling)))
        dram_w0 = float(np.sum(energy.data[..., 0, 0]))
        ber = np.asarray(P.retention_ber(iv, table), np.float64)
        pts = []
        for t, r, b in zip(intervals, refresh, ber):
            tot = base_total - dram_w0 + dram_w + r
            pts.append({"refresh_interval_s": t, "retention_ber": b, "refresh_energy": r, "total_energy": tot,
                        "relative_to_unprotected_64ms": tot / (base_total + ref0)})
        out["dram_refresh"] = {"ecc": ecc, "stored_bits_per_weight": bits, "num_weights": num_weights, "storage_bits": store,
                               "dram_weight_read_energy": dram_w, "points": pts}
    if args.voltage is not None or args.ber is not None:
        table = load_table(args.voltage_table, "--voltage-table", P.VOLTAGE_BER_TABLE)
        volts = np.asarray(parse_float_list(args.voltage, "--voltage", check=lambda v: v > 0, requirement="> 0")
                           if args.voltage is not None else [], np.float64)
        if args.ber is not None:  # SRAM BERs -> the lowest voltage with that BER (voltage table)
            bers = np.asarray(parse_float_list(args.ber, "--ber", check=lambda v: 0 < v <= 1, requirement="in (0, 1]"))
            volts = np.concatenate([volts, np.asarray(P.voltage_for_ber(bers, table), np.float64) * args.v_nominal])
        if np.any(volts <= 0):
            raise JaxfaultError(f"--voltage values must be > 0, got {volts.tolist()}")
        vrel = volts / args.v_nominal
        tot = np.asarray(P.total_energy_at_voltage(energy, volts, args.v_nominal), np.float64)
        sram = np.asarray(P.sram_energy(energy, volts, args.v_nominal), np.float64).sum(-1)
        sber = np.asarray(P.voltage_ber(vrel, table), np.float64)
        out["sram_voltage"] = {"v_nominal": args.v_nominal, "levels": list(P.SRAM_LEVELS), "points": [
            {"voltage": float(v), "sram_ber": float(b), "sram_energy": float(s), "total_energy": float(t),
             "sram_saving": 1 - float(v / args.v_nominal) ** 2, "relative_total": float(t) / base_total}
            for v, b, s, t in zip(volts, sber, sram, tot)]}
    if args.verify_fraction is not None:
        fr = parse_float_list(args.verify_fraction, "--verify-fraction", check=lambda v: 0 <= v <= 1,
                              requirement="in [0, 1]")
        model = P.WriteVerify(args.weight_bits, args.bits_per_device, args.verify_iterations)
        cyc = np.asarray(P.write_verify_cycles(num_weights, np.asarray(fr), model), np.float64)
        rel = np.asarray(P.relative_write_verify_cost(np.asarray(fr), model), np.float64)
        out["write_verify"] = {"num_weights": num_weights, "model": vars(model) if hasattr(model, "__dict__") else str(model),
                               "points": [{"fraction": f, "cycles": float(c), "relative_to_full_verify": float(r)} for f, c, r in zip(fr, cyc, rel)]}
    return out


def format_protection(prot: dict) -> str:
    lines = []
    if "dram_refresh" in prot:
        d = prot["dram_refresh"]
        lines.append(f"DRAM refresh ({d['ecc']}, {d['stored_bits_per_weight']} bits/weight, {d['num_weights']} weights):")
        lines.append(f"  {'interval_s':>10} {'ret_BER':>10} {'refresh':>11} {'total':>11} {'rel':>7}")
        for q in d["points"]:
            lines.append(f"  {q['refresh_interval_s']:>10.4g} {q['retention_ber']:>10.3g} {q['refresh_energy']:>11.4g} {q['total_energy']:>11.4g} {q['relative_to_unprotected_64ms']:>7.4f}")
    if "sram_voltage" in prot:
        d = prot["sram_voltage"]
        lines.append(f"SRAM ({'+'.join(d['levels'])}) at reduced voltage (nominal {d['v_nominal']}):")
        lines.append(f"  {'voltage':>8} {'SRAM_BER':>10} {'sram':>11} {'total':>11} {'saving':>7} {'rel':>7}")
        for q in d["points"]:
            lines.append(f"  {q['voltage']:>8.4f} {q['sram_ber']:>10.3g} {q['sram_energy']:>11.4g} {q['total_energy']:>11.4g} {q['sram_saving']:>7.3f} {q['relative_total']:>7.4f}")
    if "write_verify" in prot:
        d = prot["write_verify"]
        lines.append(f"Write-verify ({d['num_weights']} weights):")
        lines.append(f"  {'fraction':>8} {'cycles':>12} {'rel_full':>9}")
        for q in d["points"]:
            lines.append(f"  {q['fraction']:>8.4g} {q['cycles']:>12.4g} {q['relative_to_full_verify']:>9.4f}")
    return "\n".join(lines)


def run_sweep(args, net, base: dict) -> dict:
    n = len(net.layers)
    if args.grid is not None:
        grid = load_grid(args.grid, ("qw", "qa", "pw", *A.HW_FIELDS))
    else:
        bits = A.parse_range(args.sweep_bits)
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
    front = sorted((r for r in sweep["points"] if r["pareto"]), key=lambda r: r["total"])
    shown = front if len(front) <= max_rows else front[: max_rows // 2] + [None] + front[-(max_rows // 2):]
    keys = [k for k in sweep["axes"]]
    lines = [f"Pareto front: {len(front)} of {sweep['num_points']} design points ({sweep['pareto_objectives']})",
             "  " + "".join(f"{k:>10}" for k in keys) + f"{'total':>12}"]
    for r in shown:
        if r is None:
            lines.append(f"  ... {len(front) - max_rows} more (see --json / --pareto-csv)")
            continue
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:>10.4g}" if np.ndim(v) == 0 else f"{'[..]':>10}")
        lines.append("  " + "".join(cells) + f"{r['total']:>12.4g}")
    return "\n".join(lines)


LIST_FLAGS = (("--refresh-interval", "refresh_interval", lambda v: v > 0, "> 0"),
              ("--voltage", "voltage", lambda v: v > 0, "> 0"),
              ("--ber", "ber", lambda v: 0 < v <= 1, "in (0, 1]"),
              ("--verify-fraction", "verify_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"))


def check_outputs(args) -> None:
    """Every output path checked before any work: not under a file, writable, and no existing file
    replaced without --overwrite (for --plot: the plot files this run would write)."""
    for flag, path in (("--json", args.json), ("--pareto-csv", args.pareto_csv)):
        if path is not None:
            check_output_path(path, overwrite=args.overwrite, flag=flag)
    if args.plot is not None:
        plot_dir = check_output_path(args.plot, overwrite=True, kind="dir", flag="--plot")
        names = list(A.BREAKDOWN_PLOTS) + ([A.SWEEP_PLOT] if args.sweep_bits is not None or args.grid is not None else [])
        for name in names:
            check_output_path(plot_dir / name, overwrite=args.overwrite, flag="--plot")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    if args.retention_table is not None:
        load_table(args.retention_table, "--retention-table", None)
    if args.voltage_table is not None:
        load_table(args.voltage_table, "--voltage-table", None)
    if args.grid is not None:
        A.check_grid_size(load_grid(args.grid, ("qw", "qa", "pw", *A.HW_FIELDS)))
    if args.sweep_bits is not None:  # here too, so that no base report is printed first
        A.parse_range(args.sweep_bits)
    if args.ecc is not None:
        P.ecc_stored_bits(args.ecc)
    for flag, text, check, requirement in LIST_FLAGS:  # checked here too, so no table is printed first
        if getattr(args, text) is not None:
            parse_float_list(getattr(args, text), flag, check=check, requirement=requirement)
    net = get_network(args.network, args.input, args.num_classes)
    n = len(net.layers)
    qw = A.per_layer(parse_per_layer(args.qw, "qw", args.network), n, "qw")
    qa = A.per_layer(parse_per_layer(args.qa, "qa", args.network), n, "qa")
    pw = A.per_layer(parse_per_layer(args.pw, "pw", args.network), n, "pw")
    hw = Hardware(*(getattr(args, f) for f in Hardware._fields))
    energy = A.evaluate(net.layers, qw, qa, pw, hw)
    rows = A.layer_rows(net.layers, energy, qw, qa, pw)
    tot = A.totals(rows)
    num_weights = int(sum(l.num_weights for l in net.layers))
    print(f"{net.name} on input {','.join(map(str, net.input_shape))}: {n} conv/FC layers, {num_weights} weights")
    print(A.format_table(rows, tot))
    report = {"network": net.name, "input_shape": list(net.input_shape), "hardware": hw._asdict(),
              "num_weights": num_weights, "layers": rows, "totals": tot}
    prot = protection_report(args, net, energy, num_weights, qw, pw)
    if prot:
        report["protection"] = prot
        print(format_protection(prot))
    if args.sweep_bits is not None or args.grid is not None:
        base = {"qw": qw, "qa": qa, "pw": pw, **hw._asdict()}
        sweep = run_sweep(args, net, base)
        report["sweep"] = sweep
        print(format_pareto(sweep))
        if args.pareto_csv:
            keys = sweep["axes"] + ["mean_qw", "mean_qa", "mean_pw", "total"]
            lines = [",".join(keys)]
            for r in sweep["points"]:
                if r["pareto"]:
                    lines.append(",".join(str(r[k]) if np.ndim(r[k]) == 0 else '"' + " ".join(map(str, r[k])) + '"' for k in keys))
            atomic_write_text(args.pareto_csv, "\n".join(lines) + "\n")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.plot:
        paths = A.plot_breakdown(rows, args.plot, f"{net.name}")
        if "sweep" in report:
            paths.append(A.plot_sweep(report["sweep"], Path(args.plot) / A.SWEEP_PLOT, net.name))
        print(f"wrote {len(paths)} plots to {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
