"""jaxfault.core.stats: distribution functions against table values, interval edge cases, and coverage
by simulation (1000 repetitions each) on synthetic fault models with a known true value.

Coverage tolerance: with R = 1000 repetitions an interval of true coverage 95 % covers in
R * 0.95 +- 2.9 sd (sd = sqrt(0.95 * 0.05 / 1000) = 0.69 %), i.e. within [93, 97] % unless the
method is off; conservative methods are checked against >= 93 % (they must not undercover).
The seeds are fixed, so the observed coverages are reproducible (printed with -s).
"""
import math

import numpy as np
import pytest

from jaxfault.core import stats as S
from jaxfault.core.errors import JaxfaultError

R = 1000            # repetitions of every coverage simulation
CLEAN = 0.89        # clean accuracy of the synthetic models


def covered(lo, hi, truth):
    return float(np.mean((lo <= truth) & (truth <= hi)))


def report(name, cov):
    print(f"coverage {name}: {100 * cov:.1f} % of {R} repetitions")


# ------------------------------------------------------------------------------ distributions
@pytest.mark.parametrize("p,df,table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 19, 2.093),
    (0.975, 30, 2.042), (0.995, 3, 5.841), (0.95, 7, 1.895), (0.9, 15, 1.341), (0.999, 20, 3.552)])
def test_t_quantile_matches_the_table(p, df, table):
    # printed tables give 3 decimals: agreement to half a unit of the last one
    assert S.t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert S.t_quantile(1 - p, df) == pytest.approx(-table, abs=5e-4)
    assert S.t_cdf(S.t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_quantile_tends_to_the_normal_and_cauchy():
    assert S.t_quantile(0.975, 1e7) == pytest.approx(S.normal_quantile(0.975), abs=1e-5)
    # df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2))
    for p in (0.6, 0.9, 0.99):
        assert S.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)


def test_binomial_cdf_against_direct_sum():
    n, q = 23, 0.17
    direct = np.cumsum([math.comb(n, k) * q ** k * (1 - q) ** (n - k) for k in range(n + 1)])
    np.testing.assert_allclose(S.binomial_cdf(n, q), direct, rtol=1e-12, atol=1e-15)


def test_order_statistic_ranks():
    l, u, cov = S.order_statistic_ranks(20, 0.5)
    assert (l, u) == (6, 15) and cov == pytest.approx(1 - 2 * S.binomial_cdf(20, 0.5)[5])
    # 0.95^20 = 0.36 > 0.025: no order statistic bounds the 5th percentile from below at 20 trials
    assert S.order_statistic_ranks(20, 0.05)[0] is None
    assert S.order_statistic_ranks(72, 0.05)[0] == 1 and S.order_statistic_ranks(71, 0.05)[0] is None


# ------------------------------------------------------------------------------ edge cases
def test_wilson_known_values():
    lo, hi = S.proportion_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = S.proportion_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = S.proportion_ci(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_student_t_interval_formula():
    x = np.array([0.5, 0.7, 0.9, 0.6])
    lo, hi = S.mean_ci(x, method="student-t")
    half = S.t_quantile(0.975, 3) * x.std(ddof=1) / 2.0
    assert (lo, hi) == (pytest.approx(x.mean() - half, abs=1e-12), pytest.approx(x.mean() + half, abs=1e-12))


def test_betting_interval_contains_the_mean_and_respects_bounds():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.9, size=(50, 30))
    lo, hi = S.mean_ci(x)
    m = x.mean(-1)
    assert np.all(lo <= m) and np.all(m <= hi) and np.all(lo >= 0) and np.all(hi <= 1)
    # constant samples: the interval holds the value and shrinks as trials grow
    w = [np.subtract(*S.mean_ci(np.full(n, CLEAN))[::-1]) for n in (20, 80, 320)]
    assert w[0] > w[1] > w[2] > 0
    # rescaled bounds give the rescaled interval
    lo2, hi2 = S.mean_ci(10 + 5 * x[0], bounds=(10, 15))
    assert (lo2, hi2) == (pytest.approx(10 + 5 * lo[0], abs=1e-9), pytest.approx(10 + 5 * hi[0], abs=1e-9))


def test_bad_inputs_are_refused():
    with pytest.raises(JaxfaultError, match="NaN"):
        S.mean_ci([0.5, float("nan")])
    with pytest.raises(JaxfaultError, match="outside the bounds"):
        S.mean_ci([0.5, 1.5])
    with pytest.raises(JaxfaultError, match="level"):
        S.mean_ci([0.5], level=95)
    with pytest.raises(JaxfaultError, match="method"):
        S.mean_ci([0.5], method="normal")
    with pytest.raises(JaxfaultError, match="same shape"):
        S.paired_diff_ci([0.1, 0.2], [0.1])
    with pytest.raises(JaxfaultError, match="successes"):
        S.proportion_ci(11, 10)


