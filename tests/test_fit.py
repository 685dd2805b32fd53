"""Fitting primitives against SciPy / NumPy solvers."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention
from scipy.optimize import nnls as scipy_nnls

import minimaxkv as mkv
from minimaxkv import fit, linalg


def test_nnls_matches_scipy(rng):
    for _ in range(20):
        a = rng.normal(size=(15, 5))
        y = rng.normal(size=15)
        ref, rnorm = scipy_nnls(a, y)
        got = np.asarray(linalg.nnls(jnp.asarray(a), jnp.asarray(y), 5000))
        assert (got >= 0).all()
        obj = np.linalg.norm(a @ got - y)
        assert obj <= rnorm * (1 + 1e-8) + 1e-12
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_box_constrained_nnls(rng):
    a = rng.normal(size=(20, 4))
    y = a @ np.array([5.0, 0.001, 1.0, -2.0])
    got = np.asarray(linalg.nnls(jnp.asarray(a), jnp.asarray(y), 5000, np.exp(-3), np.exp(3)))
    assert (got >= np.exp(-3) - 1e-15).all() and (got <= np.exp(3) + 1e-12).all()
    from scipy.optimize import lsq_linear
    ref = lsq_linear(a, y, bounds=(np.exp(-3), np.exp(3)), tol=1e-14).x
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_mass_kernel_matches_augmented_lsq_linear(rng):
    """fit.mass_coefficients (weights, pull to 1, box) against SciPy's bounded least squares
    on the stacked rows [sqrt(w) M; sqrt(pi) I] with targets [sqrt(w) t; sqrt(pi)]: in Gram
    form (r > k) and through the factor (r < k, the k x k Gram matrix never formed)."""
    from scipy.optimize import lsq_linear

    for (r, k, exact), (lo, hi) in itertools.product(((30, 6, 512), (8, 20, 0)),
                                                      ((0.0, np.inf), (np.exp(-3), np.exp(3)))):
        m, t = rng.uniform(size=(r, k)), rng.uniform(0.5, 2.0, size=r)
        w = rng.uniform(0.1, 1.0, size=r)
        pull = (np.r_[0.0, 0.0, rng.uniform(0.1, 2.0, size=k - 2)] if r > k
                else rng.uniform(0.1, 2.0, size=k))  # r < k: a pull on every atom, one optimum
        stacked = np.vstack([np.sqrt(w)[:, None] * m, np.diag(np.sqrt(pull))])
        ref = lsq_linear(stacked, np.r_[np.sqrt(w) * t, np.sqrt(pull)], bounds=(lo, hi),
                         tol=1e-14).x
        got = fit.mass_coefficients(jnp.asarray(m), jnp.asarray(t), jnp.asarray(w),
                                    pull=jnp.asarray(pull), bounds=(lo, hi), iters=20000,
                                    exact_up_to=exact)
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)


def test_value_kernel_matches_augmented_lstsq(rng):
    """fit.fitted_values (weights, per-slot ridge, prior) against NumPy's least squares on
    [sqrt(w) P; sqrt(lam) I] and [sqrt(w) A; sqrt(lam) V0], with more queries than slots (the
    k x k normal equations) and fewer (the r x r push-through form), with and without a prior
    and weights; without a ridge, the minimum-norm solution of a rank-deficient system."""
    for r, k in ((25, 5), (6, 40)):
        p, a, w = rng.uniform(size=(r, k)), rng.normal(size=(r, 3)), rng.uniform(0.1, 1, size=r)
        lam, v0 = rng.uniform(0.01, 1.0, size=k), rng.normal(size=(k, 3))
        for wt, prior in ((w, v0), (None, None)):
            sw = np.sqrt(np.ones(r) if wt is None else wt)[:, None]
            v_ref = np.zeros((k, 3)) if prior is None else prior
            ref = np.linalg.lstsq(np.vstack([sw * p, np.diag(np.sqrt(lam))]),
                                  np.vstack([sw * a, np.sqrt(lam)[:, None] * v_ref]),
                                  rcond=None)[0]
            got = fit.fitted_values(jnp.asarray(p), jnp.asarray(a),
                                    None if wt is None else jnp.asarray(wt),
                                    ridge=jnp.asarray(lam),
                                    prior=None if prior is None else jnp.asarray(prior))
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-10, atol=1e-12)
    p, a, w = rng.uniform(size=(25, 5)), rng.normal(size=(25, 3)), rng.uniform(0.1, 1, size=25)
    deficient = np.c_[p, p[:, :1]]  # a repeated column: many solutions, one of minimum norm
    ref = np.linalg.lstsq(np.sqrt(w)[:, None] * deficient, np.sqrt(w)[:, None] * a,
                          rcond=None)[0]
    got = fit.fitted_values(jnp.asarray(deficient), jnp.asarray(a), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-8, atol=1e-10)


def test_fit_values_matches_numpy_lstsq(rng):
    c = mkv.Cache(rng.normal(size=(12, 3)), rng.normal(size=(12, 2)))
    q = rng.normal(size=(20, 3))
    w = rng.random(20)
    keys, logw = rng.normal(size=(4, 3)), rng.normal(size=4)
    got = fit.fit_values(q, c, keys, logw, weights=w)
    ph = np_attention(q, keys, np.zeros((4, 1)), logw)[2]
    a = np_attention(q, *c)[0]
    sw = np.sqrt(w / w.sum())[:, None]
    ref = np.linalg.lstsq(sw * ph, sw * a, rcond=None)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)


def test_mass_match_exact_when_possible(rng):
    """If the cache is two copies of each kept atom, weight factor 2 matches the mass exactly."""
    k = rng.normal(size=(4, 3))
    v = rng.normal(size=(4, 2))
    c = mkv.Cache(np.concatenate([k, k]), np.concatenate([v, v]))
    q = rng.normal(size=(10, 3))
    beta = fit.mass_match(q, c, np.arange(4))
    np.testing.assert_allclose(beta, np.log(2.0), atol=1e-6)
    s = fit.refit(q, c, np.arange(4))
    assert float(mkv.risk(q, c, s)) < 1e-12
    assert float(mkv.mass_error(q, c, s)) < 1e-10


def test_bad_support():
    c = mkv.Cache(np.ones((4, 2)), np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"kept: indices must lie in \[0, 4\)"):
        fit.refit(np.ones((2, 2)), c, np.array([0, 4]))
    with pytest.raises(ValueError, match="support is empty"):
        fit.refit(np.ones((2, 2)), c, np.zeros(0, int))
