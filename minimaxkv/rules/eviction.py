r"""Eviction rules: a score per atom, protected atoms, top-k (each rule's published definition in its docstring).

Each factory returns a :class:`~minimaxkv.rules.base.Rule`; scores are "higher = kept".
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .. import queries as Q
from .. import rope
from ..attention import HIGHEST, default_scale
from .base import Rule, evict, head_attention, query_positions, scored


def random(sinks: int = 0, window: int = 0) -> Rule:
    """Uniformly random subset (seeded by ``key``)."""
    return scored("random", lambda c, q, key: jax.random.uniform(key, (c.n,)), sinks=sinks,
                  window=window, randomized=True)


def window() -> Rule:
    """The most recent ``budget`` atoms."""
    return scored("window", lambda c, q, key: jnp.arange(c.n, dtype=jnp.float32))


def streaming_llm(sinks: int = 4) -> Rule:
    """StreamingLLM (Xiao et al. 2023): the first ``sinks`` atoms and the most recent others."""
    return scored("streaming_llm", lambda c, q, key: jnp.arange(c.n, dtype=jnp.float32),
                  sinks=sinks)


def _h2o_score(cache, queries, key, scale=None):
    att = head_attention(cache, queries, scale)  # [g, p, n]
    p = queries.shape[1]
    seen = jnp.sum(jnp.arange(cache.n)[None, :] <= query_positions(cache.n, p)[:, None], axis=0)
    per_head = jnp.sum(att, axis=1) / jnp.maximum(seen, 1)
    return jnp.mean(per_head, axis=0)


def h2o(sinks: int = 0, window: int = 0, scale: float | None = None) -> Rule:
    """H2O (Zhang et al. 2023): accumulated causal attention of all observed queries, divided by
    the number of queries that see the atom, mean over the group."""
    return scored("h2o", partial(_h2o_score, scale=scale), sinks=sinks, window=window,
                  needs_queries=True)


def avg_pool_same(x, kernel: int):
    """1-D average pooling, stride 1, zero padding ``kernel // 2`` counted in the average."""
    pad = kernel // 2
    xp = jnp.pad(x, (pad, pad))
    return jnp.convolve(xp, jnp.ones((kernel,), x.dtype) / kernel, mode="valid")


def snapkv(window: int = 64, kernel: int = 5, scale: float | None = None) -> Rule:
    """SnapKV (Li et al. 2024): attention of the last ``window`` observed queries to the earlier
    atoms, averaged over those queries, average-pooled (``kernel``), mean over the group; the
    window's own atoms are kept."""

    def score(cache, queries, key):
        w = min(window, queries.shape[1], cache.n)
        att = head_attention(cache, queries, scale)[:, -w:, :]  # [g, w, n]
        mean = jnp.mean(att, axis=1)[:, : cache.n - w]  # prefix atoms only
        pooled = jax.vmap(lambda r: avg_pool_same(r, kernel))(mean)
        full = jnp.zeros((queries.shape[0], cache.n), pooled.dtype).at[:, : cache.n - w].set(pooled)
        return jnp.mean(full, axis=0)

    def compress(cache, budget, queries, key):
        w = min(window, queries.shape[1], cache.n)
        rule = scored("snapkv", score, window=w)
        return rule.compress(cache, budget, queries, key)

    def upto(cache, capacity, budget, queries, key):
        w = min(window, queries.shape[1], cache.n)
        return scored("snapkv", score, window=w).upto(cache, capacity, budget, queries, key)

    def kept_first(cache, queries, key):  # the protected window scores +inf (for AdaKV budgets)
        w = min(window, queries.shape[1], cache.n)
        return score(cache, queries, key).at[cache.n - w:].set(jnp.inf)

    return Rule("snapkv", compress, True, kept_first, upto)


