"""Upper and lower bounds of docs/theory.md: never violated, on random, hypothesis-drawn and
adversarial (gradient-ascent) instances; tight where the theory says so."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minimaxkv as mkv
from minimaxkv import bounds, fit, summarize, synthetic

ROUND = 1e-9  # relative float64 round-off allowance on a bound


# ----------------------------------------------------------------------------- helpers


def x_operator(q, c, w=None):
    pm = np_attention(q, *c)[2]
    w = np.full(len(q), 1 / len(q)) if w is None else w / w.sum()
    return np.sqrt(w)[:, None] * pm


def spec2(a):
    return np.linalg.norm(a, 2) ** 2


def col_basis(a):
    """Orthonormal basis of the column span (rank-revealing: zero columns add nothing)."""
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, s > s[0] * max(a.shape) * 1e-15]


def eviction_map(q, c, kept):
    """L with A_evict = L V: rows = evicted summary's weights placed on the kept columns."""
    ph = np_attention(q, *(np.asarray(x)[kept] for x in c))[2]
    L = np.zeros((len(q), c.n))
    L[:, kept] = ph
    return L


# ----------------------------------------------------------------------------- per-instance checks


def _violations(inst, key):
    """Bound minus error (should be >= 0) for U1, U2, U3, L2 (eviction) and C1 on one instance."""
    c, q = inst.cache, inst.queries
    n, p = c.n, q.shape[0]
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    # U1: evict a random set (atom 0 kept)
    ev = (jax.random.uniform(k1, (n,)) < 0.5).at[0].set(False)
    s = mkv.Cache(c.keys, c.values, jnp.where(ev, -jnp.inf, c.logw))
    e1 = jnp.linalg.norm(mkv.errors(q, c, s), axis=1)
    u1 = bounds.eviction_bound(q, c, ev) * (1 + ROUND) + 1e-12 - e1
    # U2: log-weight perturbation within +-delta
    delta = jax.random.uniform(k2, (), minval=0.0, maxval=3.0)
    pert = delta * jax.random.uniform(k3, (n,), minval=-1.0, maxval=1.0)
    e2 = jnp.linalg.norm(mkv.errors(q, c, mkv.Cache(c.keys, c.values, c.logw + pert)), axis=1)
    u2 = bounds.logit_bound(delta, c.values) * (1 + ROUND) + 1e-12 - e2
    # U3: merge into 4 random clusters
    labels = jax.random.randint(k4, (n,), 0, 4)
    merged = summarize.merge(c, labels, 4).cache
    e3 = jnp.linalg.norm(mkv.errors(q, c, merged), axis=1)
    u3 = bounds.merging_bound(q, c, labels, merged.keys) * (1 + ROUND) + 1e-12 - e3
    # L2: worst case of eviction to 4 atoms >= sigma_5(X)^2
    kept = jax.random.permutation(k5, n)[:4]
    ph = mkv.attention_weights(q, mkv.Cache(c.keys[kept], c.values[kept], c.logw[kept]))
    L = jnp.zeros((p, n)).at[:, kept].set(ph)
    x = mkv.attention_weights(q, c) / jnp.sqrt(p)
    worst = jnp.linalg.svd(x - L / jnp.sqrt(p), compute_uv=False)[0] ** 2
    l2 = worst * (1 + ROUND) + 1e-15 - bounds.width_lower(q, c, 4)
    # C1: three blocks, each reweighted-evicted to half
    blocks = jnp.arange(n).reshape(3, n // 3)
    keep = jnp.arange(n) % 2 == 0
    bw = jnp.where(keep, c.logw + pert / 3, -jnp.inf)
    ex = [mkv.attend_and_mass(q, mkv.Cache(c.keys[b], c.values[b], c.logw[b])) for b in blocks]
    sm = [mkv.attend_and_mass(q, mkv.Cache(c.keys[b], c.values[b], bw[b])) for b in blocks]
    ec = jnp.linalg.norm(mkv.errors(q, c, mkv.Cache(c.keys, c.values, bw)), axis=1)
    cb = bounds.composition_bound(jnp.stack([a for a, _ in ex]), jnp.stack([z for _, z in ex]),
                                  jnp.stack([a for a, _ in sm]), jnp.stack([z for _, z in sm]))
    c1 = cb * (1 + ROUND) + 1e-12 - ec
    return jnp.stack([jnp.min(u1), jnp.min(u2), jnp.min(u3), l2, jnp.min(c1)])


# one program checks every family's instances (they share their shapes); each family compiles
# only its generator
VIOLATIONS = jax.jit(jax.vmap(_violations))


@pytest.mark.parametrize("family", sorted(synthetic.FAMILIES))
def test_no_violation_10000_instances(family):
    """1500 instances per family x 7 families = 10,500 instances, every bound checked."""
    kw = dict(n=12, d=8, dv=4, p=8, dtype=jnp.float64)
    if family == "heavy":
        kw.update(sinks=1, hitters=2)
    keys = jax.random.split(jax.random.PRNGKey(zlib.crc32(family.encode())), 1500)
    instances = jax.jit(jax.vmap(lambda k: synthetic.make(family, k, **kw)))(keys)
    slack = np.asarray(VIOLATIONS(instances, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)))
    assert np.isfinite(slack).all()
    assert slack.min() >= 0, dict(zip("U1 U2 U3 L2 C1".split(), slack.min(0)))


