"""Confidence intervals for Monte Carlo figures: means, quantiles, proportions, paired differences.

Every jaxfault figure is an estimate over random fault draws (trials). This module gives each one
an interval with a stated coverage; docs/statistics.md states the methods, their assumptions and
the coverage measured by simulation.

* ``mean_ci``: by default the **betting** interval for bounded values (Waudby-Smith and Ramdas,
  hedged capital with predictable plug-in bets). Its coverage is at least the level for *any*
  distribution on the known range, at any trial count, bimodal ones included (most trials near
  clean, a few collapsed to chance), where Student-t undercovers. ``method="student-t"`` is the
  classical interval (exact for normal data only); it is the only choice for unbounded values.
* ``quantile_ci``: distribution-free order-statistic interval, coverage at least the level
  (exact binomial; conservative for discrete values and ties).
* ``proportion_ci``: Wilson score interval for a fraction of trials.
* ``paired_diff_ci``: the mean of per-trial differences of two configurations evaluated on the
  same trial keys (common random numbers), by ``mean_ci`` on the differences.
* ``summarize``: the summary dict every report uses (mean, std, min, max, the mean's interval,
  the median and its interval, the fraction of non-finite trials with its interval).

Pure numpy; inputs are checked once here. The last axis of an array is the trial axis, and the
functions broadcast over leading axes (fast coverage simulations).
"""
from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np

from jaxfault.core.errors import JaxfaultError

MEAN_METHODS = ("betting", "student-t")
BETTING_CAP = 0.75          # bets are capped at BETTING_CAP / m (resp. / (1 - m)): every factor stays >= 0.25
_BISECTIONS = 60            # bisection steps of the betting bounds (interval resolution range * 2^-60)

# Metrics known to lie in [0, 1] by definition (accuracies, fractions, rates, indicators).
_UNIT_NAMES = re.compile(r"^(top\d+|accuracy|acc|diverged|realised_ber|changed_fraction|forward_pass)$"
                         r"|(_fraction|_ber|_rate)$")


# ------------------------------------------------------------------------------------ checks
def _level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not (0.0 < float(level) < 1.0):
        raise JaxfaultError(f"confidence level must be a number in (0, 1), got {level!r}")
    return float(level)


def _values(values, what: str = "values") -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim == 0:
        v = v[None]
    if v.shape[-1] < 1:
        raise JaxfaultError(f"{what} must hold at least one trial, got shape {v.shape}")
    if np.isnan(v).any():
        raise JaxfaultError(f"{what} contain NaN; a trial's figure must be a number (inf is allowed)")
    return v


def _bounds(bounds) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise JaxfaultError(f"bounds must be a pair (low, high), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise JaxfaultError(f"bounds must be finite with low < high, got {bounds!r}")
    return lo, hi


def metric_bounds(name: str) -> tuple[float, float] | None:
    """The range a named figure lies in by definition, or None when it has no known bound.

    Accuracies (top1, top5, ...), fractions, bit error rates and indicators lie in [0, 1]; the
    bounded-mean interval needs this range to be known a priori (never taken from the data).

    Args: name: a metric or statistic name (e.g. "top1", "realised_ber", "perplexity").
    Returns: (0.0, 1.0) or None.
    """
    return (0.0, 1.0) if _UNIT_NAMES.search(str(name).split(".")[-1]) else None


# ------------------------------------------------------------------------------------ distributions
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b).

    Args: a, b: positive shape parameters; x: in [0, 1].
    Returns: I_x(a, b) in [0, 1].
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """The Student-t distribution function P(T <= t) with df degrees of freedom.

    Args: t: a real number; df: degrees of freedom (> 0).
    Returns: the probability.
    """
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (the t_cdf inverted by bisection
    to double precision; no scipy needed).

    Args: p: a probability in (0, 1); df: degrees of freedom (> 0).
    Returns: t with t_cdf(t, df) = p.
    """
    if not 0.0 < p < 1.0:
        raise JaxfaultError(f"t quantile needs p in (0, 1), got {p!r}")
    if not df > 0:
        raise JaxfaultError(f"t quantile needs df > 0, got {df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal distribution.

    Args: p: a probability in (0, 1).
    Returns: z with Phi(z) = p.
    """
    return NormalDist().inv_cdf(p)


def binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, q), from log-space probabilities.

    Args: n: trials (>= 0); q: success probability in [0, 1].
    Returns: array of n + 1 cumulative probabilities.
    """
    k = np.arange(n + 1)
    if q <= 0.0:
        return np.ones(n + 1)
    if q >= 1.0:
        return (k == n).astype(np.float64)
    lg = np.array([math.lgamma(i + 1.0) for i in range(n + 1)])
    logpmf = lg[n] - lg - lg[::-1] + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


# ------------------------------------------------------------------------------------ means
def _betting_lower(z: np.ndarray, alpha_side: float, horizon: int) -> np.ndarray:
    """Lower confidence bound (level 1 - alpha_side) of the mean of z in [0, 1] by betting.

    For a candidate mean m, the capital K_t(m) = prod_{i<=t} (1 + l_i (z_i - m)) with the
    predictable bet l_i = min(sqrt(2 log(1/alpha_side) / (horizon s2_{i-1})), BETTING_CAP / m) is
    a nonnegative martingale when the true mean is m; by Ville's inequality it ever exceeds
    1/alpha_side with probability at most alpha_side. Every m whose capital does is rejected.
    K_t(m) decreases in m, so the bound is found by bisection (conservatively: the returned
    point is rejected or 0)."""
    n = z.shape[-1]
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(z, -1)) / (t + 1.0)
    s2 = (0.25 + np.cumsum((z - mu) ** 2, -1)) / (t + 1.0)
    s2_prev = np.concatenate([np.full(z.shape[:-1] + (1,), 0.25), s2[..., :-1]], -1)
    lam = np.sqrt(2.0 * math.log(1.0 / alpha_side) / (horizon * s2_prev))
    threshold = math.log(1.0 / alpha_side)

    def rejected(m):                     # m: (...,) in (0, 1]
        bet = np.minimum(lam, BETTING_CAP / m[..., None])
        log_k = np.cumsum(np.log1p(bet * (z - m[..., None])), -1)
        return log_k.max(-1) >= threshold

    lo = np.zeros(z.shape[:-1])                  # rejected (or 0)
    hi = z.max(-1)                               # never rejected: every factor <= 1
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        rej = rejected(np.maximum(mid, 1e-300))
        lo = np.where(rej, mid, lo)
        hi = np.where(rej, hi, mid)
    return lo


def mean_ci(values, level: float = 0.95, *, method: str = "betting", bounds=(0.0, 1.0),
            horizon: int | None = None) -> tuple:
    """Two-sided confidence interval (lo, hi) for the mean over trials.

    "betting" (default) needs values known to lie in `bounds`; its coverage is at least `level`
    for every distribution on that range and every trial count (non-asymptotic), so it does not
    undercover on bimodal accuracies. With `horizon` >= the number of trials (the most trials a
    sequential run may take), the bets are tuned for that many trials and the interval stays
    valid when the run stopped early on a data-dependent rule (the capital is a martingale
    whatever the stopping time). "student-t" is mean +- t_{n-1} s / sqrt(n) (s with ddof=1): exact
    for normal values, approximate otherwise, undercovering for skewed or bimodal ones at small
    n; it needs no bounds. A sample containing +inf (-inf) has mean +inf (-inf), and the
    interval is (inf, inf); both signs give (-inf, inf).

    Args: values: trials on the last axis (leading axes are batched); level: in (0, 1);
          method: "betting" or "student-t"; bounds: (low, high) the values lie in (betting);
          horizon: the trial count the bets are tuned for (default: the number of trials).
    Returns: (lo, hi), floats for a 1-D input, arrays of the leading shape otherwise.
    """
    level = _level(level)
    v = _values(values)
    if method not in MEAN_METHODS:
        raise JaxfaultError(f"unknown mean interval method {method!r}; choose one of {', '.join(MEAN_METHODS)}")
    n = v.shape[-1]
    pinf, ninf = np.isposinf(v).any(-1), np.isneginf(v).any(-1)
    finite = np.where(np.isfinite(v), v, 0.0)
    alpha = 1.0 - level
    if method == "student-t":
        m = finite.mean(-1)
        if n > 1:
            half = t_quantile(1.0 - alpha / 2.0, n - 1) * finite.std(-1, ddof=1) / math.sqrt(n)
        else:
            half = np.full(m.shape, np.inf)
        lo, hi = m - half, m + half
    else:
        b = _bounds(bounds)
        if b is None:
            raise JaxfaultError("the betting interval needs the values' bounds (low, high); "
                                "use method='student-t' for unbounded values")
        fin = np.isfinite(v)
        if (fin & ((v < b[0]) | (v > b[1]))).any():
            raise JaxfaultError(f"values outside the bounds [{b[0]:g}, {b[1]:g}] given for the betting interval")
        if horizon is None:
            horizon = n
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < n:
            raise JaxfaultError(f"horizon must be an integer >= the number of trials ({n}), got {horizon!r}")
        width = b[1] - b[0]
        z = np.clip((finite - b[0]) / width, 0.0, 1.0)
        low = _betting_lower(z, alpha / 2.0, int(horizon))
        high = 1.0 - _betting_lower(1.0 - z, alpha / 2.0, int(horizon))
        lo, hi = b[0] + width * low, b[0] + width * high
    lo = np.where(pinf & ~ninf, np.inf, np.where(ninf, -np.inf, lo))
    hi = np.where(ninf & ~pinf, -np.inf, np.where(pinf, np.inf, hi))
    return _out(lo), _out(hi)


def _out(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else x


# ------------------------------------------------------------------------------------ quantiles
def order_statistic_ranks(n: int, q: float, level: float = 0.95) -> tuple[int | None, int | None, float]:
    """1-based ranks (l, u) of the order statistics whose interval [x_(l), x_(u)] covers the
    q-quantile with probability >= level for any distribution, and that coverage.

    Each side has error at most (1 - level) / 2: P(B <= l - 1) and P(B >= u) for B ~ Binomial(n, q),
    l as large and u as small as that allows. A side no order statistic can bound is None (too few
    trials: e.g. the 5th percentile's lower side needs 0.95^n <= 0.025, n >= 72).

    Args: n: trials; q: quantile in (0, 1); level: in (0, 1).
    Returns: (l or None, u or None, the coverage guaranteed for continuous distributions).
    """
    level = _level(level)
    if not 0.0 < q < 1.0:
        raise JaxfaultError(f"quantile must be in (0, 1), got {q!r}")
    a2 = (1.0 - level) / 2.0
    cdf = binomial_cdf(n, q)                     # cdf[k] = P(B <= k)
    # lower rank l: P(B <= l - 1) <= a2, i.e. the largest l with cdf[l - 1] <= a2
    ok = np.nonzero(cdf[:n] <= a2 + 1e-15)[0]
    l = int(ok[-1]) + 1 if ok.size else None
    # upper rank u: P(B >= u) = 1 - cdf[u - 1] <= a2, the smallest such u
    ok = np.nonzero(1.0 - cdf[:n] <= a2 + 1e-15)[0]
    u = int(ok[0]) + 1 if ok.size else None
    err_lo = cdf[l - 1] if l else 0.0
    err_hi = 1.0 - cdf[u - 1] if u else 0.0
    return l, u, float(1.0 - err_lo - err_hi)


def quantile_ci(values, q: float, level: float = 0.95, *, bounds=None) -> tuple:
    """Distribution-free two-sided confidence interval (lo, hi) for the q-quantile over trials.

    The interval is [x_(l), x_(u)] of the sorted trials (``order_statistic_ranks``); its coverage
    is at least `level` for every distribution (exactly the binomial coverage for continuous
    ones, more with ties). A side no order statistic can bound is the range's end from `bounds`
    when given, else -inf / +inf: with 20 trials, no lower bound on the 5th percentile exists.

    Args: values: trials on the last axis (leading axes batched); q: quantile in (0, 1);
          level: in (0, 1); bounds: optional (low, high) range of the values.
    Returns: (lo, hi), floats for 1-D input, arrays otherwise.
    """
    v = np.sort(_values(values), -1)
    b = _bounds(bounds)
    n = v.shape[-1]
    l, u, _ = order_statistic_ranks(n, q, level)
    lo = v[..., l - 1] if l else np.full(v.shape[:-1], b[0] if b else -np.inf)
    hi = v[..., u - 1] if u else np.full(v.shape[:-1], b[1] if b else np.inf)
    return _out(lo), _out(hi)


def quantile(values, q: float) -> float | np.ndarray:
    """The q-quantile point estimate over trials: numpy's linear interpolation between order
    statistics (inf values sort last and propagate only where they are interpolated).

    Args: values: trials on the last axis; q: quantile in [0, 1].
    Returns: the estimate (float for 1-D input).
    """
    v = np.sort(_values(values), -1)
    n = v.shape[-1]
    pos = q * (n - 1)
    i = int(math.floor(pos))
    j = min(i + 1, n - 1)
    w = pos - i
    a, c = v[..., i], v[..., j]
    with np.errstate(invalid="ignore"):
        out = np.where(w == 0.0, a, np.where(a == c, a, a + w * (c - a)))
    return _out(out)


# ------------------------------------------------------------------------------------ proportions
def proportion_ci(successes, n, level: float = 0.95) -> tuple:
    """Wilson score interval (lo, hi) for a proportion: `successes` of `n` trials.

    With z the normal (1 + level) / 2 quantile and p = k / n, the interval is
    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n); it stays inside [0, 1] and is not
    empty at k = 0 or k = n (where the normal-approximation interval collapses).

    Args: successes: count(s) k, 0 <= k <= n; n: trials (>= 1); level: in (0, 1).
    Returns: (lo, hi), floats for scalar input, arrays otherwise.
    """
    level = _level(level)
    k = np.asarray(successes, np.float64)
    nn = np.asarray(n, np.float64)
    if (nn < 1).any() or (k < 0).any() or (k > nn).any() or (k != np.round(k)).any():
        raise JaxfaultError(f"proportion needs integer 0 <= successes <= n and n >= 1, got {successes!r} of {n!r}")
    z = normal_quantile(0.5 + level / 2.0)
    p = k / nn
    denom = 1.0 + z * z / nn
    centre = (p + z * z / (2.0 * nn)) / denom
    half = z * np.sqrt(p * (1.0 - p) / nn + z * z / (4.0 * nn * nn)) / denom
    lo = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k == nn, 1.0, np.clip(centre + half, 0.0, 1.0))
    return _out(lo), _out(hi)


# ------------------------------------------------------------------------------------ paired
def paired_diff_ci(a, b, level: float = 0.95, *, method: str = "betting", bounds=(0.0, 1.0),
                   horizon: int | None = None) -> tuple:
    """Confidence interval (lo, hi) for mean(a - b) of two configurations evaluated on the same
    trial keys (common random numbers: trial i of both saw the same fault draw).

    The per-trial differences d_i = a_i - b_i are independent across trials, so ``mean_ci`` on
    them is valid; pairing removes the variance the two share, which makes the interval much
    narrower than one built from two independent intervals. With `bounds` (low, high) of each
    value, the differences lie in [low - high, high - low] (the betting method's range).

    Args: a, b: per-trial values of the same shape (trials last); level: in (0, 1); method:
          "betting" or "student-t"; bounds: the range of a and b; horizon: as in ``mean_ci``.
    Returns: (lo, hi) for mean(a) - mean(b).
    """
    a, b2 = _values(a, "a"), _values(b, "b")
    if a.shape != b2.shape:
        raise JaxfaultError(f"paired values must have the same shape (same trials), got {a.shape} and {b2.shape}")
    bb = _bounds(bounds) if method == "betting" else None
    d_bounds = (bb[0] - bb[1], bb[1] - bb[0]) if bb else None
    return mean_ci(a - b2, level, method=method, bounds=d_bounds, horizon=horizon)


# ------------------------------------------------------------------------------------ summaries
def summarize(values, *, level: float = 0.95, bounds="auto", name: str | None = None,
              method: str | None = None, horizon: int | None = None) -> dict:
    """The one summary of per-trial values, JSON-ready.

    Keys: n, mean, std (ddof=0, the population over the trials drawn), min, max; the mean's
    interval ci_lo, ci_hi and half_width = (ci_hi - ci_lo) / 2 at `level` by `method`; median
    with its order-statistic interval median_lo, median_hi; nonfinite (trials whose value is
    +-inf, e.g. diverged perplexities) with its Wilson interval nonfinite_lo, nonfinite_hi as a
    fraction. A sample with inf values keeps every key a number: mean and std are inf, the
    median and quantiles stay finite while fewer than half the trials diverged.

    Args: values: 1-D per-trial values; level: in (0, 1); bounds: (low, high), None (no known
          range) or "auto" (``metric_bounds(name)``); name: the figure's name, for "auto";
          method: "betting" or "student-t" (default: betting when bounds are known, else
          student-t); horizon: as in ``mean_ci``.
    Returns: dict of floats and ints plus "method" and "level".
    """
    level = _level(level)
    v = _values(values).reshape(-1)
    if isinstance(bounds, str) and bounds == "auto":
        bounds = metric_bounds(name) if name is not None else None
    bounds = _bounds(bounds)
    method = method or ("betting" if bounds is not None else "student-t")
    n = int(v.size)
    nonfinite = int((~np.isfinite(v)).sum())
    if nonfinite:
        with np.errstate(invalid="ignore"):
            mean = float(v.mean())
        mean = float(np.inf) if np.isnan(mean) else mean
        std = float(np.inf)
    else:
        mean, std = float(v.mean()), float(v.std())
    lo, hi = mean_ci(v, level, method=method, bounds=bounds, horizon=horizon)
    if nonfinite and np.isposinf(v).any() and np.isneginf(v).any():
        mean = float("inf")
    mlo, mhi = quantile_ci(v, 0.5, level, bounds=bounds)
    flo, fhi = proportion_ci(nonfinite, n, level)
    with np.errstate(invalid="ignore"):
        half = (hi - lo) / 2.0
    return {"n": n, "mean": mean, "std": std, "min": float(v.min()), "max": float(v.max()),
            "ci_lo": lo, "ci_hi": hi, "half_width": float(np.inf) if math.isnan(half) else float(half),
            "level": level, "method": method, "horizon": int(horizon or n),
            "median": quantile(v, 0.5), "median_lo": mlo, "median_hi": mhi,
            "nonfinite": nonfinite, "nonfinite_lo": flo, "nonfinite_hi": fhi}


def interval_text(lo: float, hi: float, scale: float = 1.0, digits: int = 2) -> str:
    """'[lo, hi]' of an interval, scaled (e.g. 100 for percent), for tables and logs.

    Args: lo, hi: the interval; scale: factor applied to both; digits: decimals.
    Returns: the text.
    """
    return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


# ------------------------------------------------------------------------------------ sequential
STOP_REASONS = ("fixed", "width", "max_trials")


def check_sequential(trials: int, ci_width, max_trials) -> int | None:
    """Check the settings of a run until a target width; returns the trial cap to use.

    Args: trials: the chunk size (trials per compiled call, >= 1); ci_width: the target
          half-width of the mean's interval (> 0) or None for a fixed number of trials;
          max_trials: the cap (>= trials), or None for 10 x trials.
    Returns: the cap (None when ci_width is None).
    """
    if ci_width is None:
        if max_trials is not None:
            raise JaxfaultError("max_trials needs ci_width (a target half-width); without it the trial count is fixed")
        return None
    if isinstance(ci_width, bool) or not isinstance(ci_width, (int, float)) or not (0 < ci_width < math.inf):
        raise JaxfaultError(f"ci_width must be a number > 0 (the target half-width), got {ci_width!r}")
    cap = 10 * trials if max_trials is None else max_trials
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < trials:
        raise JaxfaultError(f"max_trials must be an integer >= trials ({trials}), got {max_trials!r}")
    return cap


def run_until_width(run_chunk, *, chunk: int, ci_width: float | None, max_trials: int | None,
                    target: str, level: float = 0.95, bounds=(0.0, 1.0)) -> tuple[dict, dict]:
    """Run trials in chunks until the target figure's mean interval is narrow enough.

    Calls run_chunk(start, count) for trials start..start+count-1 (count == chunk, the last call
    cut to the cap), which returns {name: per-trial array}; stops when the half-width of the
    betting interval of values[target] is <= ci_width or max_trials trials ran. The bets are tuned
    for the cap (``mean_ci(horizon=max_trials)``), so the interval at the data-dependent stop keeps
    its coverage. Without ci_width, one chunk runs (stop "fixed").

    Args: run_chunk: the evaluation callback; chunk: trials per call; ci_width: target
          half-width or None; max_trials: the cap; target: name of the figure stopped on;
          level: in (0, 1); bounds: the target's range.
    Returns: ({name: concatenated array}, {"trials", "stop", "half_width", "horizon"}).
    """
    cap = check_sequential(chunk, ci_width, max_trials)
    total = chunk if cap is None else cap
    parts: dict = {}
    n, stop, half = 0, "fixed", float("inf")
    while n < total:
        count = min(chunk, total - n)
        out = run_chunk(n, count)
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[:count])
        n += count
        if cap is None:
            break
        lo, hi = mean_ci(np.concatenate(parts[target]), level, bounds=bounds, horizon=cap)
        half = (hi - lo) / 2.0
        if half <= ci_width:
            stop = "width"
            break
    else:
        stop = "max_trials" if cap is not None else "fixed"
    values = {k: np.concatenate(v) for k, v in parts.items()}
    if cap is None:
        lo, hi = mean_ci(values[target], level, bounds=bounds)
        half = (hi - lo) / 2.0
    return values, {"trials": n, "stop": stop, "half_width": float(half), "horizon": int(cap or n)}
