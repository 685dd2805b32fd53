"""Query laws and RoPE against closed forms and Monte Carlo with explicit tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import queries as Q
from minimaxkv import rope


def test_isotropic_scale(rng):
    obs = rng.normal(size=(50, 8)) * 3
    law = Q.isotropic(obs)
    sigma2 = (obs ** 2).sum() / obs.size
    np.testing.assert_allclose(np.asarray(law.chol), np.sqrt(sigma2) * np.eye(8), rtol=1e-6)
    assert float(jnp.abs(law.mean).max()) == 0.0


def test_fit_gaussian_matches_numpy(rng):
    obs = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 4)) + 1.5
    law = Q.fit_gaussian(obs, shrinkage=0.0)
    np.testing.assert_allclose(law.mean, obs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(law.chol @ law.chol.T, np.cov(obs, rowvar=False), rtol=1e-10)


def test_unshrunk_fit_of_too_few_queries_is_an_error(rng):
    """p <= d queries have a singular sample covariance (rank <= p - 1): without shrinkage the
    Cholesky factor is NaN, which made Expected Attention's scores NaN and its kept set arbitrary;
    now a clear error, through the rule as well."""
    obs = rng.normal(size=(8, 8))
    assert np.linalg.matrix_rank(np.cov(obs, rowvar=False)) < 8  # the reason, checked
    with pytest.raises(ValueError, match="singular covariance"):
        Q.fit_gaussian(obs, shrinkage=0.0)
    assert np.all(np.isfinite(np.asarray(Q.fit_gaussian(obs, shrinkage=1e-3).chol)))
    c = mkv.Cache(jnp.asarray(rng.normal(size=(32, 8))), jnp.asarray(rng.normal(size=(32, 2))))
    with pytest.raises(ValueError, match="singular covariance"):
        mkv.rules.get("expected_attention", shrinkage=0.0, theta=0.0)(c, 8, jnp.asarray(obs))


def test_gaussian_sampling_moments():
    law = Q.Gaussian(jnp.array([1.0, -2.0]), jnp.array([[2.0, 0.0], [0.5, 0.3]]))
    x = np.asarray(Q.sample(law, jax.random.PRNGKey(0), 200_000))
    cov = np.asarray(law.chol @ law.chol.T)
    # standard error of a mean of 2e5 draws: sqrt(var / 2e5) <= 0.005; allow 5 standard errors
    np.testing.assert_allclose(x.mean(0), law.mean, atol=5 * np.sqrt(cov.diagonal().max() / 2e5))
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.03)


@pytest.mark.parametrize("convention", ["half", "interleaved"])
def test_rope_rotations_match_apply(rng, convention):
    x = rng.normal(size=(5, 8))
    pos = np.array([0, 3, 17, 100, 2048])
    r = rope.rotations(pos, 8, 500.0, convention)
    np.testing.assert_allclose(rope.apply(jnp.asarray(x), pos, 500.0, convention),
                               np.einsum("tab,tb->ta", r, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.einsum("tab,tcb->tac", r, r), np.broadcast_to(np.eye(8),
                               (5, 8, 8)), atol=1e-6)


def test_rope_relative_position_and_conventions(rng):
    """<R_t q, R_s k> depends on t - s only; the two conventions differ by a fixed permutation."""
    q, k = rng.normal(size=(1, 16)), rng.normal(size=(1, 16))
    for conv in ("half", "interleaved"):
        a = float(jnp.sum(rope.apply(q, [10], 100.0, conv) * rope.apply(k, [4], 100.0, conv)))
        b = float(jnp.sum(rope.apply(q, [106], 100.0, conv) * rope.apply(k, [100], 100.0, conv)))
        assert abs(a - b) < 1e-4
    perm = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])  # interleaved -> half
    xi = rope.apply(jnp.asarray(q), [7], 100.0, "interleaved")
    xh = rope.apply(jnp.asarray(q[:, perm]), [7], 100.0, "half")
    np.testing.assert_allclose(np.asarray(xi)[:, perm], xh, rtol=1e-5, atol=1e-6)


def test_rope_mixture_moments():
    """Moment-matched Gaussian of the RoPE mixture vs 400k Monte-Carlo draws of the mixture."""
    d = 6
    law0 = Q.Gaussian(jnp.array([2.0, 0.0, 1.0, -1.0, 0.5, 3.0]),
                      jnp.linalg.cholesky(jnp.eye(d) * 0.3 + 0.1))
    law = Q.rope_future(law0, start=50, horizon=8, theta=10.0)
    mm = Q.moment_matched(law)
    x = np.asarray(Q.sample(law, jax.random.PRNGKey(1), 400_000), np.float64)
    cov = np.asarray(mm.chol @ mm.chol.T)
    se = np.sqrt(cov.diagonal().max() / 4e5)
    np.testing.assert_allclose(x.mean(0), mm.mean, atol=6 * se)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.05)
    # Expected Attention's Gaussian has the same mean but a smaller covariance (drops the spread)
    ea = Q.expected_attention_gaussian(law)
    np.testing.assert_allclose(ea.mean, mm.mean, rtol=1e-6, atol=1e-6)
    gap = cov - np.asarray(ea.chol @ ea.chol.T)
    assert np.linalg.eigvalsh(0.5 * (gap + gap.T)).min() > -1e-6


def test_finite_law_resampling(rng):
    qs = Q.empirical(rng.normal(size=(3, 2)), weights=np.array([0.0, 1.0, 3.0]))
    x = np.asarray(Q.sample(qs, jax.random.PRNGKey(2), 40_000))
    freq = [(x == np.asarray(qs.queries)[i]).all(1).mean() for i in range(3)]
    np.testing.assert_allclose(freq, [0.0, 0.25, 0.75], atol=0.01)
    assert Q.to_query_set(qs) is qs
    with pytest.raises(ValueError, match="key= and num="):
        Q.to_query_set(Q.isotropic(rng.normal(size=(3, 2))))


def test_bad_weights():
    with pytest.raises(ValueError, match="non-negative"):
        Q.empirical(np.ones((2, 2)), weights=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="sum to zero"):
        Q.empirical(np.ones((2, 2)), weights=np.array([0.0, 0.0]))


def test_monte_carlo_risk_interval_covers_large_sample_value():
    """Risk under a Gaussian law: the 99.9% interval from 4k draws covers a 400k-draw estimate."""
    inst = mkv.synthetic.isotropic(jax.random.PRNGKey(3), n=40, d=8, dv=4, dtype=jnp.float64)
    law = Q.fit_gaussian(inst.queries)
    summ = mkv.summarize.evict(inst.cache, jnp.arange(20))
    small = mkv.risk(Q.sample(law, jax.random.PRNGKey(4), 4000), inst.cache, summ, "none")
    big = mkv.risk(Q.sample(law, jax.random.PRNGKey(5), 400_000), inst.cache, summ)
    iv = mkv.mc_interval(small, level=0.999)
    assert iv.low <= float(big) <= iv.high


def test_draws_from_one_block_of_uniforms_follow_their_laws():
    """``uniforms`` gives i.i.d. U(0, 1) parts of the asked shapes from one key; the inverse-CDF
    samplers give standard normals (Kolmogorov-Smirnov against the normal CDF, p > 0.001) and,
    for the RoPE mixture, exactly ``rope.apply(mean + z L^T, t)`` with t uniform over the
    positions (chi-square, p > 0.001): a second implementation of ``sample``'s law."""
    from scipy import stats

    a, b = Q.uniforms(jax.random.PRNGKey(0), [(3, 4000), (2000,)], jnp.float64)
    assert a.shape == (3, 4000) and b.shape == (2000,)
    u = np.concatenate([np.ravel(a), np.ravel(b)])
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 4 / np.sqrt(u.size)
    z = np.asarray(Q.standard_normal(jnp.asarray(u)))
    assert np.all(np.isfinite(np.asarray(Q.standard_normal(jnp.asarray([1e-300, 1 - 1e-16])))))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    d, h = 4, 5
    law = Q.rope_future(Q.Gaussian(jnp.arange(1.0, d + 1), 0.5 * jnp.eye(d)), 100, h, 1e4, "half")
    uu = Q.uniforms(jax.random.PRNGKey(1), [(5000, d + 1)], jnp.float64)[0]
    got = np.asarray(Q.rope_draws(law, uu))
    t = 100 + np.minimum((np.asarray(uu[:, d]) * h).astype(int), h - 1)
    pre = np.arange(1.0, d + 1) + 0.5 * np.asarray(Q.standard_normal(uu[:, :d]))
    np.testing.assert_allclose(got, np.asarray(rope.apply(jnp.asarray(pre), jnp.asarray(t), 1e4,
                                                          "half")), rtol=1e-12, atol=1e-12)
    counts = np.bincount(t - 100, minlength=h)
    assert stats.chisquare(counts).pvalue > 1e-3
