"""Randomized spectra: a posteriori guarantees (S1) and agreement with the exact spectrum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import compressibility as cm


def test_S1_ritz_interlacing_and_residual(rng):
    inst = mkv.synthetic.power_law(jax.random.PRNGKey(0), n=300, d=16, dv=8, p=40,
                                   dtype=jnp.float64)
    for centred in (False, True):
        exact = np.asarray(cm.spectrum(inst.queries, inst.cache, centred=centred))
        for iters in (0, 1, 3):
            ritz = cm.randomized_spectrum(inst.queries, inst.cache, 20, centred=centred,
                                          iters=iters, key=jax.random.PRNGKey(iters))
            vals, res = np.asarray(ritz.values), np.asarray(ritz.residuals)
            tol = 1e-12 * exact[0]
            assert (vals <= exact[:20] + tol).all()  # Poincare separation
            dist = np.abs(exact[None, :] - vals[:, None]).min(1)
            assert (dist <= res + tol).all()  # residual bound


def test_randomized_vs_exact_n4096():
    """Stated tolerance: top-64 eigenvalues within 1% relative error (n = 4096, 4 power steps)."""
    inst = mkv.synthetic.power_law(jax.random.PRNGKey(1), n=4096, d=32, dv=16, p=64,
                                   dtype=jnp.float64)
    exact = np.asarray(cm.spectrum(inst.queries, inst.cache))
    approx = np.asarray(cm.spectrum(inst.queries, inst.cache, k=64,
                                   key=jax.random.PRNGKey(0)))
    rel = np.abs(approx - exact[:64]) / exact[:64]
    assert rel.max() <= 0.01, rel.max()


def test_blocked_product_with_G_equals_the_dense_matrix(monkeypatch):
    """G x computed a block of atoms at a time (last block padded) equals the dense
    ``response_covariance(...) @ x`` in float64, for uneven block splits and for one block."""
    inst = mkv.synthetic.power_law(jax.random.PRNGKey(3), n=250, d=8, dv=5, p=12,
                                   dtype=jnp.float64)
    q, c = inst.queries, inst.cache
    g = np.asarray(cm.response_covariance(q, c))
    pmat = mkv.attention_weights(q, c)
    w = jnp.full((12,), 1.0 / 12)
    for cols in (7, 12, 30):  # k < p (x expanded), k = p and k > p (blocks of F built)
        x = np.random.default_rng(cols).normal(size=(250, cols))
        for block in (64, 100, 250, 4096):  # 4 blocks (last padded), 3 blocks, one, one larger
            monkeypatch.setattr(cm, "MATMAT_BLOCK", block)
            cm._g_matmat.clear_cache()
            got = np.asarray(cm._g_matmat(pmat, w, c.values, jnp.asarray(x)))
            np.testing.assert_allclose(got, g @ x, rtol=1e-10, atol=1e-12 * np.abs(g @ x).max())


def test_S1_block_krylov_interlacing_and_residual():
    """S1 holds for the block Krylov variant too: its basis is orthonormal (Rayleigh-Ritz)."""
    inst = mkv.synthetic.power_law(jax.random.PRNGKey(0), n=300, d=16, dv=8, p=40,
                                   dtype=jnp.float64)
    for centred in (False, True):
        exact = np.asarray(cm.spectrum(inst.queries, inst.cache, centred=centred))
        for block, depth in ((4, 4), (10, 2), (20, 0)):
            ritz = cm.randomized_spectrum(inst.queries, inst.cache, 20, centred=centred,
                                          method="krylov", block=block, depth=depth,
                                          key=jax.random.PRNGKey(depth))
            vals, res = np.asarray(ritz.values), np.asarray(ritz.residuals)
            tol = 1e-12 * exact[0]
            assert (vals <= exact[:20] + tol).all()
            dist = np.abs(exact[None, :] - vals[:, None]).min(1)
            assert (dist <= res + tol).all()


def test_block_krylov_vs_exact_n4096():
    """Stated tolerance: top-64 eigenvalues within 1% relative error (n = 4096, 7 blocks of 32:
    224 product columns, against the subspace default's 768)."""
    inst = mkv.synthetic.power_law(jax.random.PRNGKey(1), n=4096, d=32, dv=16, p=64,
                                   dtype=jnp.float64)
    exact = np.asarray(cm.spectrum(inst.queries, inst.cache))
    approx = np.asarray(cm.spectrum(inst.queries, inst.cache, k=64, method="krylov",
                                   key=jax.random.PRNGKey(0)))
    rel = np.abs(approx - exact[:64]) / exact[:64]
    assert rel.max() <= 0.01, rel.max()
    with pytest.raises(ValueError, match="method"):
        cm.randomized_spectrum(inst.queries, inst.cache, 8, method="lanczos",
                               key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=">= k"):
        cm.randomized_spectrum(inst.queries, inst.cache, 64, method="krylov", block=4, depth=2,
                               key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="key="):  # no key is made up for the caller
        cm.randomized_spectrum(inst.queries, inst.cache, 8)
