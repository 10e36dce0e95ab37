"""Memory-bounded trials: the chunk that fits a budget, XLA's per-trial estimate, and chunked
evaluation equal to unchunked evaluation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfault
from jaxfault.engine import memory
from jaxfault.core import tasks
from jaxfault.core.errors import JaxfaultError
from jaxfault.training.lm import build_language_model, lm_model_config


def test_chunk_arithmetic_and_strategies():
    assert memory.trials_per_chunk(per_trial=10, shared=30, budget=100, trials=20) == 7
    assert memory.trials_per_chunk(per_trial=10, shared=30, budget=10_000, trials=20) == 20
    with pytest.raises(JaxfaultError, match="more than the memory budget"):
        memory.trials_per_chunk(per_trial=80, shared=30, budget=100, trials=20)
    assert memory.bounded_strategy("vmap", 10, 30, 100, 20) == "map:7"
    assert memory.bounded_strategy("vmap", 10, 30, 10_000, 20) == "vmap"
    assert memory.bounded_strategy("map:16", 10, 30, 100, 20) == "map:7"
    assert memory.bounded_strategy("map:4", 10, 30, 100, 20) == "map:4"
    assert memory.bounded_strategy("map", 10, 30, 100, 20) == "map"
    assert memory.default_budget() == int(memory.DEFAULT_FRACTION * memory.device_memory_bytes())
    with pytest.raises(JaxfaultError, match="memory budget must be"):
        memory.check_budget(0)


def test_xla_estimate_grows_with_the_trial_working_set():
    w = jnp.ones((64, 64))

    def one(size):
        return lambda w, key: jnp.sum(jax.random.normal(key, (size, 64)) @ w)

    small, shared = memory.trial_memory(one(16), w, jax.random.key(0))
    big, _ = memory.trial_memory(one(4096), w, jax.random.key(0))
    assert shared >= w.size * 4                       # the weights are an argument, held once
    assert big - small >= (4096 - 16) * 64 * 4 * 0.9  # the (size, 64) float32 temporary, per trial


@pytest.mark.slow
def test_chunked_trials_equal_unchunked_trials():
    model = build_language_model("gpt2", lm_model_config("gpt2", vocab_size=256, layers=1, width=32, heads=2,
                                                         seq_len=16))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    seqs = np.random.default_rng(0).integers(0, 256, size=(2, 17)).astype(np.int32)
    x, y = seqs[:, :-1], seqs[:, 1:]
    fm = jaxfault.sram_bit_errors(bits=8)
    per, shared = memory.evaluation_trial_memory(model, variables, x, y, fm, 1e-2, task=tasks.language_model())
    assert per > 0 and shared > 0
    # a budget for 2 of the 5 trials at once
    strategy = memory.bounded_strategy("vmap", per, shared, shared + 2 * per + per // 2, 5)
    assert strategy == "map:2"
    keys = jax.random.split(jax.random.key(1), 5)
    run = lambda s: jaxfault.evaluate(model, variables, x, y, fm, [1e-2], keys, task=tasks.language_model(),  # noqa: E731
                                      strategy=s).metrics["nll"]
    np.testing.assert_allclose(run(strategy), run("vmap"), rtol=1e-5)   # float32, batched differently
