"""The evaluation engine: strategies agree, rates are traced (one program), keys, composition."""
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import engine
from jaxfault.core import batching, protocol, tasks
from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.fault_models import compose
from jaxfault.core.protocol import FaultModel
from jaxfault.core.precision import check_precision
from tests._fast_init import random_variables


@dataclasses.dataclass(frozen=True)
class Noise(FaultModel):
    """Test fault model: Gaussian noise of std `rate` on every parameter leaf."""

    scale: float = 1.0
    rate_name: ClassVar[str] = "std"

    def perturb(self, key, variables, rate):
        leaves, tree = jax.tree_util.tree_flatten(variables["params"])
        keys = jax.random.split(key, len(leaves))
        noisy = [w + self.scale * rate * jax.random.normal(k, w.shape, w.dtype) for k, w in zip(keys, leaves)]
        return {**variables, "params": jax.tree_util.tree_unflatten(tree, noisy)}, {"realised_ber": jnp.asarray(rate, jnp.float32)}


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))


@pytest.fixture(scope="module")
def setup():
    model = Tiny()
    x = jax.random.normal(jax.random.key(0), (256, 8))
    variables = random_variables(model, 1, x)
    labels = jnp.argmax(model.apply(variables, x), -1)
    return model, variables, x, labels


def test_strategies_agree_and_shapes(setup):
    model, variables, x, labels = setup
    keys = jax.random.split(jax.random.key(3), 5)
    rates = [0.0, 0.05, 0.2]
    ref = engine.evaluate(model, variables, x, labels, Noise(), rates, keys, strategy="loop")
    assert ref.accuracy.shape == (3, 5) and ref.stats["realised_ber"].shape == (3, 5)
    np.testing.assert_array_equal(ref.accuracy[0], 1.0)        # rate 0 = the clean model
    assert ref.clean["top1"] == 1.0
    assert ref.accuracy[2].mean() < ref.accuracy[1].mean() < 1.0  # more noise, lower accuracy
    for strategy in ("map", "vmap"):
        got = engine.evaluate(model, variables, x, labels, Noise(), rates, keys, strategy=strategy)
        np.testing.assert_array_equal(got.accuracy, ref.accuracy, err_msg=strategy)


def test_same_key_same_result_and_keys_matter(setup):
    model, variables, x, labels = setup
    keys = jax.random.split(jax.random.key(3), 4)
    a = engine.evaluate(model, variables, x, labels, Noise(), [0.2], keys)
    b = engine.evaluate(model, variables, x, labels, Noise(), [0.2], keys)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    c = engine.evaluate(model, variables, x, labels, Noise(), [0.2], jax.random.split(jax.random.key(4), 4))
    assert not np.array_equal(a.accuracy, c.accuracy)
    # (R, T) keys: row r uses its own keys
    k2 = jnp.stack([keys, jax.random.split(jax.random.key(4), 4)])
    d = engine.evaluate(model, variables, x, labels, Noise(), [0.2, 0.2], k2)
    np.testing.assert_array_equal(d.accuracy[0], a.accuracy[0])
    np.testing.assert_array_equal(d.accuracy[1], c.accuracy[0])


def test_rates_are_traced_one_program(setup):
    model, variables, x, labels = setup
    fm = Noise().with_rate_bound(1.0)
    prog = engine.make_trial_program(tasks.make_metric_fn(model, 256), fm, strategy="map")
    keys = jax.random.split(jax.random.key(0), 3)
    for rates in ([0.01, 0.1, 0.2], [0.3, 0.4, 0.5], [0.0, 0.0, 1.0]):
        engine.evaluate(model, variables, x, labels, fm, rates, keys, program=prog)
    assert prog.compiled_programs() == 1


def test_bad_arguments():
    with pytest.raises(JaxfaultError, match="unknown batching strategy 'vamp'.*did you mean 'vmap'"):
        batching.resolve_strategy("vamp")
    with pytest.raises(JaxfaultError, match="unknown precision"):
        check_precision("float64")
    assert batching.resolve_strategy("auto", backend="cpu") == "map"
    assert batching.resolve_strategy("auto", backend="gpu") == "vmap"


