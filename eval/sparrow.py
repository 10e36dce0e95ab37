"""Error-injected inference with Sparrow ECC, a SEC-DED baseline, or no protection.

    python -m eval.sparrow --ber 1e-3 [--scheme sparrow] [--sweep 1e-5,1e-4,1e-3,1e-2] ...

The model's protected weights are truncated to bf16, encoded under the scheme, hit by stuck-at
faults in their stored bit cells, decoded and evaluated in bf16 (docs/sparrow.md).
"""
from __future__ import annotations

from typing import Sequence

from jaxfault.cli import (ArgumentParser, add_model_flags, add_setting_flags, as_flags, positive_float, probability,
                          run_main, settings_from_args)
from jaxfault.ecc import scheme_names
from jaxfault.experiment.ecc_eval import SparrowEvalConfig, prepare_output, report_text, run, write_report


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m eval.sparrow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ber", type=probability, help="bit error rate of the stored cells (give this or --sweep)")
    ap.add_argument("--sweep", default=None, help="comma-separated BERs: every scheme, table + JSON + PNG")
    ap.add_argument("--scheme", default="sparrow", help=f"one of {', '.join(scheme_names())}")
    ap.add_argument("--no-compare", action="store_true",
                    help="with --ber: evaluate only --scheme, not also SEC-DED and no protection beside it "
                         "(default: all three, on the same trial keys)")
    add_setting_flags(ap, SparrowEvalConfig)
    add_model_flags(ap)
    ap.add_argument("--memory-budget", type=positive_float, default=None,
                    help="GiB the trials held at once may take; with --strategy vmap or map:B the chunk of trials is "
                         "cut to fit (default: half the device's memory)")
    ap.add_argument("--out", default="runs/sparrow", help="output directory")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing result file (default: refuse)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    budget = None if a.memory_budget is None else a.memory_budget * 2**30
    config = SparrowEvalConfig.from_command(ber=a.ber, sweep=a.sweep, scheme=a.scheme, compare=not a.no_compare,
                                            memory_budget=budget, checkpoint=a.checkpoint, task=a.task,
                                            **settings_from_args(a, SparrowEvalConfig))
    output = prepare_output(config, a.out, sweep=a.sweep is not None, overwrite=a.overwrite)
    report = run(config)
    print(as_flags(report_text(report, config, output.sweep)), end="")
    print(f"wrote {', '.join(map(str, write_report(report, config, output)))}")
    if output.replacing:
        print("(it replaced the earlier result of this configuration and model: same configuration, same numbers)")
    print(f"next: python -m eval.tradeoff {output.path}   (energy of protection for these points)")
    return 0


if __name__ == "__main__":
    run_main(main)
