r"""Fitting a summary on a given support: mass-matching log-weights and least-squares values.

For a support :math:`S` (indices into the cache) and reference queries with weights :math:`w_i`:

* **mass matching**: :math:`c = \arg\min_{c\ge 0}\sum_i w_i\big(\sum_{j\in S} c_j p_j(q_i) - 1\big)^2`
  where :math:`p_j(q) = e^{s_j(q)}/Z(q)` are the cache's attention weights (the masses normalised
  per query by the full mass, so every query counts alike); the summary log-weights are
  :math:`\beta_j = b_j + \log c_j`, so that :math:`\hat Z(q)/Z(q) = \sum_{j\in S} c_j p_j(q)`.
* **least-squares values**: given the summary's keys and log-weights (hence its weights
  :math:`\hat p_j(q)`), :math:`\hat V = \arg\min_{\hat V}\sum_i w_i\lVert \hat P(q_i)\hat V - A(q_i)\rVert^2`.

These are the fitting steps of Attention Matching (Zweiger et al. 2026) and of docs/theory.md U4;
any selection rule can reuse them. Every fit in the package (these, the rules' fits, the minimax
rule's per-block fit and the brute-force oracle of :mod:`minimaxkv.bounds`) solves its two
problems with the same two kernels, :func:`mass_coefficients` and :func:`fitted_values`; they
differ only in the masses, targets, weights and regularisers they pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _check, linalg
from .attention import attend, attention_weights, prepare
from .cache import Cache, validate


def mass_coefficients(cols, target, weights=None, *, pull=None, start=None,
                      bounds=(0.0, jnp.inf), iters: int = 2000, exact_up_to: int = 512):
    r"""The mass-matching kernel: box-constrained weighted least squares with a pull to 1,

    .. math:: c = \arg\min_{l\le c\le u}\ \sum_i w_i\Big(\sum_s c_s M_{is} - t_i\Big)^2
              + \sum_s \pi_s (c_s - 1)^2,

    ``cols`` :math:`M` ``[r, k]`` (each kept atom's mass under each reference query, in any
    per-query unit shared with ``target`` :math:`t` ``[r]``), ``weights`` :math:`w` ``[r]``
    (default 1), ``pull`` :math:`\pi` ``[k]`` (default 0; a kept atom's private isolating probe,
    docs/theory.md section 9.2). Solved in Gram form by :func:`minimaxkv.linalg.nnls_gram` from
    ``start`` (default 0) with ``iters`` FISTA steps; with fewer than half as many reference
    queries as atoms (2r < k) and more atoms than ``exact_up_to``, through the factor (never
    forming the k x k Gram matrix, :func:`minimaxkv.linalg.nnls_factored`; its r x r
    eigenvalue exact up to ``exact_up_to`` as well). Pure and traceable; no input checks.
    """
    r, k = cols.shape
    if 2 * r < k and k > exact_up_to:
        b = cols if weights is None else cols * jnp.sqrt(weights)[:, None]
        g = linalg.matmul(b.T, target if weights is None else jnp.sqrt(weights) * target)
        diag = jnp.zeros((k,), cols.dtype) if pull is None else pull
        return linalg.nnls_factored(b, g + diag, diag, iters, bounds[0], bounds[1],
                                    exact_up_to=exact_up_to, x0=start)
    mw = cols if weights is None else cols * weights[:, None]
    h, g = linalg.matmul(mw.T, cols), linalg.matmul(mw.T, target)
    if pull is not None:
        h, g = h + jnp.diag(pull), g + pull
    return linalg.nnls_gram(h, g, iters, bounds[0], bounds[1], exact_up_to=exact_up_to, x0=start)


def fitted_values(attn, target, weights=None, *, ridge=None, prior=None):
    r"""The value kernel: weighted least squares with a ridge towards prior values,

    .. math:: \hat V = \arg\min_{\hat V}\ \sum_i w_i\lVert \hat p_i^T\hat V - A_i\rVert^2
              + \sum_s \lambda_s\lVert \hat v_s - v^0_s\rVert^2,

    ``attn`` :math:`\hat P` ``[r, k]`` (the summary's attention weights under each reference
    query), ``target`` :math:`A` ``[r, dv]``, ``weights`` :math:`w` ``[r]`` (default 1),
    ``ridge`` :math:`\lambda` (a scalar or ``[k]``, > 0; Cholesky) and ``prior`` :math:`V^0`
    ``[k, dv]`` (default 0). ``ridge=None``: the minimum-norm least-squares solution (SVD).
    With a ridge and fewer than half as many reference queries as atoms (2r < k), by the
    push-through identity
    :math:`(B^TB+\Lambda)^{-1}B^T=\Lambda^{-1}B^T(I_r+B\Lambda^{-1}B^T)^{-1}`,
    :math:`B=W^{1/2}\hat P`: :math:`\hat V=V^0+\Lambda^{-1}B^T(I_r+B\Lambda^{-1}B^T)^{-1}
    W^{1/2}(A-\hat PV^0)`, an r x r system, O(r^2 k) instead of O(k^3).
    Pure and traceable; no input checks.
    """
    if ridge is None:
        sw = 1.0 if weights is None else jnp.sqrt(weights)[:, None]
        return jnp.linalg.lstsq(sw * attn, sw * target)[0]
    lam = jnp.broadcast_to(jnp.asarray(ridge, attn.dtype), (attn.shape[1],))
    r, k = attn.shape
    if 2 * r < k:
        sw = jnp.ones((r,), attn.dtype) if weights is None else jnp.sqrt(weights)
        b = attn * sw[:, None]
        err = sw[:, None] * (target if prior is None else target - linalg.matmul(attn, prior))
        small = jnp.eye(r, dtype=attn.dtype) + linalg.matmul(b / lam[None, :], b.T)
        y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(small), err)
        delta = linalg.matmul(b.T, y) / lam[:, None]
        return delta if prior is None else prior + delta
    aw = attn if weights is None else attn * weights[:, None]
    rhs = linalg.matmul(aw.T, target)
    if prior is not None:
        rhs = rhs + lam[:, None] * prior
    h = linalg.matmul(aw.T, attn) + jnp.diag(lam)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h), rhs)


def _support(kept, n):
    kept = jnp.asarray(kept)
    if kept.ndim != 1 or not jnp.issubdtype(kept.dtype, jnp.integer):
        raise ValueError(f"kept: expected a 1-D integer index array, got shape {kept.shape} "
                         f"dtype {kept.dtype}")
    if kept.shape[0] == 0:
        raise ValueError("kept: the support is empty")
    if _check.is_concrete(kept):
        lo, hi = int(np.min(np.asarray(kept))), int(np.max(np.asarray(kept)))
        if lo < 0 or hi >= n:
            raise ValueError(f"kept: indices must lie in [0, {n}), got range [{lo}, {hi}]")
    return kept


def _weights(weights, p, dtype):
    w = _check.weights(weights, p)
    return jnp.full((p,), 1.0 / p, dtype) if w is None else w.astype(dtype)


def mass_match(queries, cache: Cache, kept, *, weights=None, scale=None, iters: int = 2000,
               bounds=(0.0, jnp.inf)):
    r"""Log-weights :math:`\beta_S = b_S + \log c` with :math:`c` the mass-matching NNLS solution.

    ``bounds`` box-constrains :math:`c` (Attention Matching uses :math:`[e^{-3}, e^{3}]`).
    Atoms with :math:`c_j = 0` get :math:`\beta_j = -\infty` (dropped). Returns ``[m]``.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    kept = _support(kept, cache.n)
    pmat = attention_weights(q, cache, scale)[:, kept]
    w = _weights(weights, q.shape[0], pmat.dtype)
    c = mass_coefficients(pmat, jnp.ones(q.shape[0], pmat.dtype), w, bounds=bounds, iters=iters)
    return cache.logw[kept] + jnp.log(c)


