r"""Rules that build new atoms or fit them: k-means merging, Attention Matching, "+fit" variants.

* :func:`kmeans_merge` -- k-means (k = budget) on the keys; each cluster becomes (centroid, mean
  value, log count) (identity I3 of docs/theory.md).
* :func:`attention_matching` (Zweiger, Fu, Guo & Kim 2026) -- keys by top RMS attention over the
  reference queries (or OMP on the mass target); log-weights by bounded NNLS so that the summary's
  max-stabilised masses match the cache's; values by least squares.
* :func:`with_fit` -- any selection rule followed by the same fitting steps (``"snapkv+fit"``).

Reference queries are the observed queries of the group, flattened to ``[g * p, d]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..attention import default_scale
from ..cache import Cache, Summary
from ..fit import fitted_values, mass_coefficients
from ..summarize import merge
from .base import Rule
from ..linalg import matmul as _mm



def _logits(queries, keys, logw, scale=None):
    tau = default_scale(queries.shape[-1]) if scale is None else scale
    return tau * _mm(queries, keys.T) + logw[None, :]


def kmeans_merge(iters: int = 25) -> Rule:
    """k-means on the keys (k-means++ seeding from ``key``, ``iters`` Lloyd steps), then merge."""

    def compress(cache, budget, queries, key):
        k = cache.keys.astype(jnp.float32)
        centres = _kmeanspp(k, budget, key)

        def lloyd(_, cen):
            lab = jnp.argmin(_sqdist(k, cen), axis=1)
            onehot = jax.nn.one_hot(lab, budget, dtype=k.dtype)
            cnt = onehot.sum(0)
            new = _mm(onehot.T, k) / jnp.maximum(cnt, 1)[:, None]
            return jnp.where(cnt[:, None] > 0, new, cen)

        centres = lax.fori_loop(0, iters, lloyd, centres)
        labels = jnp.argmin(_sqdist(k, centres), axis=1)
        return merge(cache, labels, budget)

    return Rule("kmeans_merge", compress, randomized=True)


def _sqdist(x, c):
    return jnp.sum(x * x, 1)[:, None] - 2 * _mm(x, c.T) + jnp.sum(c * c, 1)[None, :]


def _kmeanspp(x, k, key):
    n = x.shape[0]
    first = jax.random.randint(key, (), 0, n)
    cen = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)

    def body(i, st):
        cen, d2 = st
        ki = jax.random.fold_in(key, i)
        prob = d2 / jnp.maximum(jnp.sum(d2), 1e-30)
        j = jax.random.choice(ki, n, p=jnp.where(jnp.sum(d2) > 0, prob, 1.0 / n))
        cen = cen.at[i].set(x[j])
        return cen, jnp.minimum(d2, jnp.sum((x - x[j]) ** 2, axis=1))

    cen, _ = lax.fori_loop(1, k, body, (cen, d2))
    return cen


# ------------------------------------------------------------------------------ fitting steps


# e^-3 and e^3 rounded to float32 (the values jnp.exp gives), computed without touching a device
E_BOUNDS = (float(np.float32(math.exp(-3.0))), float(np.float32(math.exp(3.0))))


def fit_support(cache: Cache, kept, queries, bounds=E_BOUNDS,
                iters: int = 500, ridge: float = 1e-3, scale: float | None = None) -> Summary:
    r"""Keep ``kept``; refit log-weights (bounded NNLS on max-stabilised masses) and values (LS).

    With :math:`M(q) = \max_j s_j(q)`, :math:`a_j(q) = e^{s_j(q)-M(q)}` and target
    :math:`t(q) = \sum_j a_j(q)` (the stabilised mass), :math:`c = \arg\min_{l\le c\le u}
    \sum_q(\sum_{j\in S}c_ja_j(q) - t(q))^2`, :math:`\beta = b_S + \log c`; then
    :math:`\hat V = \arg\min\sum_q\lVert\hat p(q)^T\hat V - A(q)\rVert^2
    + \lambda\lVert\hat V - V_S\rVert^2`, the ridge pulling towards the kept atoms' own values
    (:math:`\lambda` = ``ridge`` x the mean diagonal of :math:`\hat P^T\hat P`): with fewer
    reference queries than atoms the plain least-squares fit is underdetermined and its values
    explode on unseen queries.
    """
    q = queries.reshape(-1, queries.shape[-1]).astype(jnp.promote_types(cache.keys.dtype,
                                                                          jnp.float32))
    dt = q.dtype
    keys, vals, b = (x.astype(dt) for x in cache)
    s = _logits(q, keys, b, scale)
    mx = jnp.max(s, axis=1, keepdims=True)
    a = jnp.exp(s - mx)
    target = jnp.sum(a, axis=1)
    c = mass_coefficients(a[:, kept], target, bounds=bounds, iters=iters)
    beta = b[kept] + jnp.log(c)
    out = _mm(a, vals) / target[:, None]
    ph = jax.nn.softmax(_logits(q, keys[kept], beta, scale), axis=1)
    lam = ridge * jnp.sum(ph * ph) / ph.shape[1] + 1e-30  # x the mean diagonal of ph^T ph
    vhat = fitted_values(ph, out, ridge=lam, prior=vals[kept])
    return Summary(Cache(keys[kept], vhat, beta), kept)


def attention_matching(selection: str = "rms", bounds=E_BOUNDS,
                       scale: float | None = None) -> Rule:
    """Attention Matching: select keys by ``"rms"`` attention or ``"omp"``, then fit."""
    if selection not in ("rms", "omp"):
        raise ValueError(f"selection: expected 'rms' or 'omp', got {selection!r}")

    def compress(cache, budget, queries, key):
        q = queries.reshape(-1, queries.shape[-1]).astype(jnp.float32)
        s = _logits(q, cache.keys.astype(jnp.float32), cache.logw.astype(jnp.float32), scale)
        if selection == "rms":
            att = jax.nn.softmax(s, axis=1)
            kept = jnp.sort(lax.top_k(jnp.sqrt(jnp.mean(att * att, axis=0)), budget)[1])
        else:
            a = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
            kept = jnp.sort(omp(a, jnp.sum(a, axis=1), budget))
        return fit_support(cache, kept, queries, bounds, scale=scale)

    return Rule(f"attention_matching_{selection}" if selection != "rms" else
                "attention_matching", compress, True)


def omp(a, target, k: int, iters: int = 200):
    """Non-negative orthogonal matching pursuit: k columns of ``a [r, n]`` for ``target [r]``."""
    n = a.shape[1]
    norms = jnp.maximum(jnp.linalg.norm(a, axis=0), 1e-30)

    def body(t, st):
        chosen, idx, resid = st
        corr = jnp.where(chosen, -jnp.inf, _mm(a.T, resid) / norms)
        j = jnp.argmax(corr)
        chosen = chosen.at[j].set(True)
        idx = idx.at[t].set(j.astype(jnp.int32))
        cols = jnp.where(jnp.arange(k) <= t, idx, idx[0])
        sub = a[:, cols] * (jnp.arange(k) <= t)[None, :]
        c = mass_coefficients(sub, target, iters=iters)
        return chosen, idx, target - _mm(sub, c)

    init = (jnp.zeros((n,), bool), jnp.zeros((k,), jnp.int32), target)
    _, idx, _ = lax.fori_loop(0, k, body, init)
    return idx


def with_fit(rule: Rule, scale: float | None = None) -> Rule:
    """``rule`` selects the support; the Attention Matching fitting steps refit it (softmax
    temperature ``scale``, default :math:`d^{-1/2}`)."""

    def compress(cache, budget, queries, key):
        base = rule.compress(cache, budget, queries, key)
        return fit_support(cache, base.kept, queries, scale=scale)

    return Rule(rule.name + "+fit", compress, True, randomized=rule.randomized)