# ----------------------------------------------------------------------------- U1 .. U3


def test_U1_eviction_bound(rng):
    for _ in range(30):
        q, c = 3 * rng.normal(size=(6, 4)), mkv.Cache(rng.normal(size=(10, 4)),
                                                      rng.normal(size=(10, 2)))
        ev = rng.random(10) < 0.6
        ev[3] = False
        a, _, pm = np_attention(q, *c)
        err = np.linalg.norm(np_attention(q, *(np.asarray(x)[~ev] for x in c))[0] - a, axis=1)
        eps = (pm * ev).sum(1)
        far = np.linalg.norm(np.asarray(c.values)[None, ev] - a[:, None], axis=2).max(1)
        ref = eps / (1 - eps) * far
        # same formula two ways; 1 - eps cancels when eps -> 1 (conditioning 1/(1-eps))
        np.testing.assert_allclose(bounds.eviction_bound(q, c, ev), ref, rtol=1e-10)
        assert (err <= ref * (1 + ROUND)).all()


def test_U2_softmax_tv_lemma_tight():
    """max TV over shifts within a band of half-width delta = tanh(delta/2), attained by two atoms
    with masses a = 1/(1+e^delta) and 1-a shifted by +delta and -delta."""
    rng = np.random.default_rng(0)
    for delta in (0.01, 0.3, 1.0, 2.5, 7.0):
        bound = float(bounds.softmax_tv_bound(delta))
        np.testing.assert_allclose(bound, np.tanh(delta / 2), rtol=1e-15)
        x = np.exp(delta)
        a = 1 / (1 + x)
        p = np.array([a, 1 - a])
        pp = p * np.exp([delta, -delta])
        pp /= pp.sum()
        np.testing.assert_allclose(0.5 * np.abs(pp - p).sum(), bound, rtol=1e-12)  # attained
        for _ in range(300):  # never exceeded
            n = rng.integers(2, 9)
            s = rng.normal(size=n) * 3
            shift = rng.uniform(-delta, delta, n) + rng.normal()
            shift = shift - shift.min() - delta  # band of width <= 2 delta
            p = np.exp(s - s.max()); p /= p.sum()
            q = np.exp(s + shift - (s + shift).max()); q /= q.sum()
            assert 0.5 * np.abs(q - p).sum() <= bound * (1 + ROUND)


def test_U2_logit_bound(rng):
    for _ in range(30):
        c = mkv.Cache(rng.normal(size=(9, 3)), rng.normal(size=(9, 2)))
        q = 2 * rng.normal(size=(5, 3))
        delta = rng.uniform(0, 2)
        newk = np.asarray(c.keys) + rng.normal(size=(9, 3)) * 0.3
        moved = (q @ (newk - np.asarray(c.keys)).T) / np.sqrt(3)  # logit shifts
        d_eff = np.abs(moved).max()
        err = np.linalg.norm(np_attention(q, newk, c.values)[0] - np_attention(q, *c)[0], axis=1)
        assert (err <= float(bounds.logit_bound(d_eff, c.values)) * (1 + ROUND)).all()
        del delta


