"""EOPM: the batched step equals the reference's per-model loop (loss, gradients, batch-norm running
statistics); typed per-seed keys; seeds; optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.generators import create_generator
from jaxfault.core.keys import stream
from jaxfault.models.generators import BN_MOMENTUM
from jaxfault.neuralfuse.eopm import (EVAL_SEED_BASE, PERTURBED_MODELS_ROOT, TRAIN_SEED_HIGH, EOPMConfig,
                                      eopm_loss_and_grads, eval_seeds, init_train_state, make_eopm_step,
                                      make_optimizer, perturbed_model_key, reference_step_grads,
                                      seeds_to_keys, train_seeds)
from jaxfault.neuralfuse.faults import perturb_variables
from jaxfault.core.batching import parse_strategy
from tests._fast_init import random_variables
from tests._nf_tiny import TinyNet


@pytest.fixture(scope="module")
def setup():
    model = TinyNet()
    base = random_variables(model, 0, jnp.zeros((1, 8, 8, 1)))   # compiling the inits took most of this file's time
    gen = create_generator("UNetS")
    gv = random_variables(gen, 1, jnp.zeros((1, 8, 8, 1)), train=False)
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
    # running statistics: N sequential train-mode updates in the loop, the N-fold update in one step
    for a, b in zip(jax.tree_util.tree_leaves(aux["batch_stats"]), jax.tree_util.tree_leaves(raux["batch_stats"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [pytest.param(None, marks=pytest.mark.slow), "flax"])
def test_perturbed_models_of_a_step_use_the_configured_weight_order(setup, layout):
    """The step's perturbed model of seed s is perturb_variables(base, key(s), ..., layout=cfg.layout):
    the memory-array faults land on the weights of that order (layout None: PyTorch's)."""
    import functools

    import optax

    from jaxfault.neuralfuse.eopm import make_loss_fns

    model, base, gen, gv, x, y = setup
    cfg = EOPMConfig(ber=0.05, n_models=1, lam=1.0, strategy="map", placement="memory_array", layout=layout)
    eopm_loss = jax.jit(make_loss_fns(gen, model, cfg)[0])   # the step's loss, without its gradient
    _, aux = eopm_loss(gv["params"], gv["batch_stats"], base, x, y, jnp.array([11]))
    xg = gen.apply(gv, x, train=True, mutable=["batch_stats"])[0]

    @functools.partial(jax.jit, static_argnums=0)
    def perturbed_ce(order):
        pv = perturb_variables(base, perturbed_model_key(11), 0.05, 0.5, 8, "memory_array", layout=order)
        logits = model.clone(quant_bits=None).apply(pv, xg, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def ce(order):
        return float(perturbed_ce(order))

    order = layout or "torch"
    other = "flax" if order == "torch" else "torch"
    np.testing.assert_allclose(float(aux["perturbed_ce"]), ce(order), rtol=1e-5)
    assert abs(ce(order) - ce(other)) > 1e-4      # the two orders give other perturbed models
    with pytest.raises(JaxfaultError, match="layout"):
        EOPMConfig(layout="tf").validate()


def _batch_moments(gen, gv, x):
    """(running stats after one train-mode call, the batch statistics s it moved towards)."""
    _, upd = gen.apply(gv, x, train=True, mutable=["batch_stats"])
    m = BN_MOMENTUM
    s = jax.tree_util.tree_map(lambda new, old: (new - m * old) / (1 - m), upd["batch_stats"], gv["batch_stats"])
    return upd["batch_stats"], s


@pytest.mark.parametrize("update", ["reference", pytest.param("once", marks=pytest.mark.slow)])
def test_batch_stats_update_reference_and_once(setup, update):
    """reference: r_N = m^N r + (1 - m^N) s (the reference's N generator calls per batch);
    once: r_1 = m r + (1 - m) s (jaxfault's earlier single update)."""
    model, base, gen, gv, x, y = setup
    n = 4
    cfg = EOPMConfig(ber=0.05, n_models=n, lam=5.0, strategy="map", batch_stats_update=update)
    seeds = jnp.array([3, 17, 29999, 123])
    (_, aux), _ = eopm_loss_and_grads(gen, model, cfg)(gv["params"], gv["batch_stats"], base, x, y, seeds)
    one, s = _batch_moments(gen, gv, x)
    k = n if update == "reference" else 1
    want = jax.tree_util.tree_map(lambda r, s: BN_MOMENTUM ** k * r + (1 - BN_MOMENTUM ** k) * s, gv["batch_stats"], s)
    moved = 0.0
    for got, w, r in zip(*(jax.tree_util.tree_leaves(t) for t in (aux["batch_stats"], want, gv["batch_stats"]))):
        # s is recovered from a float32 update, (new - m old) / (1 - m): ~10 ulp of the statistics
        np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-4, atol=1e-5)
        moved = max(moved, float(jnp.max(jnp.abs(got - r))))
    assert moved > 1e-2  # the statistics do move
    if update == "once":
        for got, w in zip(jax.tree_util.tree_leaves(aux["batch_stats"]), jax.tree_util.tree_leaves(one)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-6, atol=1e-7)


def test_perturbed_model_keys_are_typed_fold_ins_of_one_root(setup):
    """Seed s -> fold_in(stream(key(0), "neuralfuse/perturbed_models"), s), the same key whether
    derived alone or batched; one key, one perturbed model; different seeds, different models."""
    _, base, *_ = setup
    assert jnp.issubdtype(PERTURBED_MODELS_ROOT.dtype, jax.dtypes.prng_key)
    want = jax.random.fold_in(stream(jax.random.key(0), "neuralfuse/perturbed_models"), 50003)
    assert np.array_equal(jax.random.key_data(perturbed_model_key(50003)), jax.random.key_data(want))
    batched = seeds_to_keys(jnp.array([7, 50003]))
    assert np.array_equal(jax.random.key_data(batched[1]), jax.random.key_data(want))
    a = perturb_variables(base, perturbed_model_key(7), 0.05)
    b = perturb_variables(base, batched[0], 0.05)
    c = perturb_variables(base, perturbed_model_key(8), 0.05)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert any(not np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)))


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
    # every parameter moves except those of the innermost level: on 8x8 images down3's output is
    # 1x1, and up1's 2x2 stride-2 transposed conv with padding 1 turns it into an empty map (then
    # zero-padded to 2x2), so down3 and up1_deconv never reach the output
    flat_new = dict(jax.tree_util.tree_flatten_with_path(s1["params"])[0])
    for path, old in jax.tree_util.tree_flatten_with_path(gv["params"])[0]:
        name = jax.tree_util.keystr(path)
        same = np.array_equal(np.asarray(flat_new[path]), np.asarray(old))
        assert same == ("up1_deconv" in name or "down3_" in name), name
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
    with pytest.raises(JaxfaultError, match="batch_stats_update"):
        EOPMConfig(batch_stats_update="twice").validate()
    with pytest.raises(JaxfaultError, match="strategy"):
        parse_strategy("map:x")
    assert parse_strategy("map:4") == ("map", 4)


