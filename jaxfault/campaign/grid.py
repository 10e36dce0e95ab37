"""Campaign grids: the cartesian product of each entry's list-valued fields, with stable ids.

A point's id and key depend only on its parameters (and the campaign seed), never on its
position in the grid, the device count or earlier interruptions, so resumed or re-sharded runs
compute the same numbers (jaxfault.core.keys.point_key).
"""
from __future__ import annotations

import dataclasses
import itertools

import jax

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.keys import point_hash, point_key


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One campaign point: its parameters (method, scheme, rate, ...) and its stable id."""

    params: dict

    @property
    def point_id(self) -> str:
        return point_hash(self.params)

    def key(self, seed: int) -> jax.Array:
        """The point's PRNG key: the campaign seed's root folded with a hash of the point."""
        return point_key(seed, self.params)


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