def tova(sinks: int = 0, scale: float | None = None) -> Rule:
    """TOVA (Oren et al. 2024): attention of the last observed query averaged over the query
    heads -- every query head of the layer when the evaluator compresses a model's cache (one set
    for the layer's KV heads, ``layer_shared``), the group's heads in a call on one KV head. The
    most recent atom is always kept (as the field's reference library does)."""

    def score(cache, queries, key):
        return jnp.mean(head_attention(cache, queries, scale)[:, -1, :], axis=0)

    return scored("tova", score, sinks=sinks, window=1, needs_queries=True, layer_shared=True)


def knorm() -> Rule:
    """Key norm (Devoto et al. 2024): keep the atoms with the smallest key norm."""
    return scored("knorm", lambda c, q, key: -jnp.linalg.norm(c.keys.astype(jnp.float32), axis=1))


def keydiff() -> Rule:
    """KeyDiff (Park et al. 2025): keep keys least similar (cosine) to the mean normalised key."""

    def score(cache, queries, key):
        k = cache.keys.astype(jnp.float32)
        u = k / jnp.maximum(jnp.linalg.norm(k, axis=1, keepdims=True), 1e-30)
        mean = jnp.mean(u, axis=0)
        return -(u @ mean) / jnp.maximum(jnp.linalg.norm(mean), 1e-30)

    return scored("keydiff", score)


def expected_attention(horizon: int = 512, theta: float | rope.Llama3 | None = None,
                       convention: str = "half", sinks: int = 4, shrinkage: float = 1e-3,
                       scale: float | None = None) -> Rule:
    r"""Expected Attention (Devoto, Jeblick & Jégou 2025).

    Observed queries are un-rotated to pre-RoPE (they sit at positions ``n-p..n-1``; those at
    the sink positions, when given, are left out), a Gaussian :math:`N(\mu,\Sigma)` is fitted
    per query head, future queries are modelled as
    :math:`N(\bar R\mu, \bar R\Sigma\bar R^T)` with :math:`\bar R` the RoPE rotation averaged over
    positions ``n .. n+horizon-1``, and for the atoms after the ``sinks`` first

    .. math:: \text{score}_j = \mathrm{softmax}_{j \ge s}\big(\tau\mu'^Tk_j + \tfrac{\tau^2}2 k_j^T\Sigma'k_j + b_j\big)\,\lVert v_j\rVert,

    the expected un-normalised attention (Gaussian moment generating function) normalised over
    the non-sink atoms; mean over group. The sinks are kept (they score :math:`+\infty`).

    As published, the statistics come from every query of the prefix after the sinks: the
    evaluator passes them all (``Rule.whole_prefix``); a direct call uses the queries it is given.

    ``theta`` is the RoPE base of the cache's keys and queries (the model's ``rope_theta``; 0 for
    a cache without RoPE): it has no default, since a wrong base silently moves every score.
    ``shrinkage = 0`` needs more observed queries than dimensions (else the covariance is
    singular and :func:`minimaxkv.queries.fit_gaussian` refuses).
    """
    if not shrinkage >= 0:
        raise ValueError(f"expected_attention: shrinkage must be >= 0, got {shrinkage!r}")

    def score(cache, queries, key):
        g, p, d = queries.shape
        n = cache.n
        if theta is None:
            raise ValueError("expected_attention: pass the RoPE base of the cache, theta= (the "
                             "model's config.rope_theta, e.g. 1e5 for SmolLM2; 0 for a cache "
                             "without RoPE): rules.get('expected_attention', theta=...)")
        tau = default_scale(d) if scale is None else scale
        pre = rope.apply(queries.astype(jnp.float32), -query_positions(n, p), theta, convention)
        # the queries of the sink tokens are left out of the statistics (kvpress)
        pre = pre[:, min(max(0, sinks - (n - p)), p - 1):]
        k = cache.keys.astype(jnp.float32)
        s = min(sinks, n - 1)  # the softmax runs over the atoms after the sinks

        def one(qh):
            law = Q.rope_future(_fit(qh, shrinkage), n, horizon, theta, convention)
            fut = Q.expected_attention_gaussian(law)
            cov = fut.chol @ fut.chol.T
            logit = tau * k @ fut.mean + 0.5 * tau**2 * jnp.einsum("nd,de,ne->n", k, cov, k,
                                                                   precision=HIGHEST)
            sink = jnp.arange(n) < s
            att = jax.nn.softmax(jnp.where(sink, -jnp.inf, logit + cache.logw))
            # the sinks score +inf: kept first, also when heads compete for a budget (AdaKV)
            return jnp.where(sink, jnp.inf, att * jnp.linalg.norm(
                cache.values.astype(jnp.float32), axis=1))

        return jnp.mean(jax.vmap(one)(pre), axis=0)

    return scored("expected_attention", score, sinks=sinks, needs_queries=True,
                  whole_prefix=True)


