r"""Fitting a summary on a given support: mass-matching log-weights and least-squares values.

For a support :math:`S` (indices into the cache) and reference queries with weights :math:`w_i`:

* **mass matching**: :math:`c = \arg\min_{c\ge 0}\sum_i w_i\big(\sum_{j\in S} c_j p_j(q_i) - 1\big)^2`
  where :math:`p_j(q) = e^{s_j(q)}/Z(q)` are the cache's attention weights (the masses normalised
  per query by the full mass, so every query counts alike); the summary log-weights are
  :math:`\beta_j = b_j + \log c_j`, so that :math:`\hat Z(q)/Z(q) = \sum_{j\in S} c_j p_j(q)`.
* **least-squares values**: given the summary's keys and log-weights (hence its weights
  :math:`\hat p_j(q)`), :math:`\hat V = \arg\min_{\hat V}\sum_i w_i\lVert \hat P(q_i)\hat V - A(q_i)\rVert^2`.

These are the fitting steps of Attention Matching (Zweiger et al. 2026) and of THEORY.md U4; any
selection rule can reuse them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from . import _check, linalg
from .attention import attend, attention_weights, prepare
from .cache import Cache, validate


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


def _sqrt_weights(weights, p, dtype):
    w = _check.weights(weights, p)
    w = jnp.full((p,), 1.0 / p, dtype) if w is None else w.astype(dtype)
    return jnp.sqrt(w)


def mass_match(queries, cache: Cache, kept, *, weights=None, scale=None, iters: int = 2000,
               bounds=(0.0, jnp.inf)):
    r"""Log-weights :math:`\beta_S = b_S + \log c` with :math:`c` the mass-matching NNLS solution.

    ``bounds`` box-constrains :math:`c` (Attention Matching uses :math:`[e^{-3}, e^{3}]`).
    Atoms with :math:`c_j = 0` get :math:`\beta_j = -\infty` (dropped). Returns ``[m]``.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    kept = _support(kept, cache.n)
    pmat = attention_weights(q, cache, scale)[:, kept]
    sw = _sqrt_weights(weights, q.shape[0], pmat.dtype)
    c = linalg.nnls(sw[:, None] * pmat, sw, iters, bounds[0], bounds[1])
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
    sw = _sqrt_weights(weights, q.shape[0], phat.dtype)
    vals, *_ = jnp.linalg.lstsq(sw[:, None] * phat, sw[:, None] * target)
    return vals


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

