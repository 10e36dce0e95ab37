"""One campaign run from its validated config: the outputs checked, the grid evaluated (resuming
what a killed run already wrote), the table printed and the optional plot drawn. The library
behind ``python -m eval.campaign``; with several processes (jaxfault.campaign.distributed, joined
first) only process 0 writes and prints."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import jax

from jaxfault.campaign import config as campaign_config
from jaxfault.campaign import distributed
from jaxfault.campaign.grid import expand_grid
from jaxfault.campaign.methods import group_key
from jaxfault.campaign.report import format_table, plot_records, point_label, point_summary
from jaxfault.campaign.runner import Campaign, run_campaign
from jaxfault.core.io import check_output_folder
from jaxfault.core.resultsfile import ResultsFile


def results_path(config: dict) -> Path:
    """The JSON-lines results file of a validated campaign config: OUT/results.jsonl."""
    return Path(config["out"]) / campaign_config.RESULTS_FILE


def run_config(config: dict, *, plot: bool = False, dry_run: bool = False,
               log: Callable[..., None] = print) -> list | None:
    """Run the campaign of `config` (jaxfault.campaign.load_config's result).

    Args:
      config: the validated campaign config; its "out" is the folder of the results file.
      plot: also draw OUT/campaign.png, the metric vs rate, one line per method/scheme (redrawn
        from the results on every run).
      dry_run: validate, say the grid's size and what is already done, run nothing, write nothing.
      log: where the progress lines and the table go (print(line, flush=...) signature).
    Returns:
      The records of every grid point, in grid order (None for a dry run).
    """
    output = results_path(config)
    plot = Path(config["out"]) / campaign_config.PLOT_FILE if plot else None
    writer = distributed.is_writer()
    if writer:  # the run and the dry run refuse the same outputs, before any model loads: one that
        # cannot be created, and an existing file that is not a jaxfault results file (or is corrupt)
        check_output_folder(config["out"], [output.name] + ([plot.name] if plot else []), overwrite=True,
                            flag="`out`")
        ResultsFile.check(output)
    say = log if writer else (lambda *a, **k: None)
    points = expand_grid(config["grid"])
    groups = len({group_key(p.params) for p in points})
    per_point = (f"{config['trials']} trials" if config["ci_width"] is None else
                 f"chunks of {config['trials']} trials until the half-width <= {config['ci_width']:g} "
                 f"(at most {config['max_trials'] or 10 * config['trials']})")
    say(f"campaign: {len(points)} grid points in {groups} program group(s) x {per_point} "
        f"on {jax.device_count()} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es) "
        f"-> {output}")
    if dry_run:
        identity = campaign_config.dry_run_identity(config)
        if identity is None:
            say("dry run: the default model is not trained yet; a run trains it first (about 2 min here)")
        elif output.exists():
            with ResultsFile.open(output, identity, dry_run=True) as rf:
                say(f"dry run: {sum(p.point_id in rf for p in points)} of {len(points)} points already in {output}")
        say("dry run: nothing run, nothing written")
        return None
    data, identity = campaign_config.load_eval_data(config)
    campaign = Campaign(points=points, trials=config["trials"], seed=config["seed"], strategy=config["strategy"],
                        precision=config["precision"], ci_width=config["ci_width"], max_trials=config["max_trials"])
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

        records, compiled = run_campaign(campaign, data, done=done, on_point=on_point, record=record)
        if rf is not None:
            rows = rf.rows()
            records = [{"point_id": p.point_id, **rows[p.point_id]} for p in points]
    say(format_table(records))
    say(f"done in {time.perf_counter() - t0:.1f} s, {compiled} trial program(s) compiled; results: {output}")
    if plot and writer:
        plot_records(records, plot)
        say(f"plot: {plot}")
    return records