def test_U3_merging_bound(rng):
    for _ in range(30):
        c = mkv.Cache(rng.normal(size=(12, 4)), rng.normal(size=(12, 2)), rng.normal(size=12))
        q = rng.normal(size=(6, 4)) * rng.uniform(0.5, 4)
        cov = mkv.compressibility.covering_radius(c.keys, 4)
        s = summarize.merge(c, cov.assignment, 4, keys=np.asarray(c.keys)[np.asarray(cov.centres)])
        err = np.linalg.norm(np.asarray(mkv.errors(q, c, s)), axis=1)
        diam = max(np.linalg.norm(a - b) for a in np.asarray(c.values) for b in np.asarray(c.values))
        ref = np.tanh(np.linalg.norm(q, axis=1) / 2 / 2 * float(cov.radius)) * diam
        got = bounds.merging_bound(q, c, cov.assignment, np.asarray(c.keys)[np.asarray(cov.centres)])
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        assert (err <= ref * (1 + ROUND)).all()


# ----------------------------------------------------------------------------- U4


def _mm_instance(rng, n=9, p=7, d=3):
    c = mkv.Cache(rng.normal(size=(n, d)), rng.normal(size=(n, 1)), rng.normal(size=n) * 0.5)
    return 2 * rng.normal(size=(p, d)), c, rng.random(p) + 0.1


def test_U4_refit_worst_case_attained(rng):
    for _ in range(10):
        q, c, w = _mm_instance(rng)
        kept = np.sort(rng.choice(9, 4, replace=False))
        beta = fit.mass_match(q, c, kept, weights=w)
        worst = bounds.refit_worst_case(q, c, np.asarray(c.keys)[kept], beta, weights=w)
        # the worst value vector: top right singular vector of (I - Pi) X
        x = x_operator(q, c, w)
        dummy = mkv.Cache(np.asarray(c.keys)[kept], np.zeros((4, 1)), beta)
        xh = np.sqrt(w / w.sum())[:, None] * np_attention(q, *dummy)[2]
        qb = col_basis(xh)
        vt = np.linalg.svd(x - qb @ (qb.T @ x))[2][0]
        for v, attained in ((vt, True), (rng.normal(size=9), False)):
            v = v / np.linalg.norm(v)
            cv = mkv.Cache(c.keys, v[:, None], c.logw)
            vals = fit.fit_values(q, cv, np.asarray(c.keys)[kept], beta, weights=w)
            r = float(mkv.risk(q, cv, mkv.Cache(np.asarray(c.keys)[kept], vals, beta), weights=w))
            if attained:
                np.testing.assert_allclose(r, worst, rtol=1e-8)
            assert r <= worst * (1 + 1e-8)
        assert worst >= float(bounds.width_lower(q, c, 4, weights=w)) * (1 - ROUND)


def test_U4_max_volume_css_bound(rng):
    for _ in range(10):
        q, c, w = _mm_instance(rng, n=8, p=8)
        x = x_operator(q, c, w)
        s = np.linalg.svd(x, compute_uv=False)
        for m in (1, 2, 3, 5):
            S = bounds.max_volume_support(q, c, m, weights=w)
            qs, _ = np.linalg.qr(x[:, S])
            resid = spec2(x - qs @ (qs.T @ x))
            assert resid <= (1 + m * (8 - m)) * s[m] ** 2 * (1 + ROUND)
            # brute-force check that S maximises the volume
            vols = [np.linalg.det(x[:, list(t)].T @ x[:, list(t)])
                    for t in itertools.combinations(range(8), m)]
            np.testing.assert_allclose(np.linalg.det(x[:, S].T @ x[:, S]), max(vols), rtol=1e-9)


def test_U4_mass_correction_bound(rng):
    """U4(c) with eta computed in float64 from the factors c; bounds.mass_gap (the certificate
    a summary reports) equals it, and leaves out queries of weight zero."""
    for i in range(10):
        q, c, w = _mm_instance(rng)
        kept = np.sort(rng.choice(9, 4, replace=False))
        beta = np.asarray(fit.mass_match(q, c, kept, weights=w))
        if not np.isfinite(beta).all():
            beta = np.where(np.isfinite(beta), beta, -30.0)
        x = x_operator(q, c, w)
        cfac = np.exp(beta - np.asarray(c.logw)[kept])
        z = np_attention(q, *c)[2][:, kept] @ cfac
        eta = np.abs(1 - 1 / z).max()
        summ = mkv.Cache(np.asarray(c.keys)[kept], np.asarray(c.values)[kept], beta)
        np.testing.assert_allclose(float(bounds.mass_gap(q, c, summ, weights=w)), eta,
                                   rtol=1e-9)
        if i == 0:  # a query of weight zero is not part of the law
            worst = int(np.argmax(np.abs(1 - 1 / z)))
            w0 = np.asarray(w).copy()
            w0[worst] = 0.0
            rest = np.abs(1 - 1 / z)[np.arange(len(z)) != worst].max()
            np.testing.assert_allclose(float(bounds.mass_gap(q, c, summ, weights=w0)), rest,
                                       rtol=1e-9)
        qs, _ = np.linalg.qr(x[:, kept])
        lhs = np.sqrt(bounds.refit_worst_case(q, c, np.asarray(c.keys)[kept], beta, weights=w))
        rhs = np.linalg.norm(x - qs @ (qs.T @ x), 2) + eta * np.linalg.norm(x, 2)
        assert lhs <= rhs * (1 + ROUND)


