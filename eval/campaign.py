"""Run a fault-injection campaign from a JSON config (grid of methods x rates x trials).

    python -m eval.campaign CONFIG.json [--output FILE] [--trials N] [--dry-run] [--plot PNG]

The config format is documented in docs/campaign.md. Killed runs resume with the same command.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import jax

from jaxfault import campaign as cp
from jaxfault.campaign import distributed
from jaxfault.campaign.report import format_table, plot_records, point_label, point_summary
from jaxfault.cli import ArgumentParser, positive_float, positive_int, run_main
from jaxfault.io import check_output_path
from jaxfault.resultsfile import ResultsFile


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.campaign", description=__doc__.splitlines()[0])
    p.add_argument("config", help="campaign JSON (format: docs/campaign.md)")
    p.add_argument("--output", default=None, help="results file, overriding the config's (default: the config's)")
    p.add_argument("--trials", type=positive_int, default=None, help="trials per point, overriding the config's (default: the config's)")
    p.add_argument("--ci-width", type=positive_float, default=None,
                   help="run trials in chunks of --trials until the accuracy's 95 %% interval half-width is <= this, "
                        "overriding the config's (default: the config's; none: a fixed number of trials)")
    p.add_argument("--max-trials", type=positive_int, default=None,
                   help="cap of a --ci-width run, overriding the config's (default: the config's, else 10 x trials)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the grid size, run nothing, write nothing")
    p.add_argument("--plot", default=None, help="PNG of accuracy (a language model: perplexity) vs rate, one line per method/scheme (default: none)")
    g = p.add_argument_group("several processes (jax.distributed; only process 0 writes)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordinator (default: one process)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (default: one process)")
    g.add_argument("--process-id", type=int, default=None, help="this process's id, 0-based (default: one process)")
    g.add_argument("--distributed-auto", action="store_true",
                   help="let JAX detect the processes from the environment: SLURM, Cloud TPU (default: off)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # joining the other processes comes before anything that could start JAX's backend
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed_auto)
    config = cp.load_config(args.config, {"output": args.output, "trials": args.trials, "ci_width": args.ci_width,
                                          "max_trials": args.max_trials})
    output = Path(config["output"])
    if args.plot:
        check_output_path(args.plot, overwrite=True, flag="--plot")
    writer = distributed.is_writer()
    if writer:  # the run and the dry run refuse the same outputs, before any model loads: one that
        # cannot be created, and an existing file that is not a jaxfault results file (or is corrupt)
        check_output_path(output, overwrite=True, flag="output")
        ResultsFile.check(output)
    say = print if writer else (lambda *a, **k: None)
    points = cp.expand_grid(config["grid"])
    groups = len({cp.group_key(p.params) for p in points})
    per_point = (f"{config['trials']} trials" if config["ci_width"] is None else
                 f"chunks of {config['trials']} trials until the half-width <= {config['ci_width']:g} "
                 f"(at most {config['max_trials'] or 10 * config['trials']})")
    say(f"campaign: {len(points)} grid points in {groups} program group(s) x {per_point} "
        f"on {jax.device_count()} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es) "
        f"-> {output}")
    if args.dry_run:
        identity = cp.config.dry_run_identity(config)
        if identity is None:
            say("dry run: the default model is not trained yet; a run trains it first (about 2 min here)")
        elif output.exists():
            with ResultsFile.open(output, identity, dry_run=True) as rf:
                say(f"dry run: {sum(p.point_id in rf for p in points)} of {len(points)} points already in {output}")
        say("dry run: nothing run, nothing written")
        return 0
    data, identity = cp.load_eval_data(config)
    campaign = cp.Campaign(points=points, trials=config["trials"], seed=config["seed"],
                           strategy=config["strategy"], precision=config["precision"],
                           ci_width=config["ci_width"], max_trials=config["max_trials"])
    with (ResultsFile.open(output, identity) if writer else contextlib.nullcontext()) as rf:
        rows = rf.rows() if rf is not None else {}
        done_ids = distributed.share_done(list(rows), [p.point_id for p in points])
        done = {pid: rows.get(pid, {}) for pid in done_ids}
        if done:
            say(f"resuming: {len(done)} of {len(points)} points already in {output}")
        t0 = time.perf_counter()

        def on_point(rec, i, n):
            el = time.perf_counter() - t0
            say(f"[{i}/{n}] {rec['config']['method']} {point_label(rec['config'])}: {point_summary(rec)}  "
                f"({el:.0f} s elapsed, ETA {el / i * (n - i):.0f} s)", flush=True)

        def record(rec):
            if rf is not None:
                rf.append(rec["point_id"], {k: v for k, v in rec.items() if k != "point_id"})

        records, compiled = cp.run_campaign(campaign, data, done=done, on_point=on_point, record=record)
        if rf is not None:
            rows = rf.rows()
            records = [{"point_id": p.point_id, **rows[p.point_id]} for p in points]
    say(format_table(records))
    say(f"done in {time.perf_counter() - t0:.1f} s, {compiled} trial program(s) compiled; results: {output}")
    if args.plot and writer:
        plot_records(records, args.plot)
        say(f"plot: {args.plot}")
    say(f"next: python -m eval.tradeoff {output}   (energy of protection; --plot PNG for the metric vs rate)")
    return 0


if __name__ == "__main__":
    run_main(main)
