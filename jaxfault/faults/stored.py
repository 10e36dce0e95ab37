"""Faults on the stored bits of any number format (jaxfault.core.formats), through the one sampler.

A stored array is cut into *regions*: runs of uint32 words that share one ``stored_mask`` and
one table of bit roles (``roles[b]`` names the role of bit b: ``"sign"``, ``"exponent"``,
``"mantissa"``, ``"magnitude"``, ``"scale"``, or a protection scheme's ``"check"`` /
``"copy"`` / ``"data"`` cells). The element words of a layer are one region, its MX scales
another (reported apart as ``scale_faults``), a scheme's check bits a third.

Each stored cell of each region is faulty independently with probability ``ber``; a faulty cell
is stuck at 1 with probability ``zero_to_one`` and at 0 otherwise (``mode="stuck-at"``), or
flipped (``mode="flip"``). Region i draws its cells from ``keys[i]`` with the sampler of
:mod:`jaxfault.faults.sampler` (regions with equal masks share one sampler loop), so a region
gets exactly the faults of ``stuck_at_maps(keys[i], len(words), ber, zero_to_one, mask)``.
Under the ``"memory_array"`` placement the cells come instead from the one shared 8192 x 128 map
of :mod:`jaxfault.faults.placement`, word k of a region at index ``start + k``.

Returned statistics (int32/float32 scalars, so they batch under vmap/lax.map): the FaultStats
fields over all regions, ``faults_<role>`` and ``ber_<role>`` per role present (realised rate
= faulty cells of that role / cells of that role), and ``scale_faults`` (faulty scale cells).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check
from jaxfault.faults import placement as fp
from jaxfault.faults import sampler
from jaxfault.faults import words as fw

U32 = jnp.uint32
MODES = ("stuck-at", "flip")


class Region(NamedTuple):
    """Words sharing one stored mask: ``words`` (1-D uint32), ``mask`` (static int),
    ``roles`` (static tuple, role of bit b; '' where the bit is not stored), ``start`` (static
    first word index in the memory array, for the memory-array placement)."""

    words: jax.Array
    mask: int
    roles: tuple
    start: int = 0


def roles_table(roles_by_bit: Sequence[str], offset: int = 0) -> tuple:
    """A 32-entry role table with roles_by_bit at bits offset, offset + 1, ..."""
    table = [""] * 32
    for b, r in enumerate(roles_by_bit):
        table[offset + b] = r
    return tuple(table)


def mask_of(roles: tuple) -> int:
    """The stored mask of a role table (every bit with a role)."""
    return sum(1 << b for b, r in enumerate(roles) if r)


def check_mode(mode: str) -> str:
    """Validate a fault mode name."""
    if mode not in MODES:
        raise JaxfaultError(f"unknown fault mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


@partial(jax.jit, static_argnames=("sizes", "stored_mask", "rate_bound"))
def _maps_streams(keys, p, q, *, sizes, stored_mask: int, rate_bound: float):
    """(map_1to0, map_0to1, n_faults, n_zero_to_one) over the concatenated words of streams
    drawn from keys[i] (exactly stuck_at_maps(keys[i], sizes[i], ...) per stream)."""
    pos = fw.stored_positions(stored_mask)

    def apply(maps, idx, g10, g01):
        m10, m01 = maps
        return (m10.at[idx].set(m10[idx] | g10, mode="drop"), m01.at[idx].set(m01[idx] | g01, mode="drop"))

    zeros = jnp.zeros((sum(sizes),), U32)
    return sampler.for_each_fault_group_streams(keys, list(sizes), pos, p, q, apply, (zeros, zeros),
                                                rate_bound=rate_bound)


def _popcount_sum(x):
    return jnp.sum(jax.lax.population_count(x), dtype=jnp.int32)


def inject_regions(keys, regions: Sequence[Region], ber, zero_to_one=0.0, *, mode: str = "stuck-at",
                   placement: str = "independent", array_key=None, word_bits: Sequence[int] | None = None,
                   rate_bound=None):
    """Stuck-at or flip faults on the stored cells of several regions.

    Args:
      keys: one typed key per region (a list, or a key array with one row per region).
      regions: the :class:`Region` values to fault.
      ber: the probability that a stored cell is faulty (Python number or traced scalar).
      zero_to_one: share of stuck-at faults that read 1 (ignored by ``mode="flip"``).
      mode: ``"stuck-at"`` or ``"flip"``.
      placement: ``"independent"`` (cells drawn from ``keys``) or ``"memory_array"`` (cells of
        the shared array drawn from ``array_key``; region i's words are ``word_bits[i]`` wide).
      rate_bound: static bound on a traced ber (sizes the sampler's chunks only).
    Returns:
      (list of faulty word arrays, dict of statistics described in the module docstring).
    """
    check_mode(mode)
    fp.check_placement(placement)
    p, bound = sampler.resolve_rate("ber", ber, rate_bound)
    q, _ = sampler.resolve_rate("zero_to_one", 0.0 if mode == "flip" else zero_to_one, bounded=False)
    regions = list(regions)
    maps: list = [None] * len(regions)
    static_zero = not sampler.is_traced(ber) and float(ber) == 0.0
    if placement == "memory_array":
        check(array_key is not None and word_bits is not None and len(word_bits) == len(regions),
              "the memory-array placement needs array_key and one word width per region")
        a10, a01, _ = fp.memory_array_maps(array_key, ber, q, rate_bound=bound)
        for i, r in enumerate(regions):
            m10, m01 = fp.memory_array_word_maps(a10, a01, r.words.shape[0], int(word_bits[i]), start=r.start)
            maps[i] = (m10 & U32(r.mask), m01 & U32(r.mask))
    else:
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(regions):
            groups.setdefault(int(r.mask), []).append(i)
        for mask, idx in groups.items():
            sizes = tuple(int(regions[i].words.shape[0]) for i in idx)
            if static_zero or sum(sizes) == 0:
                for i in idx:
                    z = jnp.zeros(regions[i].words.shape, U32)
                    maps[i] = (z, z)
                continue
            ks = jnp.stack([keys[i] for i in idx])
            (m10, m01), _, _ = _maps_streams(ks, p, q, sizes=sizes, stored_mask=mask, rate_bound=bound)
            cuts = np.cumsum(sizes)[:-1].tolist()
            for i, a, b in zip(idx, jnp.split(m10, cuts), jnp.split(m01, cuts)):
                maps[i] = (a, b)
    out, stats = [], {}
    counts: dict[str, jax.Array] = {}
    cells: dict[str, int] = {}
    nf = jnp.int32(0)
    n01 = jnp.int32(0)
    n_cells = 0
    scale_faults = jnp.int32(0)
    for r, (m10, m01) in zip(regions, maps):
        w = jnp.asarray(r.words, U32)
        if mode == "flip":
            hit = m10 | m01
            out.append(w ^ hit)
        else:
            hit = m10 | m01
            out.append((w & ~m10) | m01)
            n01 = n01 + _popcount_sum(m01)
        nf = nf + _popcount_sum(hit)
        n_words = int(r.words.shape[0])
        n_cells += n_words * bin(int(r.mask)).count("1")
        for role in sorted(set(x for x in r.roles if x)):
            rmask = sum(1 << b for b, x in enumerate(r.roles) if x == role)
            c = _popcount_sum(hit & U32(rmask))
            counts[role] = counts.get(role, jnp.int32(0)) + c
            cells[role] = cells.get(role, 0) + n_words * bin(rmask).count("1")
            if role == "scale":
                scale_faults = scale_faults + c
    stats.update(fw.fault_stats(nf, n01, n_cells)._asdict())
    for role, c in counts.items():
        stats[f"faults_{role}"] = c
        stats[f"ber_{role}"] = c.astype(jnp.float32) / np.float32(max(cells[role], 1))
    stats["scale_faults"] = scale_faults
    return out, stats