# ----------------------------------------------------------------------------- L2, L2', M1


def _linear_maps(rng, q, c, m):
    """(name, L) for value-linear summaries of rank <= m chosen without looking at V."""
    n, p = c.n, len(q)
    kept = np.sort(rng.choice(n, m, replace=False))
    yield "eviction", eviction_map(q, c, kept)
    beta = np.asarray(c.logw)[kept] + rng.normal(size=m)
    ph = np_attention(q, np.asarray(c.keys)[kept], np.zeros((m, 1)), beta)[2]
    L = np.zeros((p, n)); L[:, kept] = ph
    yield "reweighting", L
    labels = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    merged = summarize.merge(c, labels, m).cache
    wts = np.exp(np.asarray(c.logw))
    R = np.stack([np.where(labels == i, wts, 0) / wts[labels == i].sum() for i in range(m)])
    yield "merging", np_attention(q, merged.keys, np.zeros((m, 1)), merged.logw)[2] @ R
    pm = np_attention(q, *c)[2]
    sw = np.full(p, 1 / np.sqrt(p))[:, None]
    qb = col_basis(sw * ph)
    yield "ls_refit", (qb @ (qb.T @ (sw * pm))) / sw  # Pi X, un-weighted


def test_L2_width_lower_value_class(rng):
    for _ in range(20):
        n, m = 10, int(rng.integers(1, 6))
        c = mkv.Cache(rng.normal(size=(n, 4)), rng.normal(size=(n, 1)), rng.normal(size=n))
        q = rng.normal(size=(12, 4)) * rng.uniform(0.5, 5)
        lower = float(bounds.width_lower(q, c, m))
        x = x_operator(q, c)
        np.testing.assert_allclose(lower, np.linalg.svd(x, compute_uv=False)[m] ** 2, rtol=1e-10)
        for name, L in _linear_maps(rng, q, c, m):
            diff = x - L / np.sqrt(len(q))
            worst = spec2(diff)
            assert worst >= lower * (1 - ROUND), name
            # the worst case is attained by the summary itself, for values = top singular vector
            v = np.linalg.svd(diff)[2][0]
            achieved = ((diff @ v) ** 2).sum()
            np.testing.assert_allclose(achieved, worst, rtol=1e-10)
            if name == "eviction":
                cv = mkv.Cache(c.keys, v[:, None], c.logw)
                kept = np.flatnonzero(np.abs(L).sum(0) > 0)
                r = mkv.risk(q, cv, summarize.evict(cv, kept))
                np.testing.assert_allclose(r, worst, rtol=1e-10)


def test_L2prime_average_width(rng):
    """E_V R = dv s^2 ||X - L_w||_F^2 >= dv s^2 sum_{i>m} sigma_i^2 (Monte Carlo, 3 s.e.)."""
    n, m, dv, s = 10, 3, 2, 0.7
    c = mkv.Cache(rng.normal(size=(n, 4)), np.zeros((n, dv)))
    q = 2 * rng.normal(size=(8, 4))
    kept = np.array([1, 4, 7])
    L = eviction_map(q, c, kept)
    x = x_operator(q, c)
    closed = dv * s ** 2 * np.linalg.norm(x - L / np.sqrt(8), "fro") ** 2
    tail = float(bounds.width_average_lower(q, c, m))
    assert closed >= dv * s ** 2 * tail * (1 - ROUND)
    draws = []
    for _ in range(3000):
        V = s * rng.normal(size=(n, dv))
        pm = np_attention(q, *c)[2]
        draws.append((((pm - L) @ V) ** 2).sum(1).mean())
    iv = mkv.mc_interval(draws, level=0.997)
    assert iv.low <= closed <= iv.high


