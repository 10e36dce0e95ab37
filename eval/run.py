"""Evaluate a model under any registered fault model: python -m eval.run --fault-model NAME ...

Every setting is a field of jaxfault.experiment.ExperimentConfig (the flags below are made from
them); the fault model's own fields are given as --set FIELD=VALUE (JSON values: numbers, lists,
strings). Writes OUT/results.json in the row schema jaxfault.rows/1 and prints a table."""
from __future__ import annotations

import dataclasses

from jaxfault.cli import ArgumentParser, run_main, seed_int
from jaxfault.core.errors import JaxfaultError
from jaxfault.experiment import ExperimentConfig, field_help, format_rows, parse_value, run

KINDS = {"int": int, "int | None": int, "str": str, "str | None": str}


def build_parser() -> ArgumentParser:
    p, helps = ArgumentParser(prog="python -m eval.run", description=__doc__), field_help()
    for f in dataclasses.fields(ExperimentConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "fault":
            p.add_argument("--set", dest="fault", action="append", default=[], metavar="FIELD=VALUE",
                           help="a field of the fault model (repeatable)")
        elif f.name == "rates":
            p.add_argument(flag, default="1e-3", help=helps["rates"] + " (comma-separated)")
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = seed_int if f.name == "seed" else KINDS[str(f.type)]
            p.add_argument(flag, type=kind, default=default, help=helps[f.name])
    p.add_argument("--out", default="runs/run", help="output folder (results.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results.json")
    return p


def config_from_args(args) -> ExperimentConfig:
    from jaxfault.core.config import parse_float_list

    fault = {}
    for item in args.fault:
        if "=" not in item:
            raise JaxfaultError(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        fault[k.strip()] = parse_value(v)
    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    settings = {n: getattr(args, n) for n in names if n not in ("fault", "rates")}
    rates = parse_float_list(args.rates, "--rates", check=lambda v: v >= 0, requirement=">= 0")
    return ExperimentConfig.from_dict({**settings, "fault": fault, "rates": tuple(rates)})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    report = run(config_from_args(args), args.out, overwrite=args.overwrite)
    print(format_rows(report))
    print(f"wrote {args.out}/results.json")
    return 0


if __name__ == "__main__":
    run_main(main)
