"""Each published rule against an independent float64 NumPy implementation of its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import lsq_linear

import minimaxkv as mkv
from minimaxkv import rules

N, D, DV, G, P = 48, 8, 4, 3, 10


@pytest.fixture
def data(rng):
    keys = rng.normal(size=(N, D))
    vals = rng.normal(size=(N, DV))
    q = 1.5 * rng.normal(size=(G, P, D))
    return mkv.Cache(keys, vals), q


def np_causal_attention(q, k):
    """[g, p, n] softmax of q k^T / sqrt(d) with queries at the last p positions."""
    g, p, d = q.shape
    n = k.shape[0]
    s = np.einsum("gpd,nd->gpn", q, k) / np.sqrt(d)
    qpos = np.arange(n - p, n)
    s = np.where(np.arange(n)[None, None, :] <= qpos[None, :, None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def top_set(scores, m, protected=()):
    protected = list(protected)
    free = m - len(protected)
    cand = [j for j in np.argsort(-scores, kind="stable") if j not in protected]
    return sorted(protected + cand[:free])


def kept(rule, cache, m, q=None, **kw):
    return sorted(np.asarray(rules.get(rule, **kw)(cache, m, q).kept).tolist())


def test_window_and_streaming_llm(data):
    c, q = data
    assert kept("window", c, 10) == list(range(N - 10, N))
    assert kept("streaming_llm", c, 10) == [0, 1, 2, 3] + list(range(N - 6, N))
    assert kept("streaming_llm", c, 3) == [0, 1, 2]  # the budget cannot hold all sinks


def test_h2o(data):
    c, q = data
    att = np_causal_attention(q, np.asarray(c.keys))
    seen = (np.arange(N)[None, :] <= np.arange(N - P, N)[:, None]).sum(0)
    score = (att.sum(1) / seen).mean(0)
    assert kept("h2o", c, 12, q) == top_set(score, 12)


def test_snapkv(data):
    c, q = data
    w = 6
    att = np_causal_attention(q[:, -w:], np.asarray(c.keys))  # last w queries = positions n-w..
    mean = att.mean(1)[:, : N - w]
    pooled = np.stack([np.convolve(np.pad(r, 2), np.ones(5) / 5, mode="valid") for r in mean])
    score = np.concatenate([pooled.mean(0), np.zeros(w)])
    assert kept("snapkv", c, 14, q, window=w) == top_set(score, 14, range(N - w, N))


def test_tova(data):
    c, q = data
    score = np_causal_attention(q, np.asarray(c.keys))[:, -1].mean(0)
    assert kept("tova", c, 9, q) == top_set(score, 9)


def test_knorm_keydiff(data):
    c, q = data
    k = np.asarray(c.keys)
    assert kept("knorm", c, 11) == top_set(-np.linalg.norm(k, axis=1), 11)
    u = k / np.linalg.norm(k, axis=1, keepdims=True)
    mean = u.mean(0)
    assert kept("keydiff", c, 11) == top_set(-(u @ mean) / np.linalg.norm(mean), 11)


@pytest.mark.parametrize("d,sketch", [(8, 48), (64, 48)])
def test_leverage(rng, d, sketch):
    n = 150  # more atoms than sketch dimensions, or every leverage is 1
    k = rng.normal(size=(n, d)) * rng.uniform(0.2, 3, size=d)
    c = mkv.Cache(k, rng.normal(size=(n, 2)))
    x = k - k.mean(0)
    if sketch < d:  # the sketch is part of the rule's definition: same Gaussian matrix
        s = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (d, sketch))) / np.sqrt(sketch)
        x = x @ s
    lev = np.einsum("nr,rs,ns->n", x, np.linalg.pinv(x.T @ x), x)
    assert kept("leverage", c, 13, sketch=sketch) == top_set(lev, 13)


def np_rope(x, pos, theta):
    """Half-split RoPE, written from the definition."""
    d = x.shape[-1]
    freq = theta ** (-np.arange(0, d, 2) / d)
    ang = np.asarray(pos, float)[:, None] * freq[None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)


def test_expected_attention(data):
    c, q = data
    k, v = np.asarray(c.keys), np.asarray(c.values)
    theta, horizon, shrink = 10000.0, 512, 1e-3
    pre = np.stack([np_rope(qh, -np.arange(N - P, N), theta) for qh in q])
    eye = np.eye(D)
    rbar = np.mean([np_rope(eye, np.full(D, t), theta).T for t in range(N, N + horizon)], axis=0)
    scores = []
    for qh in pre:
        mu, cov = qh.mean(0), np.cov(qh, rowvar=False)
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / D * eye
        mu2, cov2 = rbar @ mu, rbar @ cov @ rbar.T
        logit = k @ mu2 / np.sqrt(D) + np.einsum("nd,de,ne->n", k, cov2, k) / D / 2
        e = np.exp(logit - logit.max())
        scores.append(e / e.sum() * np.linalg.norm(v, axis=1))
    assert kept("expected_attention", c, 15, q) == top_set(np.mean(scores, 0), 15, range(4))


def test_attention_matching_rms_and_fit(data):
    c, q = data
    k, v = np.asarray(c.keys), np.asarray(c.values)
    qf = q.reshape(-1, D)
    s = qf @ k.T / np.sqrt(D)
    att = np.exp(s - s.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    sel = top_set(np.sqrt((att ** 2).mean(0)), 12)
    summ = rules.get("attention_matching")(c, 12, q)
    assert sorted(np.asarray(summ.kept).tolist()) == sel
    a = np.exp(s - s.max(1, keepdims=True))
    ref = lsq_linear(a[:, sel], a.sum(1), bounds=(np.exp(-3), np.exp(3)), tol=1e-12).x
    np.testing.assert_allclose(np.exp(np.asarray(summ.cache.logw)), ref, rtol=1e-4, atol=1e-6)
    # values: ridge least squares towards the kept values, with the rule's own log-weights
    beta = np.asarray(summ.cache.logw)
    sh = qf @ k[sel].T / np.sqrt(D) + beta
    ph = np.exp(sh - sh.max(1, keepdims=True))
    ph /= ph.sum(1, keepdims=True)
    h = ph.T @ ph
    lam = 1e-3 * np.trace(h) / len(sel)
    vref = np.linalg.solve(h + lam * np.eye(len(sel)), ph.T @ (att @ v) + lam * v[sel])
    np.testing.assert_allclose(summ.cache.values, vref, rtol=1e-7, atol=1e-9)


def test_kmeans_merge_is_a_lloyd_fixed_point(data):
    c, _ = data
    summ = rules.get("kmeans_merge", iters=100)(c, 6)
    cen = np.asarray(summ.cache.keys)
    k = np.asarray(c.keys)
    lab = np.argmin(((k[:, None] - cen[None]) ** 2).sum(-1), axis=1)
    for i in range(6):
        if (lab == i).any():
            np.testing.assert_allclose(cen[i], k[lab == i].mean(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(np.asarray(summ.cache.values)[i],
                                       np.asarray(c.values)[lab == i].mean(0), rtol=1e-6,
                                       atol=1e-9)
            np.testing.assert_allclose(np.asarray(summ.cache.logw)[i], np.log((lab == i).sum()),
                                       rtol=1e-9)


def test_unknown_rule_and_missing_queries(data):
    c, _ = data
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        rules.get("nope")
    with pytest.raises(ValueError, match="query-aware"):
        rules.get("snapkv")(c, 5)
    with pytest.raises(ValueError, match="bad hyperparameters"):
        rules.get("snapkv", bogus=1)


def test_gvote_union_of_nucleus_sets(data):
    """Same random draws (part of the rule's input through ``key``), NumPy nucleus logic."""
    from minimaxkv import queries as Q
    from minimaxkv.rules.eviction import _fit

    c, q = data
    q = 4 * q  # peaked attention: nucleus sets smaller than the cache
    key = jax.random.PRNGKey(3)
    probes = []
    for qh, kh in zip(q, jax.random.split(key, G)):
        draws = np.asarray(Q.sample(_fit(jnp.asarray(qh, jnp.float32), 1e-3), kh, 16))
        probes.append(np.concatenate([draws, qh[-1:]]))
    probes = np.concatenate(probes)
    s = probes @ np.asarray(c.keys).T / np.sqrt(D)
    att = np.exp(s - s.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    union = np.zeros(N, bool)
    for row in att:
        order = np.argsort(-row)
        cum = np.cumsum(row[order])
        size = int(np.searchsorted(cum, 0.95) + 1)  # smallest top set with mass >= 0.95
        union[order[:size]] = True
    assert 5 < union.sum() < 47  # both branches below are exercised
    for m in (5, 47):
        summ = rules.get("gvote")(c, m, q, key)
        kept = np.asarray(summ.kept)
        live = np.isfinite(np.asarray(summ.cache.logw))
        if union.sum() <= m:
            assert set(kept[live].tolist()) == set(np.flatnonzero(union).tolist())
        else:
            prio = np.where(union, att.max(0), -1)
            assert sorted(kept.tolist()) == top_set(prio, m)


def test_attention_matching_omp_selection(data):
    """Non-negative OMP on the stabilised mass target, with exact NNLS (SciPy) in the reference."""
    from scipy.optimize import nnls

    c, q = data
    k = np.asarray(c.keys)
    s = q.reshape(-1, D) @ k.T / np.sqrt(D)
    a = np.exp(s - s.max(1, keepdims=True))
    target = a.sum(1)
    norms = np.linalg.norm(a, axis=0)
    chosen, resid = [], target.copy()
    for _ in range(8):
        corr = a.T @ resid / norms
        corr[chosen] = -np.inf
        chosen.append(int(np.argmax(corr)))
        coef, _ = nnls(a[:, chosen], target)
        resid = target - a[:, chosen] @ coef
    summ = rules.get("attention_matching", selection="omp")(c, 8, q)
    assert sorted(np.asarray(summ.kept).tolist()) == sorted(chosen)


def test_random_rule_is_uniform():
    """Each atom is kept with probability m/n: chi-square over 400 seeds (p > 0.001)."""
    from scipy.stats import chisquare

    c = mkv.Cache(np.zeros((10, 2)), np.zeros((10, 1)))
    counts = np.zeros(10)
    rule = rules.get("random")
    for seed in range(400):
        counts[np.asarray(rule(c, 3, key=jax.random.PRNGKey(seed)).kept)] += 1
    assert chisquare(counts).pvalue > 1e-3
