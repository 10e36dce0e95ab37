"""Accuracy vs energy of protection for every operating point of the protection methods' results
(eval.sparrow, eval.swim and eval.neuralfuse JSONs, eval.campaign results files, or any file in
the minimal schema of jaxfault/energy/tradeoff.py), with the Pareto front per method family.

  python -m eval.tradeoff runs/sparrow/sweep_T10_s0.json runs/nf_eval/neuralfuse_eval.json \
      runs/swim/swim.json --network lenet --json runs/tradeoff.json --plot runs/tradeoff.png
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import (ArgumentParser, input_shape_flag, nonneg_float, positive_float, positive_int, probability,
                          run_main)
from jaxfault.config import parse_float_list
from jaxfault.energy import protection as P
from jaxfault.energy import tradeoff as T
from jaxfault.energy.core import Hardware
from jaxfault.energy.networks import DEFAULT_INPUTS, GENERIC_INPUT, get_network
from jaxfault.energy.inputs import load_table
from jaxfault.io import atomic_write_json, check_output_path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.tradeoff", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="eval JSON files (see the schema in docs/energy.md)")
    p.add_argument("--network", default=None, help="network for the energy model (default: each file's 'model', else lenet)")
    p.add_argument("--input", type=input_shape_flag, default=None, help="H,W,C (default: the file's input_shape or the network's default)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="classifier outputs (default: the network's)")
    p.add_argument("--qw", default="16", help="weight bits of the energy model: one value or a per-layer comma list")
    p.add_argument("--qa", default="16", help="activation bits (same forms as --qw)")
    p.add_argument("--pw", default="0", help="weight pruning ratio in [0, 1) (same forms as --qw)")
    p.add_argument("--refresh-pj-per-bit", type=nonneg_float, default=P.REFRESH_PJ_PER_BIT, help="DRAM refresh energy per stored bit and refresh, pJ")
    p.add_argument("--ecc-read-scaling", type=probability, default=P.ECC_READ_SCALING, help="share of DRAM weight-read energy that grows with the ECC's stored bits")
    p.add_argument("--inference-period", type=positive_float, default=P.INFERENCE_PERIOD_S, help="seconds of DRAM residency charged to one inference")
    p.add_argument("--pj-per-unit", type=positive_float, default=P.PJ_PER_UNIT, help="pJ per normalised energy unit (one 16-bit MAC)")
    p.add_argument("--retention-table", default=None, help="JSON [[interval_s, ber], ...]")
    p.add_argument("--voltage-table", default=None, help="JSON [[voltage, ber], ...]")
    p.add_argument("--v-nominal", type=positive_float, default=P.NOMINAL_VOLTAGE, help="nominal SRAM supply voltage")
    p.add_argument("--verify-iterations", type=positive_float, default=P.VERIFY_ITERATIONS, help="mean program-and-verify pulses per verified device")
    p.add_argument("--weight-bits", type=positive_int, default=P.WEIGHT_BITS, help="bits per weight in the CiM array (N)")
    p.add_argument("--bits-per-device", type=positive_int, default=P.BITS_PER_DEVICE, help="bits per CiM device (m)")
    p.add_argument("--json", default=None, help="write all points with energies and Pareto flags here")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-energy PNG here")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json and --plot files")
    return p


def _one(text: str, name: str):
    v = parse_float_list(text, name, allow_duplicates=True)
    return v[0] if len(v) == 1 else v


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output_path(path, overwrite=args.overwrite, flag=flag)
    retention_table = load_table(args.retention_table, "--retention-table", P.RETENTION_BER_TABLE)
    voltage_table = load_table(args.voltage_table, "--voltage-table", P.VOLTAGE_BER_TABLE)
    skipped: list = []
    records = T.load_records(args.results, skipped=skipped)
    if skipped:
        methods = sorted({str(r.get("method")) for r in skipped})
        print(f"skipped {len(skipped)} campaign row(s) of {', '.join(methods)}: no energy model for that method")

    def layers_for(model, shape):
        name = args.network or model or "lenet"
        shp = args.input or (tuple(shape) if shape else None)
        return get_network(name, shp, args.num_classes).layers

    def generator_layers_for(name, shape, model):
        # a NeuralFuse generator in front of the classifier: --network names the classifier only,
        # and the generator sees the classifier's input
        net = args.network or (model if model not in (None, "None") else None) or "lenet"
        shp = args.input or (tuple(shape) if shape else None) or DEFAULT_INPUTS.get(net, GENERIC_INPUT)
        return get_network(name, shp).layers

    rows = T.tradeoff(
        records, layers_for, generator_layers_for=generator_layers_for,
        qw=_one(args.qw, "--qw"), qa=_one(args.qa, "--qa"), pw=_one(args.pw, "--pw"), hw=Hardware(),
        dram_kw=dict(pj_per_bit=args.refresh_pj_per_bit, period_s=args.inference_period, pj_per_unit=args.pj_per_unit),
        retention_table=retention_table, voltage_table=voltage_table,
        v_nominal=args.v_nominal, ecc_read_scaling=args.ecc_read_scaling,
        write_verify=P.WriteVerify(args.weight_bits, args.bits_per_device, args.verify_iterations),
    )
    print(T.format_rows(rows))
    print(T.format_legend(rows))
    if args.json:
        atomic_write_json(args.json, {"points": rows})
        print(f"wrote {args.json}")
    if args.plot:
        T.plot_tradeoff(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
