"""How every random stream in jaxfault is derived from a seed (written down once).

All keys are typed ``jax.random.key`` values. From a run's integer seed:

* ``root_key(seed)`` is ``jax.random.key(seed)``;
* a named stream is ``stream(key, name)`` = ``fold_in(key, crc32(name))`` (e.g. "trials",
  "subset", "selection", "train", "init"), so streams never collide with other seeds' roots
  (the old ``PRNGKey(seed + 1)`` subset key was the next seed's root);
* a grid point's key is ``fold_in(root, hash of the point's canonical JSON)``;
* trial keys are ``split(key, trials)``; a composed fault model's stage i uses
  ``fold_in(trial_key, i)``; kernel i inside a fault model uses ``fold_in(stage_key, i)``.
"""
from __future__ import annotations

import hashlib
import json
import zlib

import jax

# jax.random.key takes 32 bits of a seed (without x64, key(2**32) is key(0)): larger seeds would
# silently repeat smaller seeds' trials, or overflow past 2**63
MAX_SEED = 2**32 - 1
# the most trials (keys split at once) of one configuration that a config or flag may ask for
MAX_TRIALS = 100_000


def check_seed(seed, name: str = "seed") -> int:
    """seed, if it is an integer in [0, MAX_SEED]; else a one-line JaxfaultError naming it."""
    from jaxfault.core.errors import JaxfaultError

    import operator

    try:
        value = None if isinstance(seed, bool) else operator.index(seed)  # numpy integers too
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise JaxfaultError(f"{name} must be an integer in [0, {MAX_SEED}] (the key derivation takes 32 bits), "
                            f"got {seed!r}")
    return value


def root_key(seed: int) -> jax.Array:
    """The typed root key of a run (seed checked: check_seed)."""
    return jax.random.key(check_seed(seed))


def stream(key: jax.Array, name: str) -> jax.Array:
    """An independent named stream of a key."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def point_hash(params: dict) -> str:
    """Stable 16-hex-digit id of a JSON-able dict (sorted keys)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def point_key(seed: int, params: dict) -> jax.Array:
    """A grid point's key: the seed's root folded with a hash of the point."""
    return jax.random.fold_in(root_key(seed), int(point_hash(params)[:8], 16) & 0x7FFFFFFF)


def trial_keys(key: jax.Array, trials: int) -> jax.Array:
    """`trials` independent keys of one point (shape (trials,))."""
    return jax.random.split(key, int(trials))
