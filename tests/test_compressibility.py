"""Compressibility measures against their definitions, computed by brute force in NumPy."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention

import minimaxkv as mkv
from minimaxkv import compressibility as cm


def instance(rng, n=14, p=9, d=5, dv=3):
    k, v, b = rng.normal(size=(n, d)), rng.normal(size=(n, dv)), rng.normal(size=n)
    return 2 * rng.normal(size=(p, d)), mkv.Cache(k, v, b), rng.random(p)


def test_G_closed_form(rng):
    q, c, w = instance(rng)
    a, _, pm = np_attention(q, *c)
    wn = w / w.sum()
    ref = np.zeros((14, 14))
    for i in range(len(q)):
        psi = pm[i][:, None] * np.concatenate([np.ones((14, 1)), np.asarray(c.values)], 1)
        ref += wn[i] * psi @ psi.T
    np.testing.assert_allclose(cm.response_covariance(q, c, weights=w), ref, rtol=1e-11,
                               atol=1e-14)
    assert np.linalg.eigvalsh(ref).min() > -1e-12


def test_Gamma_closed_form(rng):
    q, c, w = instance(rng)
    a, _, pm = np_attention(q, *c)
    wn = w / w.sum()
    ref = np.zeros((14, 14))
    for i in range(len(q)):
        phi = pm[i][:, None] * (np.asarray(c.values) - a[i])
        ref += wn[i] * phi @ phi.T
    gam = cm.value_centred_covariance(q, c, weights=w)
    np.testing.assert_allclose(gam, ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(gam) @ np.ones(14), 0.0, atol=1e-13)  # Gamma 1 = 0


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("p", [2, 9])  # factor narrower / wider than n
def test_exact_spectrum_both_sides(rng, centred, p):
    q, c, w = instance(rng, p=p)
    g = (cm.value_centred_covariance if centred else cm.response_covariance)(q, c, weights=w)
    ref = np.sort(np.linalg.eigvalsh(np.asarray(g)))[::-1]
    got = cm.spectrum(q, c, weights=w, centred=centred)
    np.testing.assert_allclose(got, np.clip(ref, 0, None), atol=1e-13 * ref[0] * 14)
    f = cm.response_factor(q, c, weights=w, centred=centred)
    np.testing.assert_allclose(np.asarray(f) @ np.asarray(f).T, g, atol=1e-13)


def test_spectrum_summaries():
    e = np.array([4.0, 2.0, 1.0, 0.5, 0.5])
    assert float(cm.tail_mass(e, 2)) == 2.0
    assert cm.eps_rank(e, 0.25) == 2  # tail after 2 = 2 = 0.25 * 8
    assert cm.eps_rank(e, 0.0) == 5 and cm.eps_rank(e, 1.0) == 0
    np.testing.assert_allclose(cm.effective_dimension(e, 1.0), (e / (e + 1)).sum())


def test_leverage_sums_to_effective_dimension(rng):
    q, c, w = instance(rng)
    g = np.asarray(cm.response_covariance(q, c, weights=w))
    lev = np.asarray(cm.ridge_leverage(g, 0.01))
    ref = np.diag(g @ np.linalg.inv(g + 0.01 * np.eye(14)))
    np.testing.assert_allclose(lev, ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(lev.sum(), cm.effective_dimension(np.linalg.eigvalsh(g), 0.01),
                               rtol=1e-9)


def test_attention_singular_values_are_G_of_zero_values(rng):
    q, c, w = instance(rng)
    s = cm.attention_singular_values(q, c, weights=w)
    zero = mkv.Cache(c.keys, jnp.zeros_like(c.values), c.logw)
    ev = cm.spectrum(q, zero, weights=w)
    np.testing.assert_allclose(np.asarray(s) ** 2, ev[: len(s)], atol=1e-14)


def test_entropy_and_top_mass(rng):
    q, c, _ = instance(rng)
    pm = np_attention(q, *c)[2]
    np.testing.assert_allclose(cm.attention_entropy(q, c), -(pm * np.log(pm)).sum(1), rtol=1e-11)
    np.testing.assert_allclose(cm.top_mass(q, c, 3), np.sort(pm, 1)[:, -3:].sum(1), rtol=1e-12)


def test_kcentre_two_approximation(rng):
    for trial in range(20):
        x = rng.normal(size=(9, 3)) * rng.uniform(0.1, 3)
        for m in (1, 2, 3, 4):
            cov = cm.covering_radius(x, m)
            dist = np.linalg.norm(x[:, None] - x[None], axis=2)
            opt = min(dist[:, list(s)].min(1).max() for s in itertools.combinations(range(9), m))
            # greedy radius is achieved by its own centres and within twice the optimum
            own = dist[:, np.asarray(cov.centres)].min(1).max()
            np.testing.assert_allclose(cov.radius, own, rtol=1e-12)
            assert opt - 1e-12 <= float(cov.radius) <= 2 * opt + 1e-12
            np.testing.assert_allclose(
                dist[np.arange(9), np.asarray(cov.centres)[np.asarray(cov.assignment)]],
                dist[:, np.asarray(cov.centres)].min(1), rtol=1e-12)


def test_value_radius_sandwich(rng):
    for _ in range(20):
        v = rng.normal(size=(12, 4)) * rng.uniform(0.1, 5, size=4)
        diam = max(np.linalg.norm(a - b) for a in v for b in v)
        np.testing.assert_allclose(cm.diameter(v), diam, rtol=1e-12)
        r = float(cm.value_radius(v))
        np.testing.assert_allclose(r, np.linalg.norm(v - v.mean(0), axis=1).max(), rtol=1e-12)
        assert diam / 2 - 1e-12 <= r <= diam + 1e-12


def test_G_dominates_zero_value_G(rng):
    """G - G0 = G0 o VV^T is PSD (Schur), so lambda_i(G) >= lambda_i(G0) for every i."""
    for _ in range(10):
        q, c, w = instance(rng)
        g = np.asarray(cm.response_covariance(q, c, weights=w))
        g0 = np.asarray(cm.response_covariance(q, mkv.Cache(c.keys, 0 * c.values, c.logw),
                                               weights=w))
        lg, l0 = np.linalg.eigvalsh(g)[::-1], np.linalg.eigvalsh(g0)[::-1]
        assert (lg >= l0 - 1e-13 * lg[0]).all()


def test_U3_centroid_radius(rng):
    """Merging the greedy k-centre clusters at their centroids: keys within 2 r_greedy <= 4 r*."""
    for _ in range(20):
        x = rng.normal(size=(9, 2))
        for m in (2, 3):
            cov = cm.covering_radius(x, m)
            lab = np.asarray(cov.assignment)
            cen = np.stack([x[lab == i].mean(0) for i in range(m)])
            r_cen = np.linalg.norm(x - cen[lab], axis=1).max()
            dist = np.linalg.norm(x[:, None] - x[None], axis=2)
            opt = min(dist[:, list(s)].min(1).max() for s in itertools.combinations(range(9), m))
            assert r_cen <= 2 * float(cov.radius) * (1 + 1e-12) <= 4 * opt * (1 + 1e-12)