def test_summary_policy():
    s = engine.summarize([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))  # ddof 0
    assert s["min"] == 0.5 and s["max"] == 0.9
    # figures named as accuracies get the bounded (betting) interval, others Student-t
    assert engine.summarize([0.5, 0.7, 0.9], "top1")["method"] == "betting"
    assert s["method"] == "student-t" and s["ci_lo"] < 0.7 < s["ci_hi"] and s["n"] == 3
    one = engine.summarize([0.3], "top1")
    assert one["ci_lo"] <= 0.3 <= one["ci_hi"] and one["half_width"] > 0


def test_composition_equals_stages_in_sequence(setup):
    _, variables, _, _ = setup
    f1, f2 = Noise(scale=1.0), Noise(scale=2.0)
    both = compose(f1, f2)
    key = jax.random.key(11)
    got, stats = both.perturb(key, variables, jnp.array([0.1, 0.3]))
    v1, _ = f1.perturb(jax.random.fold_in(key, 0), variables, 0.1)
    v2, _ = f2.perturb(jax.random.fold_in(key, 1), v1, 0.3)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(v2)):
        np.testing.assert_array_equal(a, b)
    assert set(protocol.stats_dict(stats)) == {"stage0.realised_ber", "stage1.realised_ber"}


def test_composition_stage_keys_are_independent(setup):
    """The two stages' noise draws are uncorrelated: over 400 trials the sample correlation of the
    two stages' noise on one weight is within 4 standard errors (1/sqrt(400) = 0.05) of 0."""
    _, variables, _, _ = setup
    zero = jax.tree_util.tree_map(jnp.zeros_like, variables)
    one_stage = Noise()

    def draws(key):
        v1, _ = one_stage.perturb(jax.random.fold_in(key, 0), zero, 1.0)
        v2, _ = one_stage.perturb(jax.random.fold_in(key, 1), zero, 1.0)
        a = jax.tree_util.tree_leaves(v1["params"])[1].ravel()[:3]
        b = jax.tree_util.tree_leaves(v2["params"])[1].ravel()[:3]
        return a, b

    a, b = jax.vmap(draws)(jax.random.split(jax.random.key(5), 400))
    for j in range(3):
        r = np.corrcoef(np.asarray(a[:, j]), np.asarray(b[:, j]))[0, 1]
        assert abs(r) < 4 * 0.05, r
    # and the composition really uses those two keys: stage outputs differ
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_qat_evaluation_form_fake_quantizes_kernels():
    from jaxfault.models import create_model, init_variables
    from jaxfault.core.quant import fake_quant

    model = create_model("lenet", 10, quant_bits=8)
    v = init_variables(model, jax.random.key(0), (28, 28, 1))
    m2, v2 = engine.evaluation_form(model, v)
    assert m2.quant_bits is None
    path_leaves = jax.tree_util.tree_leaves_with_path(v2["params"])
    # every kernel is on the 8-bit grid: fake_quant is idempotent on it
    from jaxfault.core.pytree import is_kernel
    for p, w in path_leaves:
        if is_kernel(p, w):
            np.testing.assert_array_equal(np.asarray(fake_quant(w, 8)), np.asarray(w))
    # and the faulty-free evaluation of the prepared model equals the QAT model's own output
    x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
    np.testing.assert_allclose(np.asarray(m2.apply(v2, x)), np.asarray(model.apply(v, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_rates,n_trials", [(2, 4), (3, 2), (2, 2)])
def test_composed_rate_grid_with_shared_keys(setup, n_rates, n_trials):
    """rates (R, S) with keys (T,): every rate row sees the same T trials, whatever R, S and T
    (regression: the keys were broadcast to R*S rows, so R*S != R failed inside lax.map)."""
    model, variables, x, y = setup
    fm = compose(Noise(scale=1.0), Noise(scale=2.0))
    rates = [[0.01 * (i + 1), 0.02] for i in range(n_rates)]
    keys = jax.random.split(jax.random.key(3), n_trials)
    res = engine.evaluate(model, variables, x, y, fm, rates, keys, strategy="map")
    assert res.accuracy.shape == (n_rates, n_trials)
    one = engine.evaluate(model, variables, x, y, fm, rates[-1:], keys, strategy="map")
    np.testing.assert_allclose(res.accuracy[-1], one.accuracy[0], atol=1.5 / len(y))