def _fit(q, shrinkage):
    """Gaussian fit that also works with a single observed query (covariance 0 + shrinkage)."""
    if q.shape[0] >= 2:
        return Q.fit_gaussian(q, shrinkage)
    d = q.shape[1]
    scale = jnp.maximum(jnp.mean(q * q), 1e-12)
    return Q.Gaussian(q[0], jnp.sqrt(shrinkage * scale) * jnp.eye(d, dtype=q.dtype))


def leverage(sketch: int = 48) -> Rule:
    r"""Leverage (Compactor, Chari & Van Durme 2025): :math:`\ell_j = x_j^T(X^TX)^{+}x_j` for the
    centred keys after a Gaussian sketch to ``min(sketch, d)`` dimensions (seeded by ``key``)."""

    def score(cache, queries, key):
        k = cache.keys.astype(jnp.float32)
        k = k - jnp.mean(k, axis=0)
        d = k.shape[1]
        r = min(sketch, d)
        x = k @ (jax.random.normal(key, (d, r)) / jnp.sqrt(r)) if r < d else k
        gram_pinv = jnp.linalg.pinv(x.T @ x, hermitian=True)
        return jnp.einsum("nr,rs,ns->n", x, gram_pinv, x, precision=HIGHEST)

    return scored("leverage", score, randomized=True)


def gvote(samples: int = 16, nucleus: float = 0.95, shrinkage: float = 1e-3,
          scale: float | None = None) -> Rule:
    r"""GVote (Tang, Liu, Xu, Huang 2025): vote with sampled future queries.

    A Gaussian is fitted to each head's observed queries; ``samples`` draws and the real last
    query each keep their smallest top set with cumulative attention ``>= nucleus``; the kept set
    is the union over draws and heads. GVote chooses its size per request: here ``budget`` is a
    cap -- a larger union keeps its atoms with the highest attention over the draws -- and slots
    the union does not fill are padding (log-weight ``-inf``, counted as zero bytes by
    :func:`minimaxkv.cache.live_atoms`).
    """

    def compress(cache, budget, queries, key):
        g, p, d = queries.shape
        q = queries.astype(jnp.float32)

        def draws(qh, kh):
            law = _fit(qh, shrinkage)
            return jnp.concatenate([Q.sample(law, kh, samples), qh[-1:]])

        probe = jax.vmap(draws)(q, jax.random.split(key, g)).reshape(-1, d)
        tau = default_scale(d) if scale is None else scale
        s = tau * (probe @ cache.keys.astype(jnp.float32).T) + cache.logw
        att = jax.nn.softmax(s, axis=1)
        srt = jnp.sort(att, axis=1)[:, ::-1]
        before = jnp.cumsum(srt, axis=1) - srt  # mass strictly above each sorted entry
        thresh = jnp.min(jnp.where(before < nucleus, srt, jnp.inf), axis=1)
        member = att >= thresh[:, None]
        union = jnp.any(member, axis=0)
        prio = jnp.where(union, jnp.max(att, axis=0), -1.0)
        kept = jnp.sort(lax.top_k(prio, budget)[1])
        summ = evict(cache, kept)
        logw = jnp.where(union[kept], summ.cache.logw, -jnp.inf)
        return summ._replace(cache=summ.cache._replace(logw=logw))

    return Rule("gvote", compress, True, randomized=True)