def test_M1_truncated_svd_attains_width(rng):
    for _ in range(10):
        c = mkv.Cache(rng.normal(size=(9, 3)), np.zeros((9, 1)))
        q = 2 * rng.normal(size=(7, 3))
        x = x_operator(q, c)
        u, s, vt = np.linalg.svd(x)
        for m in (1, 3, 5):
            xm = (u[:, :m] * s[:m]) @ vt[:m]
            np.testing.assert_allclose(spec2(x - xm), bounds.width_lower(q, c, m), rtol=1e-10)


# ----------------------------------------------------------------------------- L3


def test_L3_lookup_tail_closed_form():
    for n, gap in ((8, 4.0), (16, 8.0), (32, 2.0)):
        inst = synthetic.lookup(jax.random.PRNGKey(n), n=n, d=32, dv=1, gap=gap, dtype=jnp.float64)
        for m in (1, n // 2, n - 1):
            got = float(bounds.width_average_lower(inst.queries, inst.cache, m))
            np.testing.assert_allclose(got, bounds.lookup_tail(n, m, gap), rtol=1e-8)
            den = np.exp(gap) + n - 1
            np.testing.assert_allclose(float(bounds.width_lower(inst.queries, inst.cache, m)),
                                       ((np.exp(gap) - 1) / den) ** 2 / n, rtol=1e-8)


def test_L3_lookup_support_linear():
    """Support needed for E_V R <= eps on the lookup family: m_req = ceil(n (1 - eps/(a-o)^2)),
    measured from the spectrum of each instance (d = 64 >= n, orthonormal keys)."""
    gap, frac = 6.0, 0.3
    for n in (8, 16, 32, 64):
        inst = synthetic.lookup(jax.random.PRNGKey(1), n=n, d=64, dv=1, gap=gap, dtype=jnp.float64)
        den = np.exp(gap) + n - 1
        eps = frac * ((np.exp(gap) - 1) / den) ** 2
        sv = np.asarray(mkv.compressibility.attention_singular_values(inst.queries, inst.cache))
        tails = [float((sv[m:] ** 2).sum()) for m in range(1, n + 1)]
        np.testing.assert_allclose(  # the library's L2' at one budget agrees
            bounds.width_average_lower(inst.queries, inst.cache, n // 2), tails[n // 2 - 1])
        m_req = 1 + next(i for i, t in enumerate(tails) if t <= eps * (1 + 1e-9))
        assert m_req == int(np.ceil(n * (1 - frac) - 1e-9)), (n, m_req)


# ----------------------------------------------------------------------------- C1, C2


def test_C1_composition_bound(rng):
    for _ in range(30):
        n, B = 12, 3
        c = mkv.Cache(rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=n))
        q = 2 * rng.normal(size=(5, 3))
        blocks = np.split(rng.permutation(n), B)
        fac = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.3, 3, n))
        for b in blocks:
            fac[b[0]] = 1.0
        with np.errstate(divide="ignore"):
            bw = np.asarray(c.logw) + np.log(fac)
        ex = [np_attention(q, *(np.asarray(x)[b] for x in c))[:2] for b in blocks]
        sm = [np_attention(q, np.asarray(c.keys)[b], np.asarray(c.values)[b], bw[b])[:2]
              for b in blocks]
        err = np.linalg.norm(np_attention(q, c.keys, c.values, bw)[0]
                             - np_attention(q, *c)[0], axis=1)
        bound = bounds.composition_bound(np.stack([a for a, _ in ex]), np.stack([z for _, z in ex]),
                                         np.stack([a for a, _ in sm]), np.stack([z for _, z in sm]))
        assert (err <= np.asarray(bound) * (1 + ROUND)).all()


