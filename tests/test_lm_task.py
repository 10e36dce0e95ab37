"""Language models under faults, end to end through the engine: divergence is counted and
perplexity is inf, never NaN; summaries over trials; activation faults by module group."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfault
from jaxfault.core import tasks
from jaxfault.faults.activations import activation_bit_flips
from jaxfault.training.lm import build_language_model, lm_model_config, order_statistic_interval, summarize_trials
from jaxfault.faults.select import group_module_patterns, select_tensors

MODEL = build_language_model("gpt2", lm_model_config("gpt2", vocab_size=256, layers=2, width=32, heads=2, seq_len=16))


def data(n=4):
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 256, size=(n, 17)).astype(np.int32)
    return seqs[:, :-1], seqs[:, 1:]


def variables():
    return MODEL.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))


def test_exponent_faults_until_logits_overflow_are_reported_as_divergence():
    x, y = data()
    # XOR flips in every stored bf16 bit, no ECC: at 2 % of bits every trial has thousands of
    # exponent flips, some to 2^64 and above, and the logits overflow
    fm = jaxfault.hbm_faults(scheme="none", mode="flip")
    keys = jax.random.split(jax.random.key(1), 4)
    res = jaxfault.evaluate(MODEL, variables(), x, y, fm, rates=[0.0, 0.02], keys=keys,
                            task=tasks.language_model(), batch_size=2)
    ppl, div, nf = res.metrics["perplexity"], res.metrics["diverged"], res.metrics["nonfinite_tokens"]
    assert not np.isnan(ppl).any() and not np.isnan(res.metrics["nll"]).any()
    assert (div[0] == 0).all() and (nf[0] == 0).all()
    assert np.allclose(ppl[0], res.clean["perplexity"], rtol=1e-6)        # rate 0: the clean bf16 model
    assert (div[1] == 1).all() and (nf[1] > 0).all() and np.isinf(ppl[1]).all()
    assert ((nf[1] > 0) == (div[1] == 1)).all()
    s = summarize_trials({k: v[1] for k, v in res.metrics.items()})
    assert s["diverged"]["fraction"] == 1.0 and s["perplexity"]["median"] == math.inf
    flat = [v for d in s.values() if isinstance(d, dict) for v in d.values()]
    assert not any(isinstance(v, float) and math.isnan(v) for v in flat)
    clean = summarize_trials({k: v[0] for k, v in res.metrics.items()})
    assert clean["diverged"] == {"fraction": 0.0, "ci95": [0.0, pytest.approx(0.4899, abs=1e-3)]}  # Wilson, 0 of 4


def test_summary_uses_order_statistics_with_a_median_interval():
    ppl = np.array([5.0, 1.0, 4.0, np.inf, 2.0, 3.0])
    s = summarize_trials({"perplexity": ppl, "top1": np.full(6, 0.5), "diverged": np.isinf(ppl).astype(float),
                          "nonfinite_tokens": np.isinf(ppl) * 7.0})
    assert s["perplexity"]["median"] == 3.0 and s["perplexity"]["max"] == math.inf
    assert s["diverged"]["fraction"] == pytest.approx(1 / 6) and s["nonfinite_tokens"]["total"] == 7.0
    # the median interval's coverage, P(lo <= B <= hi - 1) for B ~ Binomial(n, 1/2), is >= 95 %
    for n in (6, 20, 50):
        lo, hi = order_statistic_interval(n)
        cover = sum(math.comb(n, k) for k in range(lo + 1, hi + 1)) / 2 ** n
        assert cover >= 0.95 or (lo, hi) == (0, n - 1)


@pytest.mark.slow
def test_activation_faults_by_module_group():
    x, y = data(2)
    assert group_module_patterns(MODEL, "attention,mlp") == ("h_*/attn", "h_*/mlp")
    fm = select_tensors(activation_bit_flips(rate_bound=1e-2), "attention", model=MODEL)
    assert fm.modules == ("h_*/attn",) and fm.module_types == ()
    keys = jax.random.split(jax.random.key(2), 2)
    res = jaxfault.evaluate(MODEL, variables(), x, y, fm, rates=[0.0, 1e-2], keys=keys,
                            task=tasks.language_model(), batch_size=2)
    acts = res.stats["activation_faults"]
    # 2 blocks x (2 x 16 x 32) float32 attention outputs x 32 bits, each flipped with p = 1e-2
    n_bits = 2 * 2 * 16 * 32 * 32
    assert (acts[0] == 0).all()
    assert (np.abs(acts[1] - 1e-2 * n_bits) < 5 * np.sqrt(n_bits * 1e-2)).all()
    assert not np.isnan(res.metrics["perplexity"]).any()
    with pytest.raises(jaxfault.JaxfaultError, match="no module group 'lm_head'|module patterns"):
        group_module_patterns(object(), "lm_head")


@pytest.mark.slow
def test_every_weight_fault_model_on_a_language_model():
    x, y = data(2)
    keys = jax.random.split(jax.random.key(3), 3)
    for fm, rate in ((jaxfault.hbm_faults(scheme="sparrow"), 1e-3), (jaxfault.hbm_faults(scheme="secded"), 1e-3),
                     (jaxfault.sram_bit_errors(bits=8), 1e-3), (jaxfault.sram_bit_errors(bits=4), 1e-3),
                     (jaxfault.cim_variation(), 0.1)):
        for group in ("attention", "all"):
            res = jaxfault.evaluate(MODEL, variables(), x, y, select_tensors(fm, group, model=MODEL), rates=[rate],
                                    keys=keys, task=tasks.language_model(), batch_size=2)
            assert not np.isnan(res.metrics["perplexity"]).any()
            assert ((res.metrics["nonfinite_tokens"] > 0) == (res.metrics["diverged"] > 0)).all()
