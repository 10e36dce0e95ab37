"""Campaigns across processes with JAX's multi-controller runtime (jax.distributed).

Every process runs the same program on the same grid; the trial axis of each point is sharded
over every device of every process (one global mesh), and each point's results are gathered on
every process. Only process 0 reads and writes the results file: it broadcasts which points are
already done, so the other processes need no shared filesystem.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxfault.core.errors import JaxfaultError


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False) -> bool:
    """Join a multi-process run; returns True if this run has several processes.

    With a coordinator ("host:port"), the process count and this process's id, the processes
    meet there; with auto=True, JAX detects them from the environment (SLURM, Cloud TPU, ...).
    On the CPU backend, cross-process collectives use gloo.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise JaxfaultError("give all of `coordinator`, `num_processes` and `process_id` (or `distributed_auto`)")
    if not any(given) and not auto:
        return False
    if all(given):
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise JaxfaultError(f"`coordinator` must be HOST:PORT, got {coordinator!r}")
        if not (isinstance(num_processes, int) and num_processes >= 1):
            raise JaxfaultError(f"`num_processes` must be >= 1, got {num_processes!r}")
        if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
            raise JaxfaultError(f"`process_id` must be in [0, {num_processes - 1}], got {process_id!r}")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - an older jaxlib without the option: accelerators still work
        pass
    if all(given):
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes results (process 0)."""
    return jax.process_index() == 0


def share_done(done_ids: list[str], point_ids: list[str]) -> set[str]:
    """The set of finished point ids, as process 0 knows it, on every process."""
    if jax.process_count() == 1:
        return set(done_ids)
    from jax.experimental import multihost_utils

    flags = np.array([pid in set(done_ids) for pid in point_ids], np.int32)
    flags = np.asarray(multihost_utils.broadcast_one_to_all(flags))
    return {pid for pid, f in zip(point_ids, flags) if f}
