"""Faults conditioned on an exact count: the strata of the rare-fault estimator (docs/rare.md).

The unconditional model (:mod:`jaxfault.faults.words`): each stored cell of each word is faulty
independently with probability ``p``; a fault is stuck at 1 ("0->1") with probability ``q``,
stuck at 0 ("1->0") otherwise, or a flip in the flip model. Cells are numbered word by word.

A *stratification class* is a set of stored bit positions (the same in every word) and a
direction: ``"any"`` (every fault in those cells, per-cell probability p), ``"0->1"`` (p q) or
``"1->0"`` (p (1 - q)). Its count K of class faults is Binomial(n_words * |positions|, p_class).
Conditioned on K = k the faults have this exact law, which is what :func:`conditioned_maps` draws:

* the k class faults sit on a uniform k-subset of the class cells (Floyd's algorithm; every
  subset equally likely); with direction ``"any"`` each is 0->1 with probability q independently
  (the sampler's threshold test of a random 32-bit word), otherwise all take the class direction;
* cells at other positions are untouched by the conditioning: their faults come from the
  project's sampler at (p, q), independent of the class cells;
* for a one-direction class, the remaining class cells can still fail the other way: given that a
  cell is not a class fault, it fails the other way with probability p_other / (1 - p_class)
  (drawn with the sampler over the class cells, then removed where a class fault sits).

Uniform integers come from ``jax.random.randint`` (two 32-bit words per draw, so the deviation
from uniform is below 2^-32 relative). ``k`` may be traced; ``k_bound`` (static) sizes the
arrays and the loop, and counts above it cannot be drawn (callers check on the host).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.bits import words_to_pytree
from jaxfault.core.errors import JaxfaultError, check
from jaxfault.faults import sampler
from jaxfault.faults import words as fw
from jaxfault.core.protocol import FaultModel

U32 = jnp.uint32
DIRECTIONS = ("any", "0->1", "1->0")
MAX_CLASS_CELLS = (1 << 31) - 1


def check_direction(direction: str) -> str:
    """Validate a stratification-class direction."""
    if direction not in DIRECTIONS:
        raise JaxfaultError(f"unknown fault direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    return direction


def class_positions(stored_mask: int, positions=None) -> np.ndarray:
    """The class's bit positions (MSB first) inside a word's stored cells; all of them when None."""
    stored = fw.stored_positions(stored_mask)
    if positions is None:
        return stored
    pos = sorted({int(b) for b in positions}, reverse=True)
    check(len(pos) >= 1, "a stratification class needs at least one bit position")
    bad = [b for b in pos if b not in set(stored.tolist())]
    check(not bad, f"bit positions {bad} are not stored cells of mask {stored_mask:#010x}")
    return np.array(pos, np.uint32)


def class_probability(p: float, q: float, direction: str) -> float:
    """Per-cell probability that a cell holds a class fault: p, p q or p (1 - q)."""
    check_direction(direction)
    return {"any": p, "0->1": p * q, "1->0": p * (1.0 - q)}[direction]


def effective_zero_to_one(q: float) -> float:
    """The 0->1 share the sampler realises for q: its threshold round(q 2^32) / 2^32, q in float32."""
    q32 = float(np.float32(q))
    if q32 >= 1.0:
        return 1.0
    if q32 <= 0.0:
        return 0.0
    return float(np.round(np.float32(q32) * np.float32(2.0 ** 32))) / 2.0 ** 32


def uniform_subset(key, n: int, k, k_bound: int) -> jax.Array:
    """A uniform k-subset of range(n) by Floyd's algorithm -> int32 (k_bound,), slots >= k hold n.

    Args:
      key: a typed PRNG key.
      n: the number of cells (static, 1 <= n < 2^31).
      k: the subset size (int, may be traced), 0 <= k <= min(k_bound, n).
      k_bound: static size of the result.
    Returns:
      int32 array of shape (k_bound,): the k chosen indices (distinct) in its first k slots, n in
      the others.
    """
    n = int(n)
    check(1 <= n <= MAX_CLASS_CELLS, f"a stratification class must have 1 .. 2^31 - 1 cells, got {n}")
    k = jnp.minimum(jnp.asarray(k, jnp.int32), jnp.int32(min(k_bound, n)))
    i = jnp.arange(k_bound, dtype=jnp.int32)
    j = jnp.int32(n) - k + i                        # Floyd's j for step i (valid where i < k)
    t = jax.random.randint(key, (k_bound,), 0, jnp.maximum(j, 0) + 1, dtype=jnp.int32)

    def body(step, chosen):
        ts = t[step]
        taken = jnp.any(chosen == ts)
        pick = jnp.where(taken, j[step], ts)
        return chosen.at[step].set(jnp.where(step < k, pick, jnp.int32(n)))

    return jax.lax.fori_loop(0, k_bound, body, jnp.full((k_bound,), n, jnp.int32))


def _or_masks(n_words: int, word, mask):
    # distinct cells: bits of one word never repeat, so a scatter-add is an OR
    return jnp.zeros((n_words,), U32).at[word].add(mask, mode="drop")


def conditioned_maps(key, n_words: int, stored_mask: int, positions, direction: str, k, p, q, *,
                     k_bound: int, rate_bound: float, flip: bool = False):
    """Fault maps of n_words words conditioned on exactly k class faults (module docstring).

    Args:
      key: a typed PRNG key.
      n_words: number of stored words (static).
      stored_mask: the words' stored cells (static).
      positions: the class's bit positions (sequence of ints, static; None: every stored cell).
      direction: "any", "0->1" or "1->0" (static; the flip model takes "any" only).
      k: class faults to place (int, may be traced), at most ``k_bound``.
      p, q: per-cell fault probability and 0->1 share (float32 scalars, may be traced).
      k_bound: static bound on k.
      rate_bound: static bound on p (sizes the sampler's chunks only).
      flip: the flip model (returned map_0to1 is then all zero and map_1to0 holds the flips).
    Returns:
      (map_1to0, map_0to1, FaultStats) with uint32 maps of shape (n_words,).
    """
    check_direction(direction)
    check(not flip or direction == "any", "the flip model's stratification class has direction 'any'")
    cls = class_positions(stored_mask, positions)
    stored = fw.stored_positions(stored_mask)
    rest = np.array([b for b in stored if b not in set(cls.tolist())], np.uint32)
    n_cls = int(n_words) * len(cls)
    k_class, k_type, k_rest, k_other = jax.random.split(key, 4)
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(0.0 if flip else q, jnp.float32)
    # 1. the k class faults: a uniform k-subset of the class cells
    cells = uniform_subset(k_class, n_cls, k, k_bound)
    valid = cells < n_cls
    word = jnp.where(valid, cells // len(cls), int(n_words))
    bit = jnp.asarray(cls, U32)[jnp.where(valid, cells % len(cls), 0)]
    mask = jnp.where(valid, U32(1) << bit, U32(0))
    if direction == "any":
        thr, always01 = sampler._type_threshold(q)
        is01 = (jax.random.bits(k_type, (k_bound,), U32) < thr) | always01
    else:
        is01 = jnp.full((k_bound,), direction == "0->1")
    c10 = _or_masks(n_words, word, jnp.where(is01, U32(0), mask))
    c01 = _or_masks(n_words, word, jnp.where(is01, mask, U32(0)))
    # 2. the other positions: the unconditional sampler
    zeros = jnp.zeros((n_words,), U32)
    if len(rest):
        rmask = int(sum(1 << int(b) for b in rest))
        r10, r01, _ = fw.stuck_at_maps(k_rest, int(n_words), p, q, rmask, rate_bound=rate_bound)
    else:
        r10, r01 = zeros, zeros
    # 3. a one-direction class: the other direction on the class cells without a class fault
    o10, o01 = zeros, zeros
    if direction != "any":
        p_cls = p * q if direction == "0->1" else p * (1 - q)
        p_other = (p * (1 - q) if direction == "0->1" else p * q) / jnp.maximum(1 - p_cls, np.float32(1e-30))
        cmask = int(sum(1 << int(b) for b in cls))
        om, _, _ = fw.stuck_at_maps(k_other, int(n_words), p_other, 0.0, cmask,
                                    rate_bound=min(1.0, float(rate_bound) / max(1e-30, 1.0 - float(rate_bound))))
        om = om & ~(c10 | c01)
        o10, o01 = (om, zeros) if direction == "0->1" else (zeros, om)
    m10 = c10 | r10 | o10
    m01 = c01 | r01 | o01
    nf = jnp.sum(jax.lax.population_count(m10 | m01), dtype=jnp.int32)
    n01 = jnp.sum(jax.lax.population_count(m01), dtype=jnp.int32)
    return m10, m01, fw.fault_stats(nf, n01, int(n_words) * len(stored))


@dataclasses.dataclass(frozen=True)
class ConditionedHBM(FaultModel):
    """HBM faults (:class:`jaxfault.ecc.hbm.HBMFaults`) conditioned on an exact class-fault count.

    The rate it takes is the vector (k, ber): k class faults placed exactly, the rest of the
    model at ber (module docstring). Everything else (encoding, leaves, decoding, bf16
    evaluation) is the base model's. ``k_bound`` is the largest k it is compiled for; the base
    model's ``rate_bound`` bounds ber.
    """

    base: Any
    positions: tuple | None = None
    direction: str = "any"
    k_bound: int = 16

    rate_name: ClassVar[str] = "class faults, ber"

    def __post_init__(self):
        from jaxfault.ecc.hbm import HBMFaults

        check(isinstance(self.base, HBMFaults), f"the base fault model must be HBMFaults, got {type(self.base).__name__}")
        check_direction(self.direction)
        check(self.base.mode == "stuck-at" or self.direction == "any",
              f"the flip model's stratification class has direction 'any', got {self.direction!r}")
        check(isinstance(self.k_bound, int) and not isinstance(self.k_bound, bool) and self.k_bound >= 1,
              f"k_bound must be an integer >= 1, got {self.k_bound!r}")
        pos = class_positions(self.base.get_scheme().stored_mask, self.positions)
        object.__setattr__(self, "positions", tuple(int(b) for b in pos))

    @property
    def eval_dtype(self):  # type: ignore[override]
        return self.base.eval_dtype

    def prepare(self, variables):
        return self.base.prepare(variables)

    def with_rate_bound(self, rate_bound):
        """The bound is fixed at construction (k_bound and the base's rate_bound)."""
        return self

    def n_words(self, variables) -> int:
        """Stored words of the prepared variables (static)."""
        return int(self.base.encode(variables["params"])[0].shape[0])

    def class_cells(self, variables) -> int:
        """Cells of the stratification class in the prepared variables."""
        return self.n_words(variables) * len(self.positions)

    def is_complete(self) -> bool:
        """True when the class holds every possible fault (k = 0 is then the fault-free model)."""
        s = self.base.get_scheme()
        return self.direction == "any" and len(self.positions) == len(fw.stored_positions(s.stored_mask))

    def perturb(self, key, variables, rate):
        rate = jnp.asarray(rate, jnp.float32)
        k = jnp.round(rate[0]).astype(jnp.int32)
        ber = rate[1]
        s = self.base.get_scheme()
        params = variables["params"]
        encoded, layout = self.base.encode(params)
        flip = self.base.mode == "flip"
        m10, m01, st = conditioned_maps(key, int(encoded.shape[0]), s.stored_mask, self.positions, self.direction,
                                        k, ber, self.base.zero_to_one, k_bound=self.k_bound,
                                        rate_bound=self.base.rate_bound, flip=flip)
        bad = encoded ^ m10 if flip else (encoded & ~m10) | m01
        dec = s.decode(bad)
        n = layout.n_values
        changed = jnp.mean((dec[:n] != s.decode(encoded)[:n]).astype(jnp.float32))
        new = words_to_pytree(params, dec, layout, select=self.base.select)
        return {**variables, "params": new}, {**st._asdict(), "changed_fraction": changed, "class_faults": k}

    def describe(self) -> dict:
        """JSON-ready configuration."""
        return {"fault_model": type(self).__name__, "base": self.base.describe(), "positions": list(self.positions),
                "direction": self.direction, "k_bound": self.k_bound}