def test_summary_keys_and_infinite_values():
    s = S.summarize([0.5, 0.7, 0.9], name="top1")
    assert s["method"] == "betting" and s["n"] == 3 and s["level"] == 0.95
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert s["ci_lo"] <= s["mean"] <= s["ci_hi"] and s["half_width"] == pytest.approx((s["ci_hi"] - s["ci_lo"]) / 2)
    # perplexity with diverged (inf) trials: no NaN anywhere, the median and the fraction stay meaningful
    ppl = [12.0, 11.5, 12.5, np.inf, 11.8, 12.2, 12.1, np.inf, 11.9, 12.0]
    s = S.summarize(ppl, name="perplexity")
    assert s["method"] == "student-t" and s["mean"] == np.inf and s["ci_lo"] == np.inf
    assert s["median"] == pytest.approx(12.05) and s["nonfinite"] == 2
    assert 0 < s["nonfinite_lo"] < 0.2 < s["nonfinite_hi"] < 1
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


# ------------------------------------------------------------------------------ fault models
def binomial_fault_model(rng, shape, weights=200, p=0.05, cost=0.002, noise=0.002):
    """Accuracy = clean - cost x (number of effective faults among `weights`) + evaluation noise:
    approximately normal; true mean clean - cost * weights * p."""
    k = rng.binomial(weights, p, size=shape)
    return CLEAN - cost * k + noise * rng.standard_normal(shape), k


def bimodal_fault_model(rng, shape, p_collapse):
    """Most trials near clean (+-0.3 points), a fraction p_collapse collapsed to chance (10 %, +-2 points).
    True mean: (1 - p) 0.89 + p 0.10."""
    collapse = rng.random(shape) < p_collapse
    good = CLEAN + 0.003 * rng.standard_normal(shape)
    bad = 0.10 + 0.02 * rng.standard_normal(shape)
    return np.clip(np.where(collapse, bad, good), 0, 1), (1 - p_collapse) * CLEAN + p_collapse * 0.10


def test_coverage_mean_student_t_on_a_near_normal_model():
    x, _ = binomial_fault_model(np.random.default_rng(10), (R, 20))
    cov = covered(*S.mean_ci(x, method="student-t"), CLEAN - 0.002 * 200 * 0.05)
    report("mean, student-t, binomial faults, n=20", cov)
    assert 0.93 <= cov <= 0.97


def test_coverage_mean_betting_is_conservative_on_the_same_model():
    x, _ = binomial_fault_model(np.random.default_rng(10), (R, 20))
    cov = covered(*S.mean_ci(x), CLEAN - 0.002 * 200 * 0.05)
    report("mean, betting, binomial faults, n=20", cov)
    assert cov >= 0.93


@pytest.mark.parametrize("p_collapse", [0.02, 0.05, 0.15])
def test_coverage_mean_betting_on_bimodal_accuracies_at_20_trials(p_collapse):
    x, truth = bimodal_fault_model(np.random.default_rng(20), (R, 20), p_collapse)
    cov = covered(*S.mean_ci(x), truth)
    report(f"mean, betting, bimodal p_collapse={p_collapse}, n=20", cov)
    assert cov >= 0.93


def test_student_t_undercovers_on_bimodal_accuracies():
    # the reason the default is not Student-t: with P(collapse) = 5 %, 36 % of 20-trial samples
    # hold no collapsed trial, and a data-only interval then sits above the true mean
    x, truth = bimodal_fault_model(np.random.default_rng(20), (R, 20), 0.05)
    cov = covered(*S.mean_ci(x, method="student-t"), truth)
    report("mean, student-t, bimodal p_collapse=0.05, n=20", cov)
    assert cov < 0.80


def test_coverage_quantile_order_statistics():
    rng = np.random.default_rng(30)
    scale = 0.02                              # accuracy drop ~ Exponential(scale): quantiles known
    x = CLEAN - rng.exponential(scale, size=(R, 20))
    cov = covered(*S.quantile_ci(x, 0.5), CLEAN - scale * math.log(2))
    report("median, order statistics, n=20 (guaranteed 95.9 %)", cov)
    assert 0.93 <= cov <= 0.97
    x = CLEAN - rng.exponential(scale, size=(R, 100))
    q10 = CLEAN - scale * math.log(1 / 0.1)   # the 10th percentile of the accuracy = the 90th of the drop
    cov = covered(*S.quantile_ci(x, 0.1), q10)
    report("p10, order statistics, n=100 (guaranteed 95.6 %)", cov)
    assert 0.93 <= cov <= 0.97


