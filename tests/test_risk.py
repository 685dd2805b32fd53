"""Risk, relative risk, mass error against NumPy; Monte-Carlo interval coverage."""

import numpy as np
import pytest
from conftest import np_attention

import minimaxkv as mkv


def setup(rng, n=20, m=6):
    k, v, b = rng.normal(size=(n, 5)), rng.normal(size=(n, 3)), rng.normal(size=n)
    sk, sv, sb = rng.normal(size=(m, 5)), rng.normal(size=(m, 3)), rng.normal(size=m)
    q = 2 * rng.normal(size=(9, 5))
    return q, mkv.Cache(k, v, b), mkv.Cache(sk, sv, sb)


def test_risk_reductions_match_numpy(rng):
    q, c, s = setup(rng)
    a = np_attention(q, *c)[0]
    ah = np_attention(q, *s)[0]
    e2 = ((a - ah) ** 2).sum(1)
    w = rng.random(9)
    np.testing.assert_allclose(mkv.risk(q, c, s), e2.mean(), rtol=1e-12)
    np.testing.assert_allclose(mkv.risk(q, c, s, "max"), e2.max(), rtol=1e-12)
    np.testing.assert_allclose(mkv.risk(q, c, s, "sum"), e2.sum(), rtol=1e-12)
    np.testing.assert_allclose(mkv.risk(q, c, s, "none"), e2, rtol=1e-12)
    np.testing.assert_allclose(mkv.risk(q, c, s, weights=w), (w * e2).sum() / w.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="reduce"):
        mkv.risk(q, c, s, "median")


def test_full_summary_zero_risk(rng):
    q, c, _ = setup(rng)
    assert float(mkv.risk(q, c, c)) == 0.0
    assert float(mkv.mass_error(q, c, c)) == 0.0


def test_relative_risk_of_constant_answer_is_one(rng):
    q, c, _ = setup(rng)
    vbar = np.exp(np.asarray(c.logw)) @ np.asarray(c.values) / np.exp(np.asarray(c.logw)).sum()
    const = mkv.Cache(np.zeros((1, 5)), vbar[None, :])
    np.testing.assert_allclose(mkv.relative_risk(q, c, const), 1.0, rtol=1e-12)


def test_mass_error_matches_numpy(rng):
    q, c, s = setup(rng)
    lz, lzh = np_attention(q, *c)[1], np_attention(q, *s)[1]
    np.testing.assert_allclose(mkv.mass_error(q, c, s), ((lz - lzh) ** 2).mean(), rtol=1e-12)


def test_causal_risk_needs_summary_positions(rng):
    q, c, s = setup(rng)
    qpos = np.arange(20, 29)
    with pytest.raises(ValueError, match="summary_pos"):
        mkv.risk(q, c, s, query_pos=qpos)
    r = mkv.risk(q, c, s, query_pos=qpos, summary_pos=np.arange(6))
    np.testing.assert_allclose(r, mkv.risk(q, c, s), rtol=1e-12)  # every atom visible


def test_mc_interval_coverage():
    """Over 2000 repetitions the 95% interval for the mean of Exp(1) samples (N = 400) covers
    the true mean 1 with frequency 0.95 +- 0.02 (CLT; binomial sd of the frequency 0.005)."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(2000):
        iv = mkv.mc_interval(rng.exponential(size=400))
        hits += iv.low <= 1.0 <= iv.high
    assert abs(hits / 2000 - 0.95) < 0.02


@pytest.mark.parametrize("k", [0, 3, 11, 20])
def test_bootstrap_interval_matches_the_exact_binomial_quantiles(k):
    """For 0/1 scores with k successes of n, a bootstrap mean is Binomial(n, k/n)/n exactly:
    the interval's ends are that law's quantiles up to Monte-Carlo error of one grid step."""
    from scipy import stats

    n = 20
    x = np.r_[np.ones(k), np.zeros(n - k)]
    iv = mkv.bootstrap_interval(x, reps=20_000, seed=1)
    law = stats.binom(n, k / n)
    assert iv.mean == k / n and iv.n == n
    assert abs(iv.low - law.ppf(0.025) / n) <= 1 / n + 1e-12
    assert abs(iv.high - law.ppf(0.975) / n) <= 1 / n + 1e-12
    assert 0 <= iv.low <= iv.mean <= iv.high <= 1


def test_bootstrap_interval_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        mkv.bootstrap_interval([1.0])
    with pytest.raises(ValueError, match="NaN"):
        mkv.bootstrap_interval([1.0, np.inf])


def test_mc_interval_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        mkv.mc_interval([1.0])
    with pytest.raises(ValueError, match="NaN"):
        mkv.mc_interval([1.0, np.nan])