def test_C2_merge_reduce_triangle(rng):
    for _ in range(30):
        c = mkv.Cache(rng.normal(size=(12, 3)), rng.normal(size=(12, 2)))
        q = 2 * rng.normal(size=(6, 3))
        s1 = summarize.merge(c, np.arange(12) // 2, 6).cache
        s2 = summarize.evict(s1, np.array([0, 2, 3, 5])).cache
        e21 = np.linalg.norm(mkv.errors(q, s1, s2), axis=1)
        e10 = np.linalg.norm(mkv.errors(q, c, s1), axis=1)
        e20 = np.linalg.norm(mkv.errors(q, c, s2), axis=1)
        assert (e20 <= (e21 + e10) * (1 + ROUND)).all()
        l0, l1, l2 = (np.asarray(mkv.log_mass(q, x)) for x in (c, s1, s2))
        np.testing.assert_allclose(l2 - l0, (l2 - l1) + (l1 - l0), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- hypothesis


finite = st.floats(-4, 4, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(k=hnp.arrays(np.float64, (6, 3), elements=finite),
       v=hnp.arrays(np.float64, (6, 2), elements=finite),
       b=hnp.arrays(np.float64, (6,), elements=finite),
       q=hnp.arrays(np.float64, (4, 3), elements=finite),
       ev=hnp.arrays(bool, (6,)),
       shift=hnp.arrays(np.float64, (6,), elements=st.floats(-1, 1, width=64)))
# U1 tight to the last digit: one kept atom with 1e-7 of the mass, every evicted value equal (the
# bound then needs 1 - eps and |v_j - A| without cancellation)
@example(k=np.array([[-4.0, 0, 0], [2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, -4, 0]]),
         v=np.array([[0.0, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1]]),
         b=np.array([-3.0, -3, -3, -3, -3, 4]), q=np.array([[1.0, -3, 0]] + [[0.0, 0, 0]] * 3),
         ev=np.ones(6, bool), shift=np.zeros(6))
def test_hypothesis_instances(k, v, b, q, ev, shift):
    ev[0] = False
    c = mkv.Cache(k, v, b)
    a = np_attention(q, k, v, b)[0]
    e = np.linalg.norm(np_attention(q, k[~ev], v[~ev], b[~ev])[0] - a, axis=1)
    assert (e <= np.asarray(bounds.eviction_bound(q, c, ev)) * (1 + ROUND) + 1e-12).all()
    e2 = np.linalg.norm(np_attention(q, k, v, b + shift)[0] - a, axis=1)
    assert (e2 <= float(bounds.logit_bound(1.0, v)) * (1 + ROUND) + 1e-12).all()
    kept = np.flatnonzero(~ev)
    if len(kept) <= 5:
        worst = spec2(x_operator(q, c) - eviction_map(q, c, kept) / 2.0)
        assert worst >= float(bounds.width_lower(q, c, len(kept))) * (1 - ROUND) - 1e-15


# ----------------------------------------------------------------------------- adversarial


def _adam_ascent(f, x0, steps=300, lr=0.05):
    g = jax.jit(jax.vmap(jax.value_and_grad(f)))
    x, m, v = x0, jax.tree.map(jnp.zeros_like, x0), jax.tree.map(jnp.zeros_like, x0)
    best = -np.inf
    for t in range(1, steps + 1):
        val, gr = g(x)
        best = max(best, float(jnp.nanmax(val)))
        gr = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), gr)
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, gr)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, gr)
        x = jax.tree.map(lambda a, b, c: a + lr * (b / (1 - 0.9 ** t)) /
                         (jnp.sqrt(c / (1 - 0.999 ** t)) + 1e-12), x, m, v)
    return max(best, float(jnp.nanmax(g(x)[0])))