def test_coverage_proportion_wilson():
    rng = np.random.default_rng(40)
    diverged = rng.random((R, 50)) < 0.2      # P(trial diverges) = 0.2; exact Wilson coverage 95.07 %
    cov = covered(*S.proportion_ci(diverged.sum(-1), 50), 0.2)
    report("proportion, Wilson, n=50, p=0.2", cov)
    assert 0.93 <= cov <= 0.97


def paired_models(rng, shape):
    """Common random numbers: trial i of both configurations sees the same faults; the protected
    one corrects each fault with probability 0.5. True mean difference 0.002 * 10 * 0.5."""
    acc_a, k = binomial_fault_model(rng, shape, noise=0.0)
    kb = rng.binomial(k, 0.5)
    return CLEAN - 0.002 * kb, acc_a, 0.002 * 200 * 0.05 * 0.5


def test_coverage_paired_difference():
    b, a, truth = paired_models(np.random.default_rng(50), (R, 20))
    cov_t = covered(*S.paired_diff_ci(b, a, method="student-t"), truth)
    cov_b = covered(*S.paired_diff_ci(b, a), truth)
    report("paired difference, student-t, n=20", cov_t)
    report("paired difference, betting, n=20", cov_b)
    assert 0.93 <= cov_t <= 0.97 and cov_b >= 0.93
    # pairing removes the shared variance: narrower than the difference of two independent
    # samples' intervals (width sqrt(wa^2 + wb^2); expected ratio sqrt(4.9 / 14.4) = 0.58)
    lo, hi = S.paired_diff_ci(b, a, method="student-t")
    la, ha = S.mean_ci(a, method="student-t")
    lb, hb = S.mean_ci(b, method="student-t")
    assert np.median(hi - lo) < 0.75 * np.median(np.hypot(ha - la, hb - lb))


def test_coverage_betting_under_width_stopping():
    # a sequential run: chunks of 10 trials until the half-width <= 0.08 or 200 trials; the bets
    # tuned for the 200-trial horizon keep the interval valid at the data-dependent stop
    x, truth = bimodal_fault_model(np.random.default_rng(60), (R, 200), 0.05)
    lo = np.empty(R)
    hi = np.empty(R)
    stop = np.full(R, 200)
    open_ = np.ones(R, bool)
    for n in range(10, 201, 10):
        l, h = S.mean_ci(x[open_, :n], horizon=200)
        idx = np.nonzero(open_)[0]
        lo[idx], hi[idx] = l, h
        done = (h - l) / 2 <= 0.08
        stop[idx[done]] = n
        open_[idx[done]] = False
        if not open_.any():
            break
    cov = covered(lo, hi, truth)
    report(f"mean, betting, width-stopped (median {np.median(stop):.0f} trials)", cov)
    assert cov >= 0.93


def test_run_until_width_stops_on_width_or_cap_and_cuts_the_last_chunk():
    rng = np.random.default_rng(70)
    pool = {"narrow": np.full(100, 0.9), "wide": rng.random(100)}
    for kind, want in (("narrow", "width"), ("wide", "max_trials")):
        calls = []

        def chunk(start, count, kind=kind):
            calls.append((start, count))
            return {"acc": pool[kind][start:start + count], "other": np.arange(start, start + count)}

        values, run = S.run_until_width(chunk, chunk=8, ci_width=0.1, max_trials=30, target="acc")
        assert run["stop"] == want and run["trials"] == len(values["acc"]) == sum(c for _, c in calls)
        assert [s for s, _ in calls] == list(range(0, run["trials"], 8))
        np.testing.assert_array_equal(values["other"], np.arange(run["trials"]))
        lo, hi = S.mean_ci(values["acc"], horizon=30)
        assert run["half_width"] == pytest.approx((hi - lo) / 2)
        if want == "width":
            assert run["half_width"] <= 0.1
            lo, hi = S.mean_ci(values["acc"][:run["trials"] - 8], horizon=30)
            assert (hi - lo) / 2 > 0.1            # the chunk before did not reach the width
        else:
            assert run["trials"] == 30 and calls[-1] == (24, 6) and run["half_width"] > 0.1
    values, run = S.run_until_width(lambda s, c: {"acc": np.full(c, 0.5)}, chunk=5, ci_width=None, max_trials=None,
                                    target="acc")
    assert run == {"trials": 5, "stop": "fixed", "half_width": pytest.approx(run["half_width"]), "horizon": 5}
    with pytest.raises(JaxfaultError, match="max_trials must be an integer >= trials"):
        S.check_sequential(10, 0.01, 5)
    with pytest.raises(JaxfaultError, match="ci_width must be a number > 0"):
        S.check_sequential(10, -1.0, None)
    with pytest.raises(JaxfaultError, match="max_trials needs ci_width"):
        S.check_sequential(10, None, 50)