def test_any_registered_fault_model_trains_a_generator(setup):
    """EOPM through the fault-model protocol: with cfg.fault_model, the perturbed model of seed s
    is that fault model's perturb(key(s), prepare(evaluation form of the base), ber), as the
    engine draws it; the batched step equals the per-model loop; an activation fault is refused."""
    import optax

    from jaxfault.engine import evaluation_form
    from jaxfault.faults.fault_models import build_fault_model
    from jaxfault.neuralfuse.eopm import base_variables, make_loss_fns

    model, raw, gen, gv, x, y = setup
    fm = build_fault_model("hbm", scheme="sparrow", mode="flip")     # bf16 words in HBM, exponents protected
    cfg = EOPMConfig(ber=0.02, n_models=3, lam=2.0, strategy="map", fault_model=fm)
    base = base_variables(model, cfg, raw)
    seeds = jnp.array([5, 8, 13])
    (loss, aux), grads = eopm_loss_and_grads(gen, model, cfg)(gv["params"], gv["batch_stats"], base, x, y, seeds)
    (rloss, raux), rgrads = reference_step_grads(gen, model, cfg)(gv["params"], gv["batch_stats"], base, x, y, seeds)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(rloss), rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads))
    assert scale > 0
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(rgrads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5 * scale, rtol=1e-4)

    _, aux1 = jax.jit(make_loss_fns(gen, model, EOPMConfig(ber=0.02, n_models=1, lam=1.0, strategy="map",
                                                          fault_model=fm))[0])(
        gv["params"], gv["batch_stats"], base, x, y, jnp.array([8]))
    xg = gen.apply(gv, x, train=True, mutable=["batch_stats"])[0]
    sized = fm.with_rate_bound(0.02)
    pv = sized.perturb(perturbed_model_key(8), sized.prepare(evaluation_form(model, raw)[1]), jnp.float32(0.02))[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(model.clone(quant_bits=None).apply(pv, xg, train=False), y).mean()
    assert np.isfinite(float(ce))
    np.testing.assert_allclose(float(aux1["perturbed_ce"]), float(ce), rtol=1e-5)
    _, sram = jax.jit(make_loss_fns(gen, model, EOPMConfig(ber=0.02, n_models=1, lam=1.0, strategy="map"))[0])(
        gv["params"], gv["batch_stats"], raw, x, y, jnp.array([8]))
    assert float(aux1["clean_ce"]) == float(sram["clean_ce"])      # the clean model runs its own weights
    assert abs(float(sram["perturbed_ce"]) - float(ce)) > 1e-4      # not NeuralFuse's SRAM faults
    with pytest.raises(JaxfaultError, match="activation fault model has no weights"):
        EOPMConfig(fault_model=build_fault_model("activation")).validate()
    with pytest.raises(JaxfaultError, match="fault_model must be a FaultModel"):
        EOPMConfig(fault_model="hbm").validate()
