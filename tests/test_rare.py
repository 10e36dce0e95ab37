"""Rare faults: the conditional sampler's law, the stratified estimator's exactness, unbiasedness,
agreement with plain Monte Carlo, and same key same result.

Tolerances. Counts are Binomial or multinomial: single counts allow 5 standard deviations and
goodness-of-fit tests reject at a chi-square p-value below 1e-6, so with the fixed seeds each
check is deterministic and a correct sampler fails it with probability < 1e-6. Estimates are
checked against their own 99.9 % intervals (or, for a mean of R independent estimates, 5
standard errors). The deterministic-strata check is exact up to the tail bound (1e-9) plus
float64 rounding (1e-12).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxfault import engine
from jaxfault.experiment import rare
from jaxfault.ecc.hbm import HBMFaults
from jaxfault.core.errors import JaxfaultError
from jaxfault.ecc import conditional as fc
from jaxfault.faults import words as fw
from tests._fast_init import random_variables

MASK16 = 0xFFFF0000


def popcount_rows(a):
    a = np.asarray(a, np.uint32)
    return np.unpackbits(a.view(np.uint8).reshape(a.shape[0], -1), axis=1).sum(1)


def bit_counts(a):
    """(32,) count of set bits at each bit number over all words."""
    a = np.asarray(a, np.uint32).ravel()
    return np.array([int(np.sum((a >> b) & 1)) for b in range(32)])


def within(count, n, p, sds=5.0):
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sds * sd + 1e-9, (count, n * p, sd)


def test_uniform_subset_is_uniform():
    n, k, draws = 9, 3, 4000
    f = jax.jit(jax.vmap(lambda key: fc.uniform_subset(key, n, k, 5)))
    sub = np.asarray(f(jax.random.split(jax.random.key(0), draws)))
    assert np.all(sub[:, k:] == n)                                  # unused slots hold n
    chosen = np.sort(sub[:, :k], axis=1)
    assert np.all(np.diff(chosen, axis=1) > 0) and chosen.max() < n   # k distinct cells
    codes = (chosen * np.array([n * n, n, 1])).sum(1)
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == math.comb(n, k)                          # every subset occurs
    p = stats.chisquare(counts).pvalue                            # ... equally often
    assert p > 1e-6, p


def test_conditioned_maps_any_direction_law():
    n_words, k, q, draws = 40, 4, 0.3, 400
    f = jax.jit(jax.vmap(lambda key: fc.conditioned_maps(key, n_words, MASK16, None, "any", k, 1e-3, q,
                                                         k_bound=6, rate_bound=1e-3)[:2]))
    m10, m01 = (np.asarray(m) for m in f(jax.random.split(jax.random.key(1), draws)))
    assert not np.any((m10 | m01) & ~np.uint32(MASK16)) and not np.any(m10 & m01)
    assert np.all(popcount_rows(m10 | m01) == k)                   # exactly k faults, every draw
    per_bit = bit_counts(m10 | m01)[16:]                           # uniform over the 16 roles
    assert stats.chisquare(per_bit).pvalue > 1e-6, per_bit
    per_word = (m10 | m01) != 0
    assert stats.chisquare(per_word.sum(0)).pvalue > 1e-6          # uniform over the words
    ok, info = within(int(popcount_rows(m01).sum()), draws * k, q)  # 0->1 share q
    assert ok, info


def test_conditioned_maps_one_direction_class_law():
    n_words, k, p, q, draws = 100, 2, 0.05, 0.3, 60
    f = jax.jit(jax.vmap(lambda key: fc.conditioned_maps(key, n_words, MASK16, (30,), "0->1", k, p, q,
                                                         k_bound=4, rate_bound=p)[:2]))
    m10, m01 = (np.asarray(m) for m in f(jax.random.split(jax.random.key(2), draws)))
    b30 = np.uint32(1 << 30)
    assert np.all(popcount_rows(m01 & b30) == k)                   # the class count is exact
    # the class cells' other direction: 1->0 with p (1 - q) / (1 - p q) on the cells left
    ok, info = within(int(popcount_rows(m10 & b30).sum()), draws * (n_words - k), p * (1 - q) / (1 - p * q))
    assert ok, info
    # the other 15 positions: the unconditional law (p, q)
    rest = np.uint32(MASK16) & ~b30
    cells = draws * n_words * 15
    for m, rate in ((m01, p * q), (m10, p * (1 - q))):
        ok, info = within(int(popcount_rows(m & rest).sum()), cells, rate)
        assert ok, info


def test_binomial_strata_and_tail():
    w, tail = rare.strata_for(1000, 1e-3, 1e-6)
    assert tail <= 1e-6 and rare.binomial_tail(1000, 1e-3, len(w) - 2) > 1e-6   # the smallest k_max
    assert abs(w.sum() + tail - 1.0) < 1e-12
    exact = [math.comb(1000, k) * 1e-3 ** k * (1 - 1e-3) ** (1000 - k) for k in range(len(w))]
    np.testing.assert_allclose(w, exact, rtol=1e-10)
    np.testing.assert_allclose(w[:4], stats.poisson.pmf(np.arange(4), 1.0), rtol=2e-3)   # near Poisson(1)
    with pytest.raises(JaxfaultError, match="use plain Monte Carlo"):
        rare.strata_for(10**6, 1e-3, 1e-6)
    assert rare.choose_estimator("auto", 0.5) == "stratified" and rare.choose_estimator("auto", 50.0) == "plain"
    assert rare.choose_estimator("plain", 0.01) == "plain"
    with pytest.raises(JaxfaultError, match="unknown estimator"):
        rare.choose_estimator("fast", 1.0)


def test_stratified_is_exact_when_strata_are_deterministic():
    # E[metric | K = k] = 1 - 2^-k exactly, so the estimate is sum_k P(k) (1 - 2^-k), and the full
    # sum is 1 - E[2^-K] = 1 - (1 - p / 2)^n (the binomial generating function).
    n, p = 5000, 4e-4
    w, tail = rare.strata_for(n, p, 1e-9)

    def sample(ks, keys):
        return 1.0 - 0.5 ** np.asarray(ks, np.float64)

    est = rare.stratified(sample, w, tail, jax.random.key(0), complete=False, trials=8, pilot=2)
    exact = 1.0 - (1.0 - p / 2) ** n
    assert est.se == 0.0
    assert abs(est.mean - exact) <= tail + 1e-12, (est.mean, exact)
    assert est.lo - 1e-12 <= exact <= est.hi + 1e-12


# A synthetic fault model with an analytic answer: N cells, K ~ Binomial(N, p), metric = the
# faults that land in the first half of the cells, divided by CAP (so in [0, 1] below CAP faults).
# Given K = k that count is Hypergeometric(N, N / 2, k): E[metric | k] = k / (2 CAP), and
# E[metric] = N p / (2 CAP).
N_CELLS, P_CELL, CAP = 300, 0.006, 16


@jax.jit
def _half_hits(ks, keys):
    f = jax.vmap(lambda k, key: jnp.sum(fc.uniform_subset(key, N_CELLS, k, CAP) < N_CELLS // 2) / CAP)
    return f(ks, keys)


def _hit_sample(ks, keys):
    n = len(ks)
    pad = -n % 64                        # one compiled shape per 64 trials
    ks = jnp.asarray(np.concatenate([ks, np.zeros(pad, np.int64)]), jnp.int32)
    keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad)]) if pad else keys
    return np.asarray(_half_hits(ks, keys), np.float64)[:n]


def hit_estimate(key, trials=48, half_width=None):
    w, tail = rare.strata_for(N_CELLS, P_CELL, 1e-7)
    return rare.stratified(_hit_sample, w, tail, key, complete=True, trials=trials, pilot=4, level=0.999,
                           half_width=half_width)


def test_stratified_unbiased_and_agrees_with_plain_monte_carlo():
    exact = N_CELLS * P_CELL / (2 * CAP)
    ests = [hit_estimate(jax.random.key(10 + r)) for r in range(12)]
    means = np.array([e.mean for e in ests])
    # each 99.9 % interval covers the exact value (at most 1 miss in 12 allowed, P(> 1) < 1e-4)
    assert sum(not (e.lo <= exact <= e.hi) for e in ests) <= 1
    # unbiased: the mean of 12 independent estimates within 5 standard errors of the exact value
    assert abs(means.mean() - exact) <= 5 * means.std(ddof=1) / math.sqrt(len(means)), (means.mean(), exact)
    e0 = ests[0]
    assert e0.means[0] == 0.0 and e0.trials[0] == 1                  # k = 0: fault-free, one evaluation
    # plain Monte Carlo with the unconditional sampler over the same cells agrees within intervals
    draws = 1000
    f = jax.jit(jax.vmap(lambda key: fw.stuck_at_maps(key, N_CELLS, P_CELL, 0.0, 1 << 31)[0]))
    maps = np.asarray(f(jax.random.split(jax.random.key(99), draws)))
    plain = rare.plain_estimate((maps[:, :N_CELLS // 2] != 0).sum(1) / CAP, level=0.999)
    assert plain["lo"] <= exact <= plain["hi"]
    assert max(plain["lo"], e0.lo) <= min(plain["hi"], e0.hi)          # the intervals overlap
    # the strata means are near their exact values k / (2 CAP) (5 hypergeometric standard errors)
    for k, m, n in zip(e0.k[1:], e0.means[1:], e0.trials[1:]):
        sd = math.sqrt(k * 0.25 * (N_CELLS - k) / (N_CELLS - 1)) / CAP
        assert abs(m - k / (2 * CAP)) <= 5 * sd / math.sqrt(n), (k, m, n)


def test_same_key_same_result():
    assert hit_estimate(jax.random.key(4)) == hit_estimate(jax.random.key(4))
    assert hit_estimate(jax.random.key(4)) != hit_estimate(jax.random.key(5))


def test_target_half_width_sets_the_trials():
    # the pilot's 4 trials per stratum estimate each s_k within a factor of about 2, so the achieved
    # half-width lands within 3x the target; the cap (10,000 trials) is far from what it needs
    est = hit_estimate(jax.random.key(3), trials=10_000, half_width=0.01)
    assert est.half_width <= 0.03, est.half_width
    assert est.passes < 1000
    loose = hit_estimate(jax.random.key(3), trials=10_000, half_width=0.04)
    assert loose.passes < est.passes


def test_neyman_allocation():
    n = rare.neyman_allocation([0.5, 0.3, 0.2], [0.0, 1.0, 2.0], 100)
    # shares w s: 0, 0.3, 0.4 of 0.7, rounded up; the zero-sd stratum gets the minimum (2)
    assert n.tolist() == [2, math.ceil(100 * 0.3 / 0.7), math.ceil(100 * 0.4 / 0.7)]
    assert rare.neyman_allocation([0.99, 0.01], [1.0, 1.0], 10).tolist() == [10, 2]   # at least 2 each
    assert rare.neyman_allocation([0.3, 0.7], [0.0, 0.0], 10).tolist() == [5, 5]       # no spread seen: equal
    # a heavy stratum with a small sd keeps its small share: w s = 7.8e-4 against 1.7e-3, so the
    # light, spread-out stratum gets 68 % of the trials (a floor on s_k at max s / 10 gave it 2 of 27)
    w, s = [0.994, 0.006], [7.8e-4, 0.28]
    share = 0.006 * 0.28 / (0.994 * 7.8e-4 + 0.006 * 0.28)
    assert rare.neyman_allocation(w, s, 26).tolist() == [math.ceil(26 * (1 - share)), math.ceil(26 * share)]


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    x = jax.random.normal(jax.random.key(0), (128, 8))
    variables = random_variables(model, 1, x)
    labels = jnp.argmax(model.apply(variables, x), -1)
    return model, variables, x, labels


def test_engine_path_agrees_with_plain(tiny):
    model, variables, x, labels = tiny
    fm = HBMFaults(scheme="none", zero_to_one=0.3)
    ber = 5e-4                       # 192 kernel weights x 16 cells: 1.5 faults per trial
    kw = dict(trials=16, pilot=2, tail=1e-3, level=0.999, chunk=32, strategy="map")
    a = rare.evaluate_stratified(model, variables, x, labels, fm, ber, jax.random.key(5), **kw)
    assert a.class_cells == 192 * 16 and a.estimate.trials[0] == 1
    assert a.estimate.means[0] == a.clean["top1"]                     # k = 0 is the clean bf16 model
    plain = engine.evaluate(model, variables, x, labels, fm, [ber], jax.random.split(jax.random.key(6), 48),
                            strategy="map")
    p = rare.plain_estimate(plain.accuracy[0], level=0.999)
    e = a.estimate
    assert max(p["lo"], e.lo) <= min(p["hi"], e.hi), (p, e)           # the 99.9 % intervals overlap
    with pytest.raises(JaxfaultError, match="HBMFaults"):
        rare.evaluate_stratified(model, variables, x, labels, object(), ber, jax.random.key(5))


def test_a_target_width_bounds_the_strata_it_need_not_sample(tiny):
    model, variables, x, labels = tiny
    fm = HBMFaults(scheme="none", zero_to_one=0.3)
    ber = 1e-7                       # 192 x 16 class cells: P(K > 0) = 3.1e-4
    kw = dict(trials=16, pilot=2, chunk=16, strategy="map")
    sampled = rare.evaluate_stratified(model, variables, x, labels, fm, ber, jax.random.key(5), **kw)
    assert len(sampled.estimate.weights) >= 2                        # tail 1e-6: k = 1 is a stratum
    r = rare.evaluate_stratified(model, variables, x, labels, fm, ber, jax.random.key(5), half_width=2e-3, **kw)
    e = r.estimate
    p_fault = 1 - (1 - float(np.float32(ber))) ** (192 * 16)
    # w / 3 = 6.7e-4 >= P(K > 0): only the fault-free k = 0 is evaluated, once, and the tail's whole
    # range [0, 1] x P(K > 0) joins the interval, which still meets the target
    assert len(e.weights) == 1 and e.tail == pytest.approx(p_fault, rel=1e-3) and e.passes == 1
    assert e.lo == pytest.approx(e.weights[0] * r.clean["top1"]) and e.hi == pytest.approx(e.lo + e.tail)
    assert e.half_width <= 2e-3
    assert rare.target_tail(1e-6, None) == 1e-6 and rare.target_tail(1e-6, 3e-3, (0.0, 1.0)) == pytest.approx(1e-3)


# A stratum whose metric is bimodal: k = 0 holds a tight spread (sd 6.6e-4) with weight 0.994, k = 1
# is 0.9 or 0.3 with probability 1/2 each (sd 0.3) with weight 0.006, the shape the default LeNet
# shows at BER 1e-5 with the bit-30 class (docs/rare.md). Four pilot trials of k = 1 agree with
# probability 1/8, and then a plan from the pilot alone starves k = 1. Values are a function of the
# trial's key (its key data mixed by splitmix64), so the synthetic sampler is deterministic and needs no jit.
BIMODAL_W = np.array([0.994, 0.006])


def _bimodal_sample(ks, keys):
    d = np.asarray(jax.random.key_data(keys), np.uint64).reshape(len(ks), -1)
    z = (d[:, 0] << np.uint64(32)) | d[:, -1]               # splitmix64's finaliser of the key's words
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    u = (((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53
    tight = 0.9055 + 6.6e-4 * stats.norm.ppf(u)
    return np.where(np.asarray(ks) == 0, tight, np.where(u < 0.5, 0.9, 0.3))


def test_bimodal_stratum_is_not_starved():
    # the exact mean is 0.994 * 0.9055 + 0.006 * 0.6; the plan must reach the target half-width in
    # nearly every seed. Tolerance: with a good plan the achieved half-width scatters about the
    # target by the error of the s_k it was planned with (it passed 1.5x the target in 5 of 60 seeds
    # when this test was written); a plan that starves k = 1 lands near 3x. At most 1 of 12 seeds
    # may pass 1.5x (the plan from the pilot alone with a floor on s_k did in 12 of 12).
    target = 1e-3
    exact = 0.994 * 0.9055 + 0.006 * 0.6
    ests = [rare.stratified(_bimodal_sample, BIMODAL_W, 0.0, jax.random.key(r), complete=False, trials=100_000,
                            pilot=4, half_width=target) for r in range(12)]
    widths = np.array([e.half_width for e in ests])
    assert np.sum(widths > 1.5 * target) <= 1, widths
    # the 95 % intervals cover the exact mean: at most 2 misses in 12 (P(> 2) = 0.02 at 95 % coverage)
    assert sum(not (e.lo <= exact <= e.hi) for e in ests) <= 2
    assert max(e.passes for e in ests) < 200
    # the pilot and allocation-round spreads are recorded, and k = 1's plan sd sees its spread
    assert all(len(e.pilot_sds) == len(e.plan_sds) == 2 for e in ests)
    assert sum(e.plan_sds[1] > 0.15 for e in ests) >= 11
