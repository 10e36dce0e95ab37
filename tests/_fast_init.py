"""Variables of a module's shapes without compiling its init (a flax init program draws every
parameter with threefry, and compiling it costs seconds to tens of seconds on a 2-core CPU).

For tests that need some variables of the right structure, not the module's own initialisation:
kernels are normal with variance 2/fan_in (activations keep their scale through ReLUs), other
parameters normal with standard deviation 0.01, normalisation layers as initialised (every
'scale' 1, running mean 0 and variance 1). The values are a numpy function of the seed: the same
seed, the same variables.
"""
from __future__ import annotations

import jax
import numpy as np

_BATCH_NORM = {"scale": 1.0, "var": 1.0, "mean": 0.0}


def random_variables(module, seed: int, *args, **kwargs) -> dict:
    """Variables shaped like ``module.init(key, *args, **kwargs)``, filled from numpy's RNG."""
    shapes = jax.eval_shape(lambda k: module.init(k, *args, **kwargs), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = getattr(path[-1], "key", str(path[-1]))
        if name in _BATCH_NORM:
            return np.full(s.shape, _BATCH_NORM[name], s.dtype)
        if name == "kernel" and len(s.shape) >= 2:
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
        return (0.01 * rng.standard_normal(s.shape)).astype(s.dtype)

    out = jax.tree_util.tree_map_with_path(fill, shapes)
    return jax.tree_util.tree_map(jax.numpy.asarray, out)