@pytest.mark.parametrize("n", [6, 64])
def test_gradient_ascent_adversarial(n):
    """Maximise error / bound over the instance by gradient ascent from 16 random starts: the
    ratio approaches but never exceeds 1 (U1, U2, U3, C1) and worst / width >= 1 (L2); at n = 6
    and at n = 64 (two thirds of the atoms evicted, three merged groups, two blocks; 1000 steps,
    the larger instance being slower to climb)."""
    d, dv, p = 2, 2, 3
    key = jax.random.PRNGKey(0)
    starts = {
        "k": jax.random.normal(key, (16, n, d)),
        "v": jax.random.normal(jax.random.fold_in(key, 1), (16, n, dv)),
        "b": jax.random.normal(jax.random.fold_in(key, 2), (16, n)),
        "q": 2 * jax.random.normal(jax.random.fold_in(key, 3), (16, p, d)),
        "s": jax.random.normal(jax.random.fold_in(key, 4), (16, n)),
    }
    ev = jnp.arange(n) % 3 != 0

    def u1(x):
        c = mkv.Cache(x["k"], x["v"], x["b"])
        s = mkv.Cache(x["k"], x["v"], jnp.where(ev, -jnp.inf, x["b"]))
        e = jnp.linalg.norm(mkv.errors(x["q"], c, s), axis=1)
        return jnp.max(e / bounds.eviction_bound(x["q"], c, ev))

    def u2(x):
        c = mkv.Cache(x["k"], x["v"], x["b"])
        shift = jnp.tanh(x["s"])  # |shift| <= 1
        e = jnp.linalg.norm(mkv.errors(x["q"], c, mkv.Cache(x["k"], x["v"], x["b"] + shift)), axis=1)
        return jnp.max(e / bounds.logit_bound(1.0, x["v"]))

    labels = jnp.minimum(jnp.arange(n) // (n // 3), 2)

    def u3(x):
        c = mkv.Cache(x["k"], x["v"], x["b"])
        merged = summarize.merge(c, labels, 3).cache
        e = jnp.linalg.norm(mkv.errors(x["q"], c, merged), axis=1)
        return jnp.max(e / bounds.merging_bound(x["q"], c, labels, merged.keys))

    def c1(x):
        blocks = jnp.arange(n).reshape(2, n // 2)
        bw = jnp.where(ev, -jnp.inf, x["b"] + jnp.tanh(x["s"]))
        ex = [mkv.attend_and_mass(x["q"], mkv.Cache(x["k"][b], x["v"][b], x["b"][b]))
              for b in blocks]
        sm = [mkv.attend_and_mass(x["q"], mkv.Cache(x["k"][b], x["v"][b], bw[b])) for b in blocks]
        full = mkv.Cache(x["k"], x["v"], x["b"])
        e = jnp.linalg.norm(mkv.errors(x["q"], full, mkv.Cache(x["k"], x["v"], bw)), axis=1)
        bd = bounds.composition_bound(jnp.stack([a for a, _ in ex]), jnp.stack([z for _, z in ex]),
                                      jnp.stack([a for a, _ in sm]), jnp.stack([z for _, z in sm]))
        return jnp.max(e / bd)

    kept = jnp.array([0, 3])

    def l2(x):  # minimise worst / width  <=> maximise width / worst
        c = mkv.Cache(x["k"], x["v"], x["b"])
        xx = mkv.attention_weights(x["q"], c) / jnp.sqrt(p)
        ph = mkv.attention_weights(x["q"], mkv.Cache(x["k"][kept], x["v"][kept], x["b"][kept]))
        L = jnp.zeros((p, n)).at[:, kept].set(ph) / jnp.sqrt(p)
        worst = jnp.linalg.svd(xx - L, compute_uv=False)[0] ** 2
        return bounds.width_lower(x["q"], c, 2) / worst

    for name, f in (("U1", u1), ("U2", u2), ("U3", u3), ("C1", c1), ("L2", l2)):
        worst_ratio = _adam_ascent(f, starts, steps=300 if n <= 6 else 1000)
        assert worst_ratio <= 1 + ROUND, (name, worst_ratio)
        # the search is effective: U1-U3 and C1 are approached to within 1% (they are tight)
        assert worst_ratio >= (0.99 if name != "L2" else 0.5), (name, worst_ratio)


def test_L4_value_aware_supports_lower_bound(rng):
    """L4: with v drawn uniformly from the top-k right singular space of X, every summary of at
    most m atoms whose keys and log-weights are one of J value-blind maps of its support errs by
    at least (1 - t_k) sigma_k^2, with probability >= 1 - delta: every support and map enumerated
    (float64 least squares), Monte Carlo over v (4 s.e.); and the ``minimax`` rule itself (J = 3),
    which picks its support knowing v."""
    n, d, m, delta = 12, 8, 2, 0.5
    keys = 2.5 * rng.normal(size=(n, d))
    logw = 0.5 * rng.normal(size=n)
    q = np.repeat(keys, 3, axis=0) + 0.3 * rng.normal(size=(3 * n, d))  # lookups: a flat spectrum
    c = mkv.Cache(keys, np.zeros((n, 1)), logw)
    x = x_operator(q, c)
    maps = [lambda s: logw[s], lambda s: np.zeros(len(s))]  # eviction's weights; uniform weights
    bases = []
    for size in range(1, m + 1):
        for s in itertools.combinations(range(n), size):
            s = np.asarray(s)
            for beta in maps:
                bases.append(col_basis(x_operator(q, (keys[s], np.zeros((size, 1)), beta(s)))))
    lower = bounds.value_aware_lower(q, c, m, menu=len(maps), delta=delta)
    assert len(bases) == round(np.exp(lower.log_subspaces))
    _, sig, rt = np.linalg.svd(x)
    k = lower.rank
    np.testing.assert_allclose(lower.bound, (1 - lower.share) * sig[k - 1] ** 2, rtol=1e-12)
    assert lower.bound > 0.2 * sig[m] ** 2  # informative here: a fifth of the value-blind L2
    draws = 400
    coef = rng.normal(size=(draws, k))
    vs = (coef / np.linalg.norm(coef, axis=1, keepdims=True)) @ rt[:k]  # [draws, n] unit values
    xv = vs @ x.T  # [draws, p]
    best = np.min([np.sum(xv ** 2, 1) - np.sum((xv @ b) ** 2, 1) for b in bases], axis=0)
    # a second computation of one support's error: least squares on the summary's attention
    s = np.asarray([0, 5])
    fs = x_operator(q, (keys[s], np.zeros((2, 1)), logw[s]))
    sol = np.linalg.lstsq(fs, xv[0], rcond=None)[0]
    assert best[0] <= np.sum((fs @ sol - xv[0]) ** 2) * (1 + ROUND)
    ok = np.mean(best >= lower.bound)
    assert ok >= 1 - delta - 4 * np.sqrt(delta * (1 - delta) / draws), ok
    # the rule: support chosen knowing v, its three candidates value-blind maps of the support
    rule_lower = bounds.value_aware_lower(q, c, m, menu=3, delta=delta)
    assert rule_lower.bound > 0
    kr = rule_lower.rank
    coef = rng.normal(size=(60, kr))
    vs = (coef / np.linalg.norm(coef, axis=1, keepdims=True)) @ rt[:kr]
    observed = jnp.asarray(keys[None, :, :] + 0.3 * rng.normal(size=(1, n, d)))
    compress = jax.jit(mkv.rules.get("minimax").compress, static_argnums=1)
    risks = []
    for v in vs:
        cv = mkv.Cache(keys, v[:, None], logw)
        summ = compress(cv, m, observed, jax.random.PRNGKey(0))
        risks.append(float(mkv.risk(q, cv, summ.cache)))
    ok = np.mean(np.asarray(risks) >= rule_lower.bound)
    assert ok >= 1 - delta - 4 * np.sqrt(delta * (1 - delta) / len(risks)), ok


@pytest.mark.parametrize("n, m", [(12, 2), (64, 8)])
def test_L4_minimax_worst_case_by_gradient_ascent(n, m):
    """L4 on the ``minimax`` rule's worst case: its risk over unit-norm values, maximised by
    projected gradient ascent on the sphere (forward-mode derivatives through the rule, its
    discrete choices held at each step) from the top two right singular vectors of X and two
    random starts, is >= L4's bound for its class (J = 3), as every rule of the class must be;
    the ascent climbs (its best >= every start's risk and >= the best of 64 random unit values).
    At n = 12 and n = 64 (lookups: a flat spectrum). The ratio to sigma_{m+1}^2 (M1's value for
    value-linear rules) is measured in docs/theory.md §9.6, not asserted."""
    rng = np.random.default_rng(n)
    d = 8
    keys = 2.5 * rng.normal(size=(n, d))
    logw = 0.5 * rng.normal(size=n)
    q = np.repeat(keys, 3, axis=0) + 0.3 * rng.normal(size=(3 * n, d))
    lower = bounds.value_aware_lower(q, mkv.Cache(keys, np.zeros((n, 1)), logw), m, menu=3)
    assert lower.bound > 0
    observed = jnp.asarray(keys[None] + 0.3 * rng.normal(size=(1, n, d)))
    compress = mkv.rules.get("minimax").compress

    def risk(v):
        cv = mkv.Cache(jnp.asarray(keys), v[:, None], jnp.asarray(logw))
        return mkv.risk(jnp.asarray(q), cv, compress(cv, m, observed, jax.random.PRNGKey(0)).cache)

    value_and_grad = jax.jit(lambda v: (risk(v), jax.jacfwd(risk)(v)))
    rt = np.linalg.svd(x_operator(q, (keys, np.zeros((n, 1)), logw)), full_matrices=False)[2]
    randoms = rng.normal(size=(66, n))
    randoms /= np.linalg.norm(randoms, axis=1, keepdims=True)
    best, start_risks = 0.0, []
    for v in [rt[0], rt[1], randoms[0], randoms[1]]:
        v = jnp.asarray(v)
        for step in range(30):
            val, g = value_and_grad(v)
            start_risks += [float(val)] if step == 0 else []
            best = max(best, float(val))
            g = g - jnp.dot(g, v) * v  # the sphere's tangent
            v = v + 0.3 * g / (jnp.linalg.norm(g) + 1e-300)
            v = v / jnp.linalg.norm(v)
    random_best = max(float(jax.jit(risk)(jnp.asarray(v))) for v in randoms[2:])
    assert best >= lower.bound, (best, lower.bound)
    assert best >= max(start_risks) and best >= random_best, (best, start_risks, random_best)
