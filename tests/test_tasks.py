"""Tasks (classification, language_model) and activation fault sites in the engine."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfault
from jaxfault import engine
from jaxfault.core import tasks
from jaxfault.faults.activations import activation_bit_flips
from jaxfault.core.errors import JaxfaultError
from tests._fast_init import random_variables


class TinyLM(nn.Module):
    vocab: int = 11

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, 8, name="embed")(tokens)
        h = nn.relu(nn.Dense(8, name="mlp")(h))
        return nn.Dense(self.vocab, name="lm_head")(h)


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(16, name="Dense_0")(x))
        return nn.Dense(4, name="Dense_1")(x)


@pytest.fixture(scope="module")
def lm():
    model = TinyLM()
    tokens = jax.random.randint(jax.random.key(1), (5, 7), 0, 11)
    variables = model.init(jax.random.key(0), tokens)
    targets = jnp.roll(tokens, -1, axis=1).at[:, -1].set(-1)
    return model, variables, tokens, targets


@pytest.fixture(scope="module")
def mlp():
    model = TinyMLP()
    x = jax.random.normal(jax.random.key(2), (24, 3, 3, 1))
    y = jax.random.randint(jax.random.key(3), (24,), 0, 4)
    return model, random_variables(model, 0, x), x, y


def _lm_reference(logits, targets):
    """numpy: per-token cross-entropy (inf where logits are non-finite) over scored tokens."""
    logits = np.asarray(logits, np.float64)
    t = np.asarray(targets)
    valid = t >= 0
    finite = np.isfinite(logits).all(-1)
    m = np.where(finite[..., None], logits, 0).max(-1, keepdims=True)
    z = np.where(finite[..., None], logits, 0) - m
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(valid, t, 0)[..., None], -1)[..., 0]
    nll = np.where(finite, nll, np.inf)[valid]
    hit = ((np.argmax(np.where(finite[..., None], logits, 0), -1) == t) & finite)[valid]
    return nll.mean(), hit.mean(), int((~finite & valid).sum())


def test_language_model_metrics_match_numpy_and_batching(lm):
    model, variables, tokens, targets = lm
    logits = model.apply(variables, tokens)
    nll, top1, _ = _lm_reference(logits, targets)
    for bs in (5, 2):   # one batch, and padded batches
        m = jax.jit(tasks.batched_metric_fn(model, tasks.language_model(), batch_size=bs))(variables, tokens, targets)[0]
        np.testing.assert_allclose(float(m["nll"]), nll, rtol=1e-5)          # float32 log-softmax
        np.testing.assert_allclose(float(m["perplexity"]), np.exp(nll), rtol=1e-5)
        assert float(m["top1"]) == pytest.approx(top1, abs=1e-7)
        assert float(m["diverged"]) == 0.0 and float(m["nonfinite_tokens"]) == 0.0


def test_nonfinite_logits_give_inf_perplexity_never_nan(lm):
    model, variables, tokens, targets = lm
    # an exponent fault: one LM-head weight column becomes huge, so that token's logit overflows
    # to inf wherever the hidden units' weighted sum exceeds ~1.1 (not everywhere)
    bad = jax.tree_util.tree_map(lambda x: x, variables)
    k = bad["params"]["lm_head"]["kernel"]
    bad["params"]["lm_head"]["kernel"] = k.at[:, 2].set(jnp.float32(3e38))
    logits = model.apply(bad, tokens)
    assert not np.isfinite(np.asarray(logits)).all()
    _, _, n_bad = _lm_reference(logits, targets)
    m = jax.jit(tasks.batched_metric_fn(model, tasks.language_model(), batch_size=2))(bad, tokens, targets)[0]
    assert np.isinf(float(m["perplexity"])) and np.isinf(float(m["nll"]))
    assert float(m["nonfinite_tokens"]) == n_bad > 0 and float(m["diverged"]) == 1.0
    assert not any(np.isnan(float(v)) for v in m.values())


def test_language_model_through_engine_with_bitflips_counts_divergence(lm):
    model, variables, tokens, targets = lm
    fm = jaxfault.build_fault_model("bitflip")
    res = jaxfault.evaluate(model, variables, tokens, targets, fm, rates=[0.0, 0.05],
                            keys=jax.random.split(jax.random.key(0), 6), task=tasks.language_model())
    assert res.task == "language_model" and res.metrics["perplexity"].shape == (2, 6)
    assert not np.isnan(res.metrics["perplexity"]).any()
    assert np.allclose(res.metrics["perplexity"][0], res.clean["perplexity"])      # rate 0: the clean model
    # at 5 % BER exponent bits flip: some trials' logits overflow (diverged, perplexity inf); a trial
    # with huge but finite logits can also have a loss whose exp overflows: inf too, not diverged
    div = res.metrics["diverged"][1]
    assert div.sum() >= 1
    assert np.all(np.isinf(res.metrics["perplexity"][1][div == 1.0]))
    assert np.all(res.metrics["nonfinite_tokens"][1][div == 0.0] == 0)


def test_task_checks_data_once_at_the_boundary(lm, mlp):
    model, variables, tokens, targets = lm
    fm = jaxfault.build_fault_model("bitflip")
    with pytest.raises(JaxfaultError, match="token ids"):
        jaxfault.evaluate(model, variables, tokens.astype(jnp.float32), targets, fm, [0.0],
                          jax.random.split(jax.random.key(0), 2), task=tasks.language_model())
    with pytest.raises(JaxfaultError, match="classification needs"):
        jaxfault.evaluate(mlp[0], mlp[1], mlp[2], mlp[3][:5], fm, [0.0], jax.random.split(jax.random.key(0), 2))
    with pytest.raises(JaxfaultError, match="unknown task 'langauge_model'.*language_model"):
        tasks.get_task("langauge_model")


def _act_eval(mlp, fm, rates, keys, strategy="map"):
    model, variables, x, y = mlp
    return jaxfault.evaluate(model, variables, x, y, fm, rates, keys, strategy=strategy, batch_size=8)


def test_activation_faults_rate_zero_is_clean_and_same_key_same_result(mlp):
    fm = activation_bit_flips(rate_bound=0.05)
    keys = jax.random.split(jax.random.key(4), 5)
    a = _act_eval(mlp, fm, [0.0, 0.02], keys)
    b = _act_eval(mlp, fm, [0.0, 0.02], keys)
    assert np.array_equal(a.metrics["top1"], b.metrics["top1"])
    assert np.array_equal(a.stats["activation_faults"], b.stats["activation_faults"])
    assert np.all(a.stats["activation_faults"][0] == 0) and np.all(a.metrics["top1"][0] == a.clean["top1"])
    assert np.all(a.stats["activation_faults"][1] > 0)


def test_activation_faults_vmap_map_loop_agree(mlp):
    fm = activation_bit_flips(rate_bound=0.05)
    keys = jax.random.split(jax.random.key(5), 4)
    runs = [_act_eval(mlp, fm, [0.01, 0.03], keys, strategy=s) for s in ("vmap", "map", "loop")]
    for r in runs[1:]:
        assert np.array_equal(r.metrics["top1"], runs[0].metrics["top1"])
        assert np.array_equal(r.stats["activation_faults"], runs[0].stats["activation_faults"])


def test_activation_fault_count_follows_the_rate(mlp):
    """Flips in Dense_0's float32 outputs only: 24 inputs x 16 units x 32 bits = 12288 bits per
    trial; at rate 0.01 the count is Binomial(12288, 0.01), mean 122.9, sd 11.0. The mean over
    40 trials has sd 1.75: it must lie within 5 sd (8.8) of 122.9."""
    fm = activation_bit_flips(modules=("Dense_0",), rate_bound=0.02)
    res = _act_eval(mlp, fm, [0.01], jax.random.split(jax.random.key(6), 40))
    n = res.stats["activation_faults"][0]
    assert abs(n.mean() - 122.88) < 5 * np.sqrt(12288 * 0.01 * 0.99 / 40)


def test_activation_sites_select_modules_and_compose_with_stored_faults(mlp):
    model, variables, x, y = mlp
    only_head = activation_bit_flips(modules=("Dense_1",), rate_bound=0.05)
    res = _act_eval(mlp, only_head, [0.02], jax.random.split(jax.random.key(7), 8))
    # Dense_1 has 24 x 4 x 32 = 3072 output bits per trial: the counts are about 61, not 12288 + ...
    assert res.stats["activation_faults"].mean() < 120
    none = activation_bit_flips(modules=("no_such_layer",))
    res0 = _act_eval(mlp, none, [0.02], jax.random.split(jax.random.key(7), 3))
    assert np.all(res0.stats["activation_faults"] == 0) and np.all(res0.metrics["top1"] == res0.clean["top1"])
    both = jaxfault.compose(jaxfault.build_fault_model("bitflip"), only_head)
    res2 = jaxfault.evaluate(model, variables, x, y, both, [[1e-3, 0.02]], jax.random.split(jax.random.key(8), 3),
                             batch_size=8)
    assert res2.stats["stage0.n_faults"].shape == (1, 3) and np.all(res2.stats["activation_faults"] > 0)
