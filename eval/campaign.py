"""Run a fault-injection campaign from a JSON config (grid of methods x rates x trials).

    python -m eval.campaign CONFIG.json [--output FILE] [--trials N] [--dry-run] [--plot PNG]

The config format is documented in docs/campaign.md. Killed runs resume with the same command.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax

from jaxfault import campaign as cp
from jaxfault.campaign import distributed, results
from jaxfault.campaign.report import format_table, plot_records
from jaxfault.cli import ArgumentParser, run_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.campaign", description=__doc__.splitlines()[0])
    p.add_argument("config", help="campaign JSON (format: docs/campaign.md)")
    p.add_argument("--output", default=None, help="results file, overriding the config's (default: the config's)")
    p.add_argument("--trials", type=int, default=None, help="trials per point, overriding the config's (default: the config's)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the grid size, run nothing, write nothing")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs rate, one line per method/scheme (default: none)")
    g = p.add_argument_group("several processes (jax.distributed; only process 0 writes)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordinator (default: one process)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (default: one process)")
    g.add_argument("--process-id", type=int, default=None, help="this process's id, 0-based (default: one process)")
    g.add_argument("--distributed-auto", action="store_true",
                   help="let JAX detect the processes from the environment: SLURM, Cloud TPU (default: off)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = cp.load_config(args.config, {"output": args.output, "trials": args.trials})
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed_auto)
    writer = distributed.is_writer()
    say = print if writer else (lambda *a, **k: None)
    points = cp.expand_grid(config["grid"])
    output = Path(config["output"])
    groups = len({cp.group_key(p.params) for p in points})
    print(f"campaign: {len(points)} grid points in {groups} program group(s) x {config['trials']} trials "
          f"on {jax.device_count()} {jax.devices()[0].platform} device(s) -> {output}")
    if args.dry_run:
        return 0
    results.check_writable(output)
    data, _identity = cp.load_eval_data(config)
    campaign = cp.Campaign(points=points, trials=config["trials"], seed=config["seed"],
                           strategy=config["strategy"], precision=config["precision"])
    done = results.read_results(output)
    if done:
        print(f"resuming: {sum(p.point_id in done for p in points)} of {len(points)} points already in {output}")
    t0 = time.perf_counter()

    def on_point(rec, i, n):
        el = time.perf_counter() - t0
        print(f"[{i}/{n}] {rec['config']['method']} {cp.report.point_label(rec['config'])}: "
              f"acc {rec['accuracy_mean']:.4f} +- {rec['accuracy_std']:.4f}  "
              f"({el:.0f} s elapsed, ETA {el / i * (n - i):.0f} s)", flush=True)

    records, compiled = cp.run_campaign(campaign, data, done=done, on_point=on_point,
                                        record=lambda r: results.append_record(output, r))
    print(format_table(records))
    print(f"done in {time.perf_counter() - t0:.1f} s, {compiled} trial program(s) compiled; results: {output}")
    if args.plot:
        plot_records(records, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
