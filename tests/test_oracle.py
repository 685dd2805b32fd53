"""The brute-force oracle (L1) against exhaustive NumPy eviction and against refit rules."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from conftest import np_attention

import minimaxkv as mkv
from minimaxkv import bounds, fit, synthetic

N, M, P = 8, 3, 6


def instances(count, seed):
    for i in range(count):
        fam = ["clustered", "isotropic", "power_law", "lookup"][i % 4]
        kw = dict(n=N, d=4, dv=2, p=P, dtype=jnp.float64)
        inst = synthetic.make(fam, jax.random.PRNGKey(seed + i), **kw)
        yield inst.queries, inst.cache


def exhaustive_eviction(q, c, m):
    a = np_attention(q, *c)[0]
    best = np.inf
    for k in range(1, m + 1):
        for s in itertools.combinations(range(c.n), k):
            s = list(s)
            ah = np_attention(q, *(np.asarray(x)[s] for x in c))[0]
            best = min(best, ((ah - a) ** 2).sum(1).mean())
    return best


def test_L1_oracle_below_exhaustive_eviction():
    for q, c in instances(8, 0):
        res = bounds.oracle(q, c, M)
        ev = exhaustive_eviction(q, c, M)
        np.testing.assert_allclose(res.eviction_risk, ev, rtol=1e-10)
        assert float(res.risk) <= ev
        assert len(res.summary.kept) <= M


def test_L1_oracle_below_mass_matched_refit():
    """Every support of size m refitted the way attention matching does (mass-matching NNLS
    log-weights, least-squares values) is no better than the oracle."""
    for q, c in instances(4, 100):
        res = bounds.oracle(q, c, M, nnls_iters=500)
        for s in itertools.combinations(range(N), M):
            summ = fit.refit(q, c, jnp.asarray(s), iters=500)
            # LS values solved by SVD here and by a 1e-13-ridge Cholesky in the oracle
            assert float(res.risk) <= float(mkv.risk(q, c, summ)) * (1 + 1e-9)


def test_oracle_summary_risk_consistent():
    for q, c in instances(4, 200):
        res = bounds.oracle(q, c, M)
        np.testing.assert_allclose(mkv.risk(q, c, res.summary.cache), res.risk, rtol=1e-10)
        kept = np.asarray(res.summary.kept)
        np.testing.assert_allclose(res.summary.cache.keys, np.asarray(c.keys)[kept])


def test_oracle_full_budget_is_exact():
    q, c = next(instances(1, 300))
    res = bounds.oracle(q, c, N, steps=5)
    assert float(res.risk) <= 1e-20


def test_oracle_weighted_queries():
    q, c = next(instances(1, 400))
    w = np.linspace(0.1, 1.0, P)
    res = bounds.oracle(q, c, 2, weights=w)
    np.testing.assert_allclose(mkv.risk(q, c, res.summary.cache, weights=w), res.risk, rtol=1e-10)
