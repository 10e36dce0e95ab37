"""Fault-injection campaigns: a grid of (method, scheme, rate, ...) points x trials, evaluated in
jitted chunks whose trial axis is sharded over all visible devices, streamed to an append-only
JSON-lines file, and resumable after a kill with identical results.

Reproducibility: the keys of a grid point depend only on the campaign seed and the point's
canonical JSON (not on its position in the grid, the device count or earlier interruptions), so a
resumed or re-sharded run computes the same numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxfault.batching import resolve_strategy
from jaxfault.errors import JaxfaultError, check_probability

TrialFn = Callable[[jax.Array, Any], dict]  # (key, dynamic args) -> {"accuracy", "fault_rate"}


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """A method's trial for one grid point: fn(key, args) -> {"accuracy", "fault_rate"}.

    `args` holds the point's numeric values as arrays (traced, so points differing only in them
    share one compilation); `cache_key` names everything else that shapes the computation.
    """

    fn: TrialFn
    args: Any
    cache_key: tuple


# ----------------------------------------------------------------------------------- the grid
@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One campaign point: its parameters (method, scheme, rate, ...) and its stable id."""

    params: dict

    @property
    def point_id(self) -> str:
        return hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:16]

    def key(self, seed: int) -> jax.Array:
        """The point's PRNG key: fold the campaign seed with a hash of the point's parameters."""
        return jax.random.fold_in(jax.random.key(seed), int(self.point_id[:8], 16) & 0x7FFFFFFF)


def expand_grid(entries: list[dict]) -> list[GridPoint]:
    """Cartesian product of the list-valued fields of each entry, in a deterministic order."""
    if not isinstance(entries, list) or not entries:
        raise JaxfaultError("campaign grid is empty: give at least one entry with a 'method'")
    points: list[GridPoint] = []
    for entry in entries:
        if not isinstance(entry, dict) or "method" not in entry:
            raise JaxfaultError(f"grid entry {entry!r} needs a 'method'")
        names = sorted(entry)
        values = [entry[n] if isinstance(entry[n], list) else [entry[n]] for n in names]
        for n, v in zip(names, values):
            if not v:
                raise JaxfaultError(f"grid entry for method {entry['method']!r}: field {n!r} is an empty list")
        for combo in itertools.product(*values):
            points.append(GridPoint(dict(zip(names, combo))))
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        raise JaxfaultError("campaign grid repeats a point; each combination must appear once")
    return points


# ----------------------------------------------------------------------------------- sharding
def trial_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'trials' over the given (default: all visible) devices."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.array(devices), ("trials",))


def sharded_trials(fn: TrialFn, mesh: Mesh, strategy: str = "auto") -> Callable:
    """Jit fn over a trial axis of keys sharded across the mesh (args replicated).

    Each device runs its slice with the per-backend strategy: lax.map on CPU (vmap over
    per-instance conv weights is several times slower there), vmap on GPU/TPU.
    """
    strategy = resolve_strategy(strategy)
    if strategy == "loop":
        strategy = "map"  # inside one compiled call the sequential form is lax.map

    def local(ks, args):
        one = lambda k: fn(k, args)  # noqa: E731
        return jax.vmap(one)(ks) if strategy == "vmap" else jax.lax.map(one, ks)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("trials"), P()), out_specs=P("trials"),
                                 check_vma=False))


def run_trials(spec: TrialSpec, keys: jax.Array, mesh: Mesh, strategy: str = "auto",
               compiled: Callable | None = None) -> dict:
    """Evaluate spec.fn on every key, the trial axis sharded over the mesh's devices.

    The key count is padded to a multiple of the device count; padding results are dropped.
    Returned arrays keep their trial-axis sharding.
    """
    n = keys.shape[0]
    n_dev = mesh.devices.size
    padded = -(-n // n_dev) * n_dev
    if padded != n:
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], padded - n, axis=0)])
    compiled = compiled or sharded_trials(spec.fn, mesh, strategy)
    keys = jax.device_put(keys, NamedSharding(mesh, P("trials")))
    out = compiled(keys, spec.args)
    return jax.tree_util.tree_map(lambda x: x[:n] if padded != n else x, out)


# ----------------------------------------------------------------------------------- results file
def read_results(path: Path) -> dict[str, dict]:
    """Completed records by point id; a torn (unterminated or unparsable) last line is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    done: dict[str, dict] = {}
    good_end = 0
    offset = 0
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is never complete
        end = offset + len(line) + 1
        try:
            rec = json.loads(line)
            done[rec["point_id"]] = rec
            good_end = end
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # everything from the first bad line on is redone
        offset = end
    if good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return done


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with a single write and fsync (a kill leaves at most a torn last line)."""
    from jaxfault.io import to_jsonable

    line = (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """Fail before any work if the results file cannot be created or appended to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise JaxfaultError(f"cannot write results file {str(path)!r}: {e.strerror}") from None


# ----------------------------------------------------------------------------------- the runner
@dataclasses.dataclass
class Campaign:
    """A validated campaign: grid points, trials per point, seed and output file."""

    points: list[GridPoint]
    trials: int
    seed: int
    output: Path
    strategy: str = "auto"


def run_campaign(campaign: Campaign, make_trial_spec: Callable[[dict], TrialSpec], mesh: Mesh | None = None,
                 progress_bar: Callable | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Run every unfinished point, appending one record per point; return all records in grid order."""
    mesh = mesh or trial_mesh()
    check_writable(campaign.output)
    done = read_results(campaign.output)
    todo = [p for p in campaign.points if p.point_id not in done]
    if len(todo) < len(campaign.points):
        log(f"resuming: {len(campaign.points) - len(todo)} of {len(campaign.points)} points already in {campaign.output}")
    bar = progress_bar(total=len(campaign.points), initial=len(campaign.points) - len(todo), desc="grid points") \
        if progress_bar else None
    compiled: dict[tuple, Callable] = {}
    for point in todo:
        t0 = time.perf_counter()
        keys = jax.random.split(point.key(campaign.seed), campaign.trials)
        spec = make_trial_spec(point.params)
        if spec.cache_key not in compiled:
            compiled[spec.cache_key] = sharded_trials(spec.fn, mesh, campaign.strategy)
        out = run_trials(spec, keys, mesh, campaign.strategy, compiled[spec.cache_key])
        acc = np.asarray(out["accuracy"], np.float64)
        rate = np.asarray(out["fault_rate"], np.float64)
        record = {"point_id": point.point_id, "config": point.params, "seed": campaign.seed,
                  "trials": campaign.trials, "accuracy": acc.tolist(), "accuracy_mean": float(acc.mean()),
                  "accuracy_std": float(acc.std()), "accuracy_min": float(acc.min()),
                  "fault_rate": rate.tolist(), "fault_rate_mean": float(rate.mean()),
                  "seconds": time.perf_counter() - t0, "devices": int(mesh.devices.size)}
        append_record(campaign.output, record)
        done[point.point_id] = record
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [done[p.point_id] for p in campaign.points]
