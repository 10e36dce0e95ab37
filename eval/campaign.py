"""Run a fault-injection campaign from a JSON config (grid of methods x rates x trials).

    python -m eval.campaign CONFIG.json [--out DIR] [--trials N] [--dry-run] [--plot]

The config format is documented in docs/campaign.md. Killed runs resume with the same command.
"""
from __future__ import annotations


from jaxfault import campaign as cp
from jaxfault.campaign import distributed
from jaxfault.campaign.execute import results_path, run_config
from jaxfault.cli import ArgumentParser, positive_float, positive_int, run_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m eval.campaign", description=__doc__.splitlines()[0])
    p.add_argument("config", help="campaign JSON (format: docs/campaign.md)")
    p.add_argument("--out", default=None, help="output folder (results.jsonl, campaign.png), overriding the "
                                                "config's `out` (default: the config's)")
    p.add_argument("--trials", type=positive_int, default=None, help="trials per point, overriding the config's (default: the config's)")
    p.add_argument("--ci-width", type=positive_float, default=None,
                   help="run trials in chunks of --trials until the accuracy's 95 %% interval half-width is <= this, "
                        "overriding the config's (default: the config's; none: a fixed number of trials)")
    p.add_argument("--max-trials", type=positive_int, default=None,
                   help="cap of a --ci-width run, overriding the config's (default: the config's, else 10 x trials)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the grid size, run nothing, write nothing")
    p.add_argument("--plot", action="store_true", help="also draw OUT/campaign.png: accuracy (a language model: "
                                                       "perplexity) vs rate, one line per method/scheme (default: off)")
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
    config = cp.load_config(args.config, {"out": args.out, "trials": args.trials, "ci_width": args.ci_width,
                                          "max_trials": args.max_trials})
    records = run_config(config, plot=args.plot, dry_run=args.dry_run)
    if records is not None and distributed.is_writer():
        print(f"next: python -m eval.tradeoff {results_path(config)}   (energy of protection; --plot for the "
              f"metric vs rate)")
    return 0


if __name__ == "__main__":
    run_main(main)
