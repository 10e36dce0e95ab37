"""EOPM (SPEC 3.3): the batched step equals the reference's per-model loop; seeds; optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.models.generators import create_generator, init_generator
from jaxfault.neuralfuse.eopm import (EVAL_SEED_BASE, TRAIN_SEED_HIGH, EOPMConfig, eopm_loss_and_grads, eval_seeds,
                                      init_train_state, make_eopm_step, make_optimizer, reference_step_grads,
                                      train_seeds)
from jaxfault.engine import parse_strategy
from tests._nf_tiny import TinyNet


@pytest.fixture(scope="module")
def setup():
    model = TinyNet()
    base = jax.jit(lambda k, x: model.init(k, x))(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    gen = create_generator("UNetS")
    gv = init_generator(gen, jax.random.key(1), (8, 8, 1))
    x = jax.random.uniform(jax.random.key(2), (6, 8, 8, 1), minval=-1.0, maxval=1.0)
    y = jnp.arange(6) % 10
    return model, base, gen, gv, x, y


@pytest.mark.parametrize("strategy", ["map", pytest.param("vmap", marks=pytest.mark.slow)])
def test_batched_loss_and_grads_equal_per_model_loop(setup, strategy):
    model, base, gen, gv, x, y = setup
    cfg = EOPMConfig(ber=0.05, n_models=4, lam=5.0, strategy=strategy)
    seeds = jnp.array([3, 17, 29999, 123])
    (loss, aux), grads = eopm_loss_and_grads(gen, model, cfg)(gv["params"], gv["batch_stats"], base, x, y, seeds)
    (rloss, raux), rgrads = reference_step_grads(gen, model, cfg)(gv["params"], gv["batch_stats"], base, x, y, seeds)
    np.testing.assert_allclose(float(loss), float(rloss), rtol=1e-5)
    np.testing.assert_allclose(float(aux["perturbed_acc"]), float(raux["perturbed_acc"]), atol=1e-6)
    gl, rl = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(rgrads)
    scale = max(float(jnp.max(jnp.abs(g))) for g in gl)
    assert scale > 0
    for g, r in zip(gl, rl):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5 * scale, rtol=1e-4)
    # perturbation matters: the perturbed loss differs from the clean one
    assert abs(float(aux["perturbed_ce"]) - float(aux["clean_ce"])) > 1e-4


def test_step_trains_generator_only_and_is_deterministic(setup):
    model, base, gen, gv, x, y = setup
    cfg = EOPMConfig(ber=0.05, n_models=3, lam=1.0, strategy="map")
    opt = make_optimizer(1e-2, decay_steps=1)
    step = make_eopm_step(gen, model, cfg, opt)
    state = init_train_state(gv, opt)
    s1, m1 = step(state, base, x, y, jax.random.key(5))
    s1b, m1b = step(state, base, x, y, jax.random.key(5))
    assert float(m1["loss"]) == float(m1b["loss"])
    assert int(s1["step"]) == 1
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree_util.tree_leaves(s1["params"]), jax.tree_util.tree_leaves(gv["params"]))]
    assert all(changed)
    # step decay: lr 1e-2 then 5e-3 (decay_steps=1, rate 0.5)
    assert np.isclose(float(opt.init(gv["params"])[-1].count), 0)


def test_seeds_training_and_evaluation_disjoint():
    s = np.asarray(train_seeds(jax.random.key(0), 10000))
    assert s.min() >= 0 and s.max() < TRAIN_SEED_HIGH
    e = np.asarray(eval_seeds(10))
    np.testing.assert_array_equal(e, np.arange(EVAL_SEED_BASE, EVAL_SEED_BASE + 10))
    assert TRAIN_SEED_HIGH <= EVAL_SEED_BASE


def test_bad_config():
    with pytest.raises(JaxfaultError, match="ber"):
        EOPMConfig(ber=1.2).validate()
    with pytest.raises(JaxfaultError, match="precision"):
        EOPMConfig(bits=5).validate()
    with pytest.raises(JaxfaultError, match="n_models"):
        EOPMConfig(n_models=0).validate()
    with pytest.raises(JaxfaultError, match="strategy"):
        parse_strategy("map:x")
    assert parse_strategy("map:4") == ("map", 4)