def fit_values(queries, cache: Cache, keys, logw, *, weights=None, scale=None):
    r"""Least-squares values for a summary with the given ``keys [m, d]`` and ``logw [m]``.

    Minimum-norm solution (SVD least squares) of
    :math:`\min_{\hat V}\sum_i w_i\lVert \hat P(q_i)\hat V - A_C(q_i)\rVert^2`. Returns ``[m, dv]``.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    keys = _check.array(keys, "keys", (None, cache.keys.shape[1]))
    logw = _check.array(logw, "logw", (keys.shape[0],), allow_neg_inf=True)
    target = attend(q, cache, scale)
    dummy = Cache(keys.astype(q.dtype), jnp.zeros((keys.shape[0], 1), q.dtype), logw.astype(q.dtype))
    phat = attention_weights(q, dummy, scale)
    return fitted_values(phat, target, _weights(weights, q.shape[0], phat.dtype))


def refit(queries, cache: Cache, kept, *, weights=None, scale=None, iters: int = 2000,
          bounds=(0.0, jnp.inf)) -> Cache:
    """Summary on support ``kept``: the cache's keys, mass-matched log-weights, LS values."""
    cache = validate(cache)
    kept = _support(kept, cache.n)
    beta = mass_match(queries, cache, kept, weights=weights, scale=scale, iters=iters,
                      bounds=bounds)
    keys = cache.keys[kept]
    vals = fit_values(queries, cache, keys, beta, weights=weights, scale=scale)
    return Cache(keys.astype(vals.dtype), vals, beta.astype(vals.dtype))

