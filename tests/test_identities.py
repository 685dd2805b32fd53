"""Exact identities I1-I3 and E1 of docs/theory.md, to float64 round-off (<= 1e-10 relative)."""

import jax.numpy as jnp
import numpy as np
from conftest import np_attention

import minimaxkv as mkv
from minimaxkv import bounds, compressibility as cm, summarize

REL = 1e-10


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


SHAPES = [(7, 3, 2, 1), (16, 5, 4, 3), (33, 9, 8, 5)]  # (n, p, d, dv): few shapes, few compiles


def random_instance(rng, n=None):
    n_, p, d, dv = SHAPES[int(rng.integers(len(SHAPES)))]
    n = n or n_
    scale = rng.uniform(0.1, 4)
    return (scale * rng.normal(size=(p, d)),
            mkv.Cache(rng.normal(size=(n, d)), rng.normal(size=(n, dv)), rng.normal(size=n)))


def test_I1_block_decomposition(rng):
    for _ in range(200):
        q, c = random_instance(rng)
        n = c.n
        cuts = np.sort(rng.choice(np.arange(1, n), size=3, replace=False))
        blocks = np.split(np.arange(n), cuts)
        outs, lzs = zip(*(mkv.attend_and_mass(q, mkv.Cache(*(x[b] for x in c))) for b in blocks))
        a, lz = mkv.combine(jnp.stack(outs), jnp.stack(lzs))
        ra, rlz, _ = np_attention(q, *c)
        assert rel_err(a, ra) <= REL and rel_err(lz, rlz) <= REL
        # lambda_B = Z_B / Z
        lam = np.exp(np.asarray(lzs) - rlz[None, :])
        np.testing.assert_allclose(lam.sum(0), 1.0, rtol=REL)


def test_I2_reweighted_subset_identity(rng):
    for _ in range(200):
        q, c = random_instance(rng)
        factors = np.where(rng.random(c.n) < 0.4, 0.0, rng.uniform(0, 3, c.n))
        factors[rng.integers(c.n)] = 1.0  # keep at least one atom
        closed = bounds.reweighted_error(q, c, factors)
        with np.errstate(divide="ignore"):
            logw = np.asarray(c.logw) + np.log(factors)
        direct = np_attention(q, c.keys, c.values, logw)[0] - np_attention(q, *c)[0]
        assert rel_err(closed, direct) <= REL


def test_I2_eviction_form(rng):
    """Plain eviction: error = || sum_E p_j (v_j - A) || / (1 - eps)."""
    for _ in range(50):
        q, c = random_instance(rng, n=12)
        ev = rng.random(12) < 0.5
        ev[0] = False
        a, _, pm = np_attention(q, *c)
        num = np.einsum("pn,pnv->pv", pm * ev, np.asarray(c.values)[None] - a[:, None])
        ref = np.linalg.norm(num, axis=1) / (1 - (pm * ev).sum(1))
        got = np.linalg.norm(bounds.reweighted_error(q, c, (~ev).astype(float)), axis=1)
        assert rel_err(got, ref) <= REL


def test_I3_merging_as_modified_cache(rng):
    for _ in range(200):
        q, c = random_instance(rng)
        k = int(rng.choice([1, 3, c.n]))
        labels = rng.integers(0, k, c.n)
        rep = rng.normal(size=(k, c.keys.shape[1]))  # any representative keys
        for keys in (None, rep):
            s = summarize.merge(c, jnp.asarray(labels), k, keys=keys).cache
            if keys is None:  # weighted centroids
                w = np.exp(np.asarray(c.logw))
                cen = np.stack([(w[labels == i, None] * np.asarray(c.keys)[labels == i]).sum(0)
                                / max(w[labels == i].sum(), 1e-300) for i in range(k)])
            else:
                cen = rep
            replaced = mkv.Cache(cen[labels], c.values, c.logw)
            a, lz = mkv.attend_and_mass(q, s)
            ra, rlz, _ = np_attention(q, *replaced)
            assert rel_err(a, ra) <= REL and rel_err(lz, rlz) <= REL


def test_E1_gamma_sandwich(rng):
    """R_P = sum_i w_i ||sum_S c_j phi_j||^2 / z_i^2, so c'Gc / max z^2 <= R <= c'Gc / min z^2."""
    for _ in range(100):
        q, c = random_instance(rng, n=15)
        w = rng.random(len(q))
        factors = np.where(rng.random(15) < 0.5, 0.0, rng.uniform(0.2, 2, 15))
        factors[0] = 1.0
        gam = np.asarray(cm.value_centred_covariance(q, c, weights=w))
        quad = factors @ gam @ factors
        with np.errstate(divide="ignore"):
            s = mkv.Cache(c.keys, c.values, np.asarray(c.logw) + np.log(factors))
        r = float(mkv.risk(q, c, s, weights=w))
        z = np_attention(q, *c)[2] @ factors
        exact = (w / w.sum() * (np.linalg.norm(np.asarray(bounds.reweighted_error(q, c, factors))
                                               * z[:, None], axis=1) ** 2) / z ** 2).sum()
        assert abs(r - exact) <= REL * r
        assert quad / z.max() ** 2 * (1 - REL) <= r <= quad / z.min() ** 2 * (1 + REL) + 1e-300
