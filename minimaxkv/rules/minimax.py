r"""The theory-derived ``minimax`` rule (docs/theory.md §9: V1-V6).

One head, one call; every step is a named pure function below.

1. **Protect** the ``sinks`` first atoms and an exact recent ``window`` (at most ``window_frac``
   of the budget the sinks leave).
2. **Reference law** (:func:`reference_law`, V2, V4), O(m) query rows, never O(n): the
   observed queries and draws of future queries from the RoPE mixture of a Ledoit-Wolf Gaussian
   fitted to them, in the proportions :math:`\alpha : 1-\alpha` whose response covariance best
   predicts that of held-out observed queries (V4), :math:`1-\kappa` in all; and an exact
   isolating probe per atom (a query that sees that atom alone), :math:`\kappa` in all, with
   :math:`\kappa` the collision probability of the observed attention (V2), spread half over
   every atom and half over the atoms read on after what the observed queries read (V6). A
   probe is a private row of the value-class operator: a diagonal term of every Gram matrix,
   O(n).
3. **Allocate** (:func:`split_blocks`, :func:`allocate`) the free slots to blocks by the
   eigenvalues of their response covariance (V5; one block in one-shot use, which gets every
   slot).
4. **Select** within each block (:func:`select_supports`, :func:`select_block`): ``sampled`` of
   its slots go to atoms drawn in ``rounds`` rounds of adaptive length-squared sampling of the
   value-class operator (:func:`adaptive_seeds`, the draws behind the bound V3), the others
   greedily for the block's values (V1: simultaneous orthogonal matching pursuit on the Gram
   matrix, :func:`gram_order`) among a candidate pool of ``pool`` x slots atoms (at least 256):
   the best by first greedy gain or by mass, and a draw by mass. Cost O(r n d) for the law's
   attention, O(r m n) for the seeds' residuals, O(r L^2) for the pool's Gram matrix and
   O(m L (w + d_v)) for the greedy, plus O(w m L) per batch of steps (w = 32 shortlisted
   columns, :func:`gram_order`).
5. **Fit** (:func:`fit_block`): mass matching by NNLS and values by least squares on the law;
   the probes pull each kept atom's factor towards 1 and its value towards the values of the
   atoms whose probes read it.
6. **Choose** (:func:`block_candidates`, :func:`join_summary`, :func:`least_risk`) among the
   candidates on the same support -- the fit, the atoms kept exactly (eviction), and, with
   ``merge=True``, every block atom merged into its nearest kept key (I3, U3) and refitted --
   the one with the smallest risk on the law (an in-sample choice). With ``merge=True`` the
   summary may hold new keys, so ``kept`` is ``None``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import rope
from .. import queries as Q
from ..attention import default_scale
from ..bounds import gap_of_log_masses
from ..cache import Cache, Summary
from ..fit import fitted_values, mass_coefficients
from ..linalg import matmul as _mm
from .base import Rule, protected_split, query_positions
from .eviction import _fit


class Law(NamedTuple):
    r"""The reference law of one head: ``queries [r, d]`` (observed, model draws), their
    ``weights [r]`` (summing to :math:`1-\kappa`), the cache's attention on them *atom-major*
    ``attention [n, r]`` (column i: query i's attention) and its log-masses ``logz [r]``;
    ``private [n]``, the weights of the exact isolating probes, one per atom (summing to
    :math:`\kappa`); ``kappa`` and ``alpha`` (the observed share of the query rows)."""

    queries: jax.Array
    weights: jax.Array
    attention: jax.Array
    logz: jax.Array
    private: jax.Array
    kappa: jax.Array
    alpha: jax.Array


def ledoit_wolf(q):
    r"""Gaussian fit of ``q [p, d]`` (p >= 3) with the Ledoit-Wolf (2004) shrinkage of the
    covariance towards :math:`\mu I`, :math:`\mu = \mathrm{tr}S/d`: intensity
    :math:`\min(\bar\beta^2, \delta^2)/\delta^2` with :math:`\delta^2 = \lVert S-\mu I\rVert_F^2`,
    :math:`\bar\beta^2 = p^{-2}\sum_k\lVert x_kx_k^T - S\rVert_F^2` (x centred, S = X^TX/p)."""
    p, d = q.shape
    mu = jnp.mean(q, axis=0)
    x = q - mu
    cov = _mm(x.T, x) / p
    m = jnp.trace(cov) / d
    delta2 = jnp.sum((cov - m * jnp.eye(d, dtype=q.dtype)) ** 2)
    sq = jnp.sum(x * x, axis=1)
    beta2 = jnp.sum(sq ** 2 - 2 * jnp.sum(_mm(x, cov) * x, axis=1) + jnp.sum(cov * cov)) / p ** 2
    shrink = jnp.where(delta2 > 0, jnp.minimum(beta2, delta2) / jnp.where(delta2 > 0, delta2, 1.0),
                       1.0)
    sig = (1 - shrink) * cov + shrink * jnp.maximum(m, 1e-12) * jnp.eye(d, dtype=q.dtype)
    return Q.Gaussian(mu, jnp.linalg.cholesky(sig))


def mixture_weight(p_train, p_held, p_model):
    r"""V4: the :math:`\alpha\in[0,1]` minimising
    :math:`\lVert G_H-\alpha G_T-(1-\alpha)G_M\rVert_F^2`, with :math:`G_a` the response
    covariance :math:`\mathbb E_a[p(q)p(q)^T]` of the attention vectors ``p_a [n, r_a]``
    (atom-major: one column per query) of the training half of the observed queries (T), the
    held-out half (H) and the draws of the model fitted to T (M). Computed from the columns'
    inner products,
    :math:`\langle G_a,G_b\rangle_F = \mathrm{mean}_{i\in a,l\in b}(p_i^Tp_l)^2`, in O(r^2 n).
    1/2 when the two candidate laws coincide on these statistics (to a relative 1e-6)."""

    def inner(a, b):
        return jnp.mean(_mm(a.T, b) ** 2)

    mm, tt = inner(p_model, p_model), inner(p_train, p_train)
    tm, hm = inner(p_train, p_model), inner(p_held, p_model)
    num = inner(p_held, p_train) - hm - tm + mm  # <G_H - G_M, G_T - G_M>
    den = tt - 2 * tm + mm  # ||G_T - G_M||_F^2
    ok = den > 1e-6 * (tt + mm)  # else the two laws agree to round-off: no evidence either way
    return jnp.where(ok, jnp.clip(num / jnp.where(ok, den, 1.0), 0.0, 1.0), 0.5)


def _model_draws(pre, u, n: int, horizon, theta, convention):
    """Draws ``[g * num, d]`` of the RoPE mixture of each head's Ledoit-Wolf Gaussian fitted to
    its pre-RoPE observed queries ``pre [g, p, d]``, from uniforms ``u [g, num, d + 1]``."""
    g, p, d = pre.shape

    def draw(qh, uh):
        # two points give a rank-1 covariance and a zero Ledoit-Wolf intensity: fixed shrinkage
        law = ledoit_wolf(qh) if p >= 3 else _fit(qh, 1e-3)
        return Q.rope_draws(Q.rope_future(law, n, horizon, theta, convention), uh)

    return jax.vmap(draw)(pre, u).reshape(-1, d)


def reference_law(cache: Cache, queries, key, *, draws: int, horizon: int,
                  theta: float | rope.Llama3, convention: str, agnostic: bool, logit_std: float,
                  scale: float, probes: float = 1.0, probe_share: str = "collision",
                  forward: float = 0.0, reach: int = 16,
                  observed_end: int | None = None) -> Law:
    r"""The reference law of step 2 (docs/theory.md V2, V4): O(draws) query rows and one exact
    isolating probe per atom. The ``p`` observed queries are those of positions
    ``observed_end - p .. observed_end - 1`` (default: the last ``p`` tokens of the cache).

    :math:`\kappa` is ``probes`` x the collision probability of the observed (else drawn)
    attention over *tokens* (V2, V2'): :math:`\mathrm{mean}_i\sum_jp_j(q_i)^2e^{-\max(b_j,0)}`,
    an atom of log-weight :math:`b\ge0` (a summary's) standing for :math:`e^b` tokens over which
    its attention is split evenly (on a cache of tokens, V2's value); with
    ``probe_share="variance"`` the total variance of that attention,
    :math:`\mathrm{mean}_i\lVert p(q_i)-\bar p\rVert^2` (V2''): the collision probability less
    that of the mean pattern, so a sink that every query isolates adds nothing. At most 1.

    Query-aware: the ``g * p`` observed queries, weight :math:`\alpha(1-\kappa)` in all, and
    ``draws`` model draws (per head ``draws // g``), :math:`(1-\alpha)(1-\kappa)`, with
    :math:`\alpha` from an even/odd split of the observed tokens (V4; 1/2 with fewer than 4).
    Query-agnostic (or no queries): ``draws`` isotropic queries at logit scale ``logit_std``,
    weight :math:`1-\kappa`. The isolating probes, total weight :math:`\kappa`, are exact: the
    probe of atom j sees j alone, so it enters every step as a private row (a diagonal term,
    O(n)), never as a row of the attention matrix. They are spread over the atoms by
    :math:`(1-\beta)u+\beta f` (V6): :math:`u`, the atoms' weights :math:`e^{b}` normalised (any
    atom may be looked up), and :math:`f`, the atoms read ``reach`` steps or fewer after what the
    observed queries read (:func:`reading_forward`: a continuation that copies reads on from
    where the question's queries look), :math:`\beta` = ``forward`` (query-aware only; 0 when
    there are no observed queries)."""
    n, d = cache.keys.shape
    keys = cache.keys
    logw = cache.logw
    dt = keys.dtype

    def logits(q):  # atom-major [n, rows]: the layout every later step reads
        return scale * _mm(keys, q.T) + logw[:, None]

    if agnostic or queries is None:
        sigma = logit_std / scale / jnp.sqrt(jnp.mean(jnp.sum(keys * keys, axis=1)))
        rows = sigma * Q.standard_normal(Q.uniforms(key, [(draws, d)], dt)[0])
        n_base = draws
        s = logits(rows)
        logz = jax.nn.logsumexp(s, axis=0)
        att = jnp.exp(s - logz[None, :])
        w = jnp.full((draws,), 1.0 / draws, dt)
        alpha = jnp.zeros((), dt)
    else:
        g, p, _ = queries.shape
        q = queries.astype(dt)
        end = n if observed_end is None else observed_end
        pre = rope.apply(q, -query_positions(end, p), theta, convention)
        per = max(1, draws // g)
        u_fut, u_half = Q.uniforms(key, [(g, per, d + 1), (g, max(8, 64 // g), d + 1)], dt)
        fut = _model_draws(pre, u_fut, n, horizon, theta, convention)
        n_base = g * p
        rows = jnp.concatenate([q.reshape(-1, d), fut])
        split = p >= 4  # held-out split: even tokens train the model, odd tokens judge it
        half = _model_draws(pre[:, 0::2], u_half, n, horizon, theta, convention) if split else None
        s_all = logits(jnp.concatenate([rows, half]) if split else rows)  # one product
        s = s_all[:, :rows.shape[0]]
        logz = jax.nn.logsumexp(s, axis=0)
        att = jnp.exp(s - logz[None, :])
        if split:
            pq = att[:, :n_base].reshape(n, g, p)
            alpha = mixture_weight(pq[:, :, 0::2].reshape(n, -1), pq[:, :, 1::2].reshape(n, -1),
                                   jax.nn.softmax(s_all[:, rows.shape[0]:], axis=0))
        else:
            alpha = jnp.asarray(0.5, dt)
        w = jnp.concatenate([jnp.full((n_base,), alpha / n_base, dt),
                             jnp.full((fut.shape[0],), (1 - alpha) / fut.shape[0], dt)])
    pb = att[:, :n_base]  # the observed (else drawn) rows
    pbar = jnp.mean(pb, axis=1)  # their mean attention
    # over tokens: an atom of log-weight b >= 0 stands for e^b of them, its attention split evenly
    tokens = jnp.where(jnp.isfinite(logw), jnp.exp(jnp.maximum(logw, 0.0)), 1.0)
    share = jnp.mean(jnp.sum(pb * pb / tokens[:, None], axis=0))
    if probe_share == "variance":  # less the shared pattern's: isolation the rows predict
        share = jnp.maximum(share - jnp.sum(pbar * pbar / tokens), 0.0)
    kappa = jnp.minimum(probes * share, 1.0)
    prior = jnp.where(jnp.isfinite(logw), jax.nn.softmax(logw), 0.0)
    if forward > 0 and not (agnostic or queries is None):
        prior = (1 - forward) * prior + forward * reading_forward(pbar, prior, reach)
    return Law(rows, (1 - kappa) * w, att, logz, kappa * prior, kappa, alpha)


def reading_forward(pbar, prior, reach: int):
    r"""V6: :math:`f_j\propto\frac1H\sum_{s=1}^{H}\bar p_{j-s}` (H = ``reach``, atoms in
    position order), the law of the atom read by a continuation that reads on from where the
    attention ``pbar [n]`` looks: an atom t drawn from ``pbar``, a step s uniform on 1..H, atom
    t + s read (reads past the last atom left out, the rest renormalised); ``prior`` where no
    read stays inside. O(n): a difference of prefix sums."""
    n = pbar.shape[0]
    c = jnp.concatenate([jnp.zeros(1, pbar.dtype), jnp.cumsum(pbar)])
    j = jnp.arange(n)
    f = (c[j] - c[jnp.maximum(j - reach, 0)]) * (prior > 0)
    total = jnp.sum(f)
    return jnp.where(total > 0, f / jnp.where(total > 0, total, 1.0), prior)


def length_squared_draws(u, norms2, valid):
    r"""``len(u)`` i.i.d. column indices with probability
    :math:`\lVert a_j\rVert^2/\lVert A\rVert_F^2` (``norms2`` of the ``valid`` columns; uniform
    over them when every norm is zero), by the inverse CDF of uniforms ``u`` in (0, 1)."""
    w = jnp.where(valid, norms2, 0.0)
    tot = jnp.sum(w)
    prob = jnp.where(tot > 0, w / jnp.where(tot > 0, tot, 1.0), valid / jnp.maximum(valid.sum(), 1))
    cum = jnp.cumsum(prob)  # the first index whose cumulative mass reaches r: never a zero mass
    return jnp.minimum(jnp.searchsorted(cum, cum[-1] * (1 - u)), norms2.shape[0] - 1)


def residual_rows(xt, mu, coef, cols, use):
    r"""Orthonormal coefficient rows for the columns ``cols`` (where ``use``) of the operator
    :math:`A=[X;M^{1/2}]` (``xt`` :math:`=X^T` ``[B, r]``, ``mu`` the diagonal of M) after the
    rows ``coef [c, B]`` already found: rows :math:`u_i^TA` for an orthonormal basis
    :math:`u_i` of the part of :math:`\mathrm{col}(A_{cols})` orthogonal to the earlier basis,
    so that the squared residual of column j after all of them is
    :math:`\lVert a_j\rVert^2-\sum_i(u_i^Ta_j)^2`. From the residual Gram rows by one
    eigendecomposition of their ``[s, s]`` block (repeated or dependent columns give zero
    rows); O(s r B) for the Gram rows."""
    s = cols.shape[0]
    rows = _mm(xt[cols], xt.T).at[jnp.arange(s), cols].add(mu[cols])  # [s, B]: A_cols^T A
    rows = jnp.where(use[:, None], rows - _mm(coef[:, cols].T, coef), 0.0)
    small = jnp.where(use[:, None] & use[None, :], rows[:, cols], 0.0)
    lam, vec = jnp.linalg.eigh(0.5 * (small + small.T))
    keep = lam > 1e3 * jnp.finfo(lam.dtype).eps * jnp.maximum(jnp.max(lam), 0.0)
    inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    return _mm((vec * inv[None, :]).T, rows)


def adaptive_seeds(u, xt, mu, norms2, valid, counts):
    r"""V3's draws: ``R = len(counts)`` rounds of adaptive length-squared sampling of the
    columns of :math:`A=[X;M^{1/2}]` (``xt`` :math:`=X^T` ``[B, r]``, diagonal ``mu``, squared
    column norms ``norms2``): round t draws ``counts[t]`` (traced, at most ``u.shape[1]``)
    i.i.d. columns with probability proportional to their squared residual after the columns
    of the earlier rounds, by the inverse CDF of the uniforms ``u [R, s]`` (round 1: the
    column norms themselves). Returns a mask over the columns (repeated draws collapse).
    Cost O(s r B) per round after the first."""
    rounds, size = u.shape
    b = norms2.shape[0]
    resid = jnp.where(valid, norms2, 0.0)
    coef = jnp.zeros((0, b), norms2.dtype)
    mask = jnp.zeros((b,), jnp.int32)
    for t in range(rounds):
        cols = length_squared_draws(u[t], resid, valid)
        use = jnp.arange(size) < counts[t]
        mask = mask.at[cols].max(use.astype(jnp.int32))
        if t + 1 < rounds:
            coef = jnp.concatenate([coef, residual_rows(xt, mu, coef, cols, use)])
            resid = jnp.where(valid, jnp.maximum(norms2 - jnp.sum(coef * coef, axis=0), 0.0), 0.0)
    return mask > 0


def round_counts(total, rounds: int):
    """``total`` (traced) draws split over ``rounds`` rounds as evenly as integers allow."""
    t = jnp.arange(rounds + 1)
    cum = (total * t) // rounds
    return cum[1:] - cum[:-1]


def _rank(x):
    """0 for the largest entry, 1 for the next, ... (the inverse of the sorting permutation)."""
    n = x.shape[0]
    return jnp.zeros((n,), jnp.int32).at[jnp.argsort(-x)].set(jnp.arange(n, dtype=jnp.int32))


def _first_argmin(x):
    """``argmin`` along the last axis (the first index of the minimum; NaN-free ``x``) as two
    plain reductions, which vectorise where XLA's (value, index) reduction does not."""
    idx = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    low = jnp.min(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == low, idx, x.shape[-1]), axis=-1)


def candidate_pool(gain, norms2, seeds, valid, size: int, u):
    r"""``size`` column indices: the seeds, then in turn the best by first greedy ``gain`` or by
    squared norm (mass), and a draw by squared norm without replacement (Gumbel top-k, the
    Gumbel noise :math:`-\log(-\log u)` from uniforms ``u`` in (0, 1)), which spreads the pool
    over clusters of near-identical columns that the scores alone would fill it with; never an
    invalid column before a valid one."""
    best = jnp.minimum(_rank(gain), _rank(norms2))
    gumbel = jnp.log(jnp.maximum(norms2, 1e-300)) - jnp.log(-jnp.log(u))
    prio = -jnp.minimum(2 * best, 2 * _rank(jnp.where(valid, gumbel, -jnp.inf)) + 1)
    prio = jnp.where(seeds, jnp.inf, jnp.where(valid, prio.astype(gain.dtype), -jnp.inf))
    return lax.top_k(prio, size)[1]


def gram_order(gram, corr, k: int, forced=None, valid=None, steps=None, shortlist: int = 32,
               factor=None):
    r"""First ``k`` columns of an operator :math:`A` known through its Gram matrix
    ``gram`` :math:`=A^TA` ``[L, L]`` and the correlations ``corr`` :math:`=A^TY` ``[L, c]`` with
    a target :math:`Y`, chosen greedily (V1: simultaneous orthogonal matching pursuit): each step
    adds the column that removes the most of the target's residual,
    :math:`\lVert R^Ta_j\rVert^2/\lVert\tilde a_j\rVert^2`, by Gram-Schmidt in coefficient space
    (no row of A touched). ``corr=None``: the largest residual column (pivoted QR,
    value-blind). ``forced`` columns are taken first; once the target is fitted the step falls
    back to the largest residual column. ``steps`` (traced, <= k) stops early; later entries
    are 0.

    Blocked: the gains of every column are exact at every step, but the residual Gram rows
    :math:`\tilde a_i^T\tilde a_l` are formed, by one matrix product, only for a ``shortlist``
    of the columns most likely to be picked next, and kept current by rank-one updates; a
    batch of steps ends when the best column lies outside it, so the order is the unblocked
    greedy's. Cost O(L (w + c)) per step and O(w k L) per batch instead of O(L (k + c)) per
    step, with w = ``shortlist``.

    ``factor`` :math:`F` ``[L, r]``, when the Gram matrix is :math:`FF^T` plus a diagonal (the
    value-class operator's query rows and private rows): column l's residual inner products
    with an unchosen column i are :math:`g_{il}-f_i^THf_l` with
    :math:`H=\sum_tq_tq_t^T` ``[r, r]`` over the F-parts :math:`q_t` of the orthonormal basis
    so far (the private parts of the basis lie on chosen columns only; docs/theory.md V1(c)),
    so a batch's rows cost O(w r L) once more than r steps are taken, instead of O(w t L) at
    step t, for O(r^2) more a step (H's update): used when k > 2r, else ignored."""
    size = gram.shape[0]
    dt = gram.dtype
    if factor is not None and k <= 2 * factor.shape[1]:
        factor = None  # too few steps past the factor's rank to repay H's updates
    eps = jnp.finfo(dt).eps
    tiny = 1e-300 if dt == jnp.float64 else 1e-30
    valid = jnp.ones((size,), bool) if valid is None else valid
    forced = jnp.zeros((size,), bool) if forced is None else forced
    norms0 = jnp.diagonal(gram)
    c = jnp.zeros((1, size), dt) if corr is None else corr.T  # [c, L]: reductions over rows
    t0 = jnp.sum(c * c)
    w = min(shortlist, size)
    stop = k if steps is None else jnp.minimum(steps, k)
    chunk = 128

    def pick(norms, cor, chosen):
        """The next column, and every column's priority for the next shortlist."""
        live = (~chosen) & valid & (norms > 1e3 * eps * norms0)
        pend = live & forced
        if corr is None:
            gain = jnp.where(live, norms, -1.0)
        else:
            gain = jnp.where(live, jnp.sum(cor * cor, axis=0) / jnp.where(live, norms, 1.0), -1.0)
        any_pend = jnp.any(pend)
        g_eff = jnp.where(any_pend, jnp.where(pend, gain, -1.0), gain)
        by_norm = jnp.where(live, norms, -1.0) + jnp.where(chosen | ~valid, -jnp.inf, 0.0)
        by_gain = any_pend | (jnp.max(g_eff) > 1e3 * eps * t0)
        j = jnp.argmax(jnp.where(by_gain, g_eff, by_norm))  # one (value, index) reduction
        prio = jnp.where(by_gain, jnp.where(pend, gain + jnp.max(gain) + 1.0, gain), by_norm)
        return j, prio.at[j].set(jnp.inf)

    def from_coef(cand, coef, t):  # residual Gram rows from the steps' rows (zero rows skipped)
        resid = gram[cand]
        for lo in range(0, k, chunk):
            part = coef[lo:lo + chunk]
            resid = lax.cond(lo < t, lambda r, p=part: r - _mm(p[:, cand].T, p),
                             lambda r: r, resid)
        return resid

    def from_factor(cand, hh):  # the same rows through the factor: O(w r L)
        return gram[cand] - _mm(_mm(factor[cand], hh), factor.T)

    def batch(carry):
        t, coef, hh, norms, cor, chosen, order = carry
        j, prio = pick(norms, cor, chosen)
        cand = lax.top_k(prio, w)[1]
        if factor is None:
            resid = from_coef(cand, coef, t)
        else:  # the cheaper of the two, by the steps taken against the factor's rank
            resid = lax.cond(t > factor.shape[1], lambda: from_factor(cand, hh),
                             lambda: from_coef(cand, coef, t))

        def more(st):
            return st[0] & (st[1] < stop)

        def step(st):
            _, t, j, resid, coef, hh, norms, cor, chosen, order = st
            at = jnp.argmax(cand == j)
            nrm = jnp.sqrt(jnp.maximum(norms[j], tiny))
            u = resid[at] / nrm  # q_t^T a_l for every column l
            qy = cor[:, j] / nrm  # q_t^T R
            resid = resid - u[cand][:, None] * u[None, :]
            norms = jnp.maximum(norms - u * u, 0.0)
            cor = cor - qy[:, None] * u[None, :]
            if factor is not None:  # the F-part of q_t: (I - H) f_j / ||residual of a_j||
                fq = (factor[j] - _mm(hh, factor[j][:, None])[:, 0]) / nrm
                hh = hh + fq[:, None] * fq[None, :]
            chosen = chosen.at[j].set(True)
            nxt, _ = pick(norms, cor, chosen)
            return (jnp.any(cand == nxt), t + 1, nxt, resid, coef.at[t].set(u), hh, norms, cor,
                    chosen, order.at[t].set(j.astype(jnp.int32)))

        st = lax.while_loop(more, step, (jnp.asarray(True), t, j, resid, coef, hh, norms, cor,
                                          chosen, order))
        return (st[1],) + st[4:]

    rank = 0 if factor is None else factor.shape[1]
    init = (jnp.asarray(0, jnp.int32), jnp.zeros((k, size), dt), jnp.zeros((rank, rank), dt),
            norms0, c, jnp.zeros((size,), bool), jnp.zeros((k,), jnp.int32))
    return lax.while_loop(lambda cr: cr[0] < stop, batch, init)[6]


class Block(NamedTuple):
    r"""One block's atoms, padded to the block size: the law's attention on them *atom-major*
    ``attention [B, r]`` (rows of :math:`P_B^T`, normalised by the full mass), ``keys [B, d]``,
    ``values [B, dv]``, ``logw [B]``, the weights of the atoms' isolating probes
    ``private [B]``, ``ok [B]`` (a real atom, not padding) and the block's response to the
    law's query rows ``output [r, 1 + dv]``, :math:`(\lambda_B(q), \sum_{j\in B}p_j(q)v_j)`
    (its share of the mass and of the attention output; computed once, read by every step)."""

    attention: jax.Array
    keys: jax.Array
    values: jax.Array
    logw: jax.Array
    private: jax.Array
    ok: jax.Array
    output: jax.Array


def split_blocks(law: Law, cache: Cache, lo: int, hi: int, blk: int) -> Block:
    """The atoms ``lo .. hi-1`` as blocks of ``blk`` (the last one padded): a :class:`Block` of
    arrays with a leading block axis. Contiguous slices and reshapes only (no gathers)."""
    nb = -(-(hi - lo) // blk)
    pad = nb * blk - (hi - lo)

    def cut(x, fill=0.0):  # [n, ...] -> [nb, blk, ...]
        x = x[lo:hi]
        x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
        return x.reshape((nb, blk) + x.shape[1:])

    ok = cut(jnp.ones((cache.n,), bool), False)
    att, values = cut(law.attention), cut(cache.values)
    resp = jnp.concatenate([jnp.ones_like(values[..., :1]), values], axis=-1)
    output = jnp.einsum("bjr,bjc->brc", att, resp, precision=lax.Precision.HIGHEST)
    return Block(att, cut(cache.keys), values, cut(cache.logw, -jnp.inf), cut(law.private), ok,
                 output)


def block_operator(law: Law, blk: Block, ridge: float):
    r"""The block's value-class operator and its V1 target, as the pieces the greedy needs.

    :math:`A=[X_B;M^{1/2}]`, :math:`X_B=W^{1/2}P_B`, target
    :math:`Y=[X_B;M^{1/2}]\,[\mathbf 1, V_B-\bar v_B]`: the private rows, diagonal
    :math:`M=\mathrm{diag}(\mu_j)`, are the atoms' exact isolating probes (an isolating probe of
    atom j sees j alone: response :math:`(1, v_j-\bar v_B)`), weight :math:`\mu_j` = the law's
    ``private`` weight plus a floor, ``ridge`` x the mean squared column norm of :math:`X_B`
    (which keeps near-identical columns distinguishable). Returns ``xt [B, r]`` (:math:`X_B^T`),
    the private weights and the floor, the diagonal :math:`\mu_j` of M (zero on padding), the
    squared column norms of A, the correlations :math:`A^TY` ``[B, 1 + d_v]`` and the responses
    :math:`(1, v_j-\bar v_B)`."""
    sw = jnp.sqrt(law.weights)
    xt = blk.attention * sw[None, :]
    share = jnp.where(jnp.isfinite(blk.logw), jnp.exp(blk.logw - jnp.max(blk.logw)), 0.0)
    vbar = _mm(share, blk.values) / jnp.sum(share)  # a shift changes nothing
    resp = jnp.concatenate([jnp.ones_like(blk.values[:, :1]), blk.values - vbar], axis=1)
    lam, out = blk.output[:, 0], blk.output[:, 1:]
    xy = sw[:, None] * jnp.concatenate([lam[:, None], out - lam[:, None] * vbar], axis=1)
    norms = jnp.sum(xt * xt, axis=1)
    floor = ridge * jnp.sum(norms) / jnp.maximum(blk.ok.sum(), 1) + 1e-30
    priv = jnp.where(blk.ok, blk.private, 0.0)
    mu_b = jnp.where(blk.ok, priv + floor, 0.0)
    return xt, priv, floor, mu_b, norms + mu_b, _mm(xt, xy) + mu_b[:, None] * resp, resp


def isolation(gram):
    r"""Per column of a Gram matrix ``[L, L]``, :math:`1-\max_{i\ne j}\cos^2(x_i,x_j)`: how far
    a query can tell the atom apart from the most similar other one (0 for a duplicated
    column). Two atoms that every query of the law sees alike have no separate isolating
    probe."""
    dg = jnp.diagonal(gram)
    cos2 = gram ** 2 / jnp.maximum(dg[:, None] * dg[None, :], 1e-300)
    cos2 = jnp.where(jnp.eye(gram.shape[0], dtype=bool), 0.0, cos2)
    return jnp.clip(1.0 - jnp.max(cos2, axis=1), 0.0, 1.0)


def select_block(law: Law, blk: Block, key, *, k: int, pool: int, n_pool, seeds: int,
                 rounds: int, m, n_seed, value_aware: bool, ridge: float):
    """Step 4 for one block: ``k`` atom indices into the block (the first ``m`` used):
    ``n_seed`` (traced) seeds drawn in ``rounds`` rounds of adaptive length-squared sampling
    (at most ``seeds`` a round, V3), then the greedy for the block's values (or value-blind
    pivoting) on a candidate pool, the first ``n_pool`` (traced) of ``pool`` candidates."""
    xt, priv, floor, mu, norms2, corr, resp = block_operator(law, blk, ridge)
    ok = blk.ok
    gain = jnp.where(ok, jnp.sum(corr * corr, axis=1) / jnp.maximum(norms2, 1e-30), -1.0)
    size = ok.shape[0]  # uniforms drawn: independent of the budget
    u_seed, u_pool = Q.uniforms(key, [(rounds * size if seeds else 0,), ok.shape], xt.dtype)
    if seeds:
        seed = adaptive_seeds(u_seed.reshape(rounds, size)[:, :seeds], xt, mu, norms2, ok,
                              round_counts(n_seed, rounds))
    else:
        seed = jnp.zeros_like(ok)
    cand = candidate_pool(gain, norms2, seed & ok, ok, pool, u_pool)
    xc = xt[cand]
    g0 = _mm(xc, xc.T)
    lost = priv[cand] * (1.0 - isolation(g0))  # probes that cannot isolate their atom
    gram = g0 + jnp.diag(floor + priv[cand] - lost)
    c_pool = corr[cand] - lost[:, None] * resp[cand]
    live = ok[cand] & (jnp.arange(pool) < n_pool)
    order = gram_order(gram, c_pool if value_aware else None, k, seed[cand], live, m,
                       factor=xc)
    return cand[order]


def nearest_slot(blk: Block, order, act):
    """For every atom of the block, the used slot (index into ``order``) whose key is nearest
    to its own: a kept atom's own slot, a dropped atom's nearest kept key -- the slot its
    isolating probe reads in the summary (and the group it joins when merged)."""
    kout = blk.keys[order]
    # the squared distance less each atom's own squared norm (alike for every slot of a row),
    # a cache-sized tile of atoms at a time
    far = jnp.where(act, jnp.sum(kout * kout, axis=1), jnp.inf)
    n = blk.keys.shape[0]
    tile = max(1, min(n, 2 ** 18 // max(1, order.shape[0])))
    keys = jnp.pad(blk.keys, ((0, -n % tile), (0, 0))).reshape(-1, tile, blk.keys.shape[1])
    lab = lax.map(lambda kt: _first_argmin(far[None, :] - 2 * _mm(kt, kout.T)), keys)
    lab = lab.reshape(-1)[:n]
    kept = jnp.where(act, order, blk.keys.shape[0])  # unused slots scatter nowhere
    return lab.at[kept].set(jnp.arange(order.shape[0], dtype=lab.dtype), mode="drop")


def slot_atoms(law: Law, blk: Block, order, act, lab, *, scale, merged: bool):
    r"""The atoms a candidate of step 5 starts from, one per slot of the block (``order``: atom
    indices into the block, ``act``: used slots, ``lab``: :func:`nearest_slot`): keys
    ``[k, d]``, log-weights ``[k]``, prior values ``[k, dv]`` and the law's attention on them
    ``[k, r]`` (unused slots: zero). The kept atoms themselves, or with ``merged`` every block
    atom joined to its slot's group, whose key becomes the group's centroid and whose
    log-weight the group's mass."""
    kout, bcol, prior = blk.keys[order], blk.logw[order], blk.values[order]
    if not merged:
        return kout, bcol, prior, blk.attention[order] * act[:, None]
    k = order.shape[0]
    bmax = jnp.max(blk.logw)
    wj = jnp.where(blk.ok & jnp.isfinite(blk.logw), jnp.exp(blk.logw - bmax), 0.0)
    mass = jax.ops.segment_sum(wj, lab, k)
    safe = jnp.where(mass > 0, mass, 1.0)[:, None]
    has = (mass > 0)[:, None]
    kout = jnp.where(has, jax.ops.segment_sum(wj[:, None] * blk.keys, lab, k) / safe, kout)
    prior = jnp.where(has, jax.ops.segment_sum(wj[:, None] * blk.values, lab, k) / safe, prior)
    bcol = jnp.where(mass > 0, bmax + jnp.log(safe[:, 0]), -jnp.inf)
    pt = jnp.exp(scale * _mm(kout, law.queries.T) + bcol[:, None] - law.logz[None, :])
    return kout, bcol, prior, pt * act[:, None]


def fit_block(law: Law, blk: Block, order, act, lab, start, *, ridge, iters: int):
    r"""Step 5 for one block: log-weights and values of its ``k`` slots from the atoms
    ``start`` = :func:`slot_atoms` (keys, log-weights, prior values, attention; the keys are
    kept). With :math:`\mu_j` the weight of atom j's isolating probe and :math:`\mu_s` the
    total over the atoms whose probe reads slot s: mass,
    :math:`\min_{c\ge0}\sum_iw_i(\sum_sc_sp_s(q_i)-\lambda_B(q_i))^2+\sum_s\mu_{j_s}(c_s-1)^2`
    (a kept atom's probe sees it alone; from c = 1); values,
    :math:`\min\sum_iw_i\lambda_B^2\lVert\hat A_B-A_B\rVert^2
    +\sum_j\mu_j\lVert\hat v_{s(j)}-v_j\rVert^2` plus a floor ``ridge`` x the mean diagonal
    of the value system towards the same target."""
    w = law.weights
    k = order.shape[0]
    kout, bcol, prior, pt = start
    mu = jnp.where(blk.ok, blk.private, 0.0)
    mu_s = jax.ops.segment_sum(mu, lab, k)  # the probes reading each slot
    v0 = jnp.where((mu_s > 0)[:, None],
                   jax.ops.segment_sum(mu[:, None] * blk.values, lab, k)
                   / jnp.where(mu_s > 0, mu_s, 1.0)[:, None], prior)
    own = jnp.where(act, blk.private[order], 0.0)  # a kept atom's probe: mass c_s against 1
    lam = blk.output[:, 0]  # the block's share of each query [r]
    c = mass_coefficients(pt.T, lam, w, pull=own, start=act.astype(pt.dtype), iters=iters,
                          exact_up_to=0)  # unused slots: zero columns, c stays 0
    c = jnp.where(act, c, 0.0)
    beta = jnp.where(c > 0, bcol + jnp.log(jnp.where(c > 0, c, 1.0)), -jnp.inf)
    ph = pt * c[:, None]
    zb = jnp.sum(ph, axis=0, keepdims=True)
    phn = ph / jnp.where(zb > 0, zb, 1.0)  # [k, r]: the summary's attention within the block
    safe_lam = jnp.where(lam > 0, lam, 1.0)[:, None]
    target = blk.output[:, 1:] / safe_lam  # the block's output [r, dv]
    wq = w * lam * lam
    floor = ridge * jnp.sum(phn * phn * wq[None, :]) / jnp.maximum(act.sum(), 1) + 1e-30
    reg = jnp.where(act, mu_s + floor, 1.0)  # floor x the mean diagonal of the value system
    return kout, beta, fitted_values(phn.T, target, wq, ridge=reg, prior=v0)


def private_risk(blocks: Block, lab, active, slot_values):
    r""":math:`\sum_j\mu_j\lVert\hat v_{s(j)}-v_j\rVert^2`: the risk of the exact isolating
    probes, atom j's reading slot ``lab[j]`` of its block (``slot_values [nb, k, dv]``); a block
    without a used slot is left out (its probes read other blocks, alike for every candidate)."""
    got = jnp.take_along_axis(slot_values, lab[..., None], axis=1)  # [nb, B, dv]
    err = jnp.sum((got - blocks.values) ** 2, axis=-1)
    live = blocks.ok & jnp.take_along_axis(active, lab, axis=1)
    return jnp.sum(jnp.where(live, blocks.private * err, 0.0))


def law_risk(law: Law, exact, summary: Cache, scale):
    """Risk of ``summary`` on the law's query rows, whose exact outputs are ``exact [r, dv]``
    (the private rows: :func:`private_risk`), and its log-masses on them ``[r]``."""
    sh = scale * _mm(law.queries, summary.keys.T) + summary.logw[None, :]
    out = _mm(jax.nn.softmax(sh, axis=1), summary.values)
    return jnp.sum(law.weights * jnp.sum((out - exact) ** 2, axis=1)), jax.nn.logsumexp(sh, 1)


def select_supports(law: Law, blocks: Block, m_b, keys, *, slots: int, pool: float,
                    sampled: float, rounds: int, value_aware: bool, ridge: float):
    """Step 4 for every block (``keys [nb]``, one per block): ``order [nb, slots]``, atom
    indices into each block, the first ``m_b`` of them used; a pool of
    ``max(256, ceil(pool x m_b))`` candidates (at most the block) and
    ``floor(sampled x m_b)`` seeds per block, drawn in ``rounds`` adaptive rounds."""
    size_b = blocks.ok.shape[1]
    size = min(size_b, max(slots, math.ceil(pool * slots), 256))
    # draws a round: the largest round (m_b <= slots), so its Gram rows are O(m), never O(n);
    # the uniforms behind them do not depend on the budget
    seeds = max(1, -(-math.floor(sampled * slots) // rounds)) if sampled > 0 else 0
    n_seed = jnp.floor(sampled * m_b).astype(jnp.int32)
    n_pool = jnp.minimum(jnp.maximum(jnp.ceil(pool * m_b).astype(jnp.int32), 256), size)

    def one(bl, m, ns, npool, kb):
        return select_block(law, bl, kb, k=slots, pool=size, n_pool=npool, seeds=seeds,
                            rounds=rounds, m=m, n_seed=ns, value_aware=value_aware, ridge=ridge)

    args = (blocks, m_b, n_seed, n_pool, keys)
    if blocks.ok.shape[0] == 1:  # one block: no batched loop (it would copy its state per step)
        return one(*jax.tree.map(lambda x: x[0], args))[None]
    return jax.vmap(one)(*args)


def block_candidates(kinds, law: Law, cache: Cache, blocks: Block, cols, order, active, lab,
                     *, scale, ridge: float, iters: int):
    """Step 6's candidates ``kinds`` on the selected supports, one ``(keys [nb, k, d],
    log-weights [nb, k], values [nb, k, dv])`` per kind. ``"exact"``: the atoms ``cols`` kept as
    they are; ``"fit"``: step 5 (:func:`fit_block`) on them; ``"merged"``: step 5 after merging
    every atom into its nearest kept key (:func:`slot_atoms`). The fitted kinds are solved
    together (one batched fit). A block given all its atoms stays exact in every candidate.
    Unused slots have log-weight ``-inf``."""
    keys, values = cache.keys[cols], cache.values[cols]
    logw = jnp.where(active, cache.logw[cols], -jnp.inf)
    fitted = [kind for kind in kinds if kind != "exact"]
    parts = {"exact": (keys, logw, values)}
    if fitted:
        def per_block(bl, o, a, lb):
            starts = [slot_atoms(law, bl, o, a, lb, scale=scale, merged=kind == "merged")
                      for kind in fitted]
            return jax.vmap(lambda st: fit_block(law, bl, o, a, lb, st, ridge=ridge, iters=iters)
                            )(jax.tree.map(lambda *xs: jnp.stack(xs), *starts))

        kout, beta, vout = jax.vmap(per_block)(blocks, order, active, lab)  # [nb, kind, ...]
        whole = active.sum(1) >= blocks.ok.sum(1)
        for i, kind in enumerate(fitted):
            parts[kind] = (jnp.where(whole[:, None, None], keys, kout[:, i]),
                           jnp.where(whole[:, None], logw, beta[:, i]),
                           jnp.where(whole[:, None, None], values, vout[:, i]))
    return [parts[kind] for kind in kinds]


def join_summary(cache: Cache, prot, part, sel, position) -> Cache:
    """The summary: the protected atoms ``prot`` of ``cache``, then the used slots ``sel`` of
    the blocks' candidate ``part`` (:func:`block_candidates`), in the order ``position``."""
    keys, logw, values = part
    summ = Cache(jnp.concatenate([cache.keys[prot], keys.reshape(-1, keys.shape[-1])[sel]]),
                 jnp.concatenate([cache.values[prot],
                                  values.reshape(-1, values.shape[-1])[sel]]),
                 jnp.concatenate([cache.logw[prot], logw.reshape(-1)[sel]]))
    return Cache(*(x[position] for x in summ))


def least_risk(law: Law, exact, summaries, private, scale):
    """Step 6's in-sample choice: the summary with the smallest risk on the law, its query
    rows (:func:`law_risk`, exact outputs ``exact``) plus its probes (``private``,
    :func:`private_risk`); the candidates are evaluated together (one batched risk). Risks
    within round-off of the least (a relative 1e3 ulp) are ties, won by the first candidate:
    a single slot's output is its value whatever its key, so there the fitted and the merged
    candidates tie exactly, and a choice by round-off would differ between compiled programs.
    Returns the summary and its mass gap on the law's query rows (U4(c)'s certificate,
    :func:`minimaxkv.bounds.gap_of_log_masses`)."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *summaries)
    risks, logz = jax.vmap(lambda s: law_risk(law, exact, s, scale))(stacked)
    total = risks + jnp.stack(private)
    low = jnp.min(total)
    best = jnp.argmax(total <= low + 1e3 * jnp.finfo(total.dtype).eps * jnp.abs(low))
    gap = gap_of_log_masses(law.logz, logz[best], law.weights)
    return jax.tree.map(lambda x: x[best], stacked), gap


def minimax(sinks: int = 0, window: int = 0, block: int | None = None, samples: int | None = None,
            horizon: int = 512, theta: float | rope.Llama3 = 10000.0, convention: str = "half",
            agnostic: bool = False, logit_std: float = 2.0, ridge: float = 1e-3,
            window_frac: float = 0.125, response: str = "mass", selection: str = "value",
            merge: bool = True, sampled: float = 0.125, rounds: int = 2, pool: float = 1.5,
            probes: float = 1.0, probe_share: str = "collision", forward: float = 0.5,
            reach: int = 16, scale: float | None = None, iters: int = 100) -> Rule:
    r"""The minimax rule; ``agnostic=True`` gives the query-agnostic variant.

    ``block=None`` treats everything between the sinks and the window as one block (one-shot
    compression); in causal use pass the driver's block size, so the summary of the past and the
    newly closed block compete for the budget as blocks. ``samples``: model draws of the law
    (default ``min(max(128, n / 4), 256)``); ``sampled``: share of each block's slots seeded by
    adaptive length-squared sampling in ``rounds`` rounds (V3); ``pool``: candidates per slot of the
    greedy; ``probes``: the isolating probes' share as a multiple of the collision probability
    :math:`\kappa` (V2; 0 drops them: the fit then serves the observed queries alone);
    ``probe_share``: ``"collision"`` (V2 over tokens, V2') or ``"variance"`` (V2'': the
    attention's total variance, which leaves out the pattern every query shares -- lower risk on
    natural continuations, fewer retrievals of what no observed query saw; docs/theory.md §9.2);
    ``forward``: the share of the probes placed on the atoms read up to ``reach`` steps after what
    the observed queries read (V6; 0: every atom alike, as before);
    ``scale``: the attention temperature (default d^-1/2).
    """
    if response not in ("full", "mass"):
        raise ValueError(f"response: expected 'full' or 'mass', got {response!r}")
    if selection not in ("value", "spectral"):
        raise ValueError(f"selection: expected 'value' or 'spectral', got {selection!r}")
    if (block is not None and block < 1) or (samples is not None and samples < 1):
        raise ValueError("block and samples must be positive")
    if probes < 0:
        raise ValueError(f"probes must be >= 0, got {probes}")
    if probe_share not in ("collision", "variance"):
        raise ValueError(f"probe_share: expected 'collision' or 'variance', got {probe_share!r}")
    if not 0.0 <= sampled <= 1.0 or pool < 1.0:
        raise ValueError(f"sampled must lie in [0, 1] and pool be >= 1, got {sampled}, {pool}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not 0.0 <= forward <= 1.0 or not isinstance(reach, int) or reach < 1:
        raise ValueError(f"forward must lie in [0, 1] and reach be a positive integer, got "
                         f"{forward}, {reach!r}")

    def compress(cache, budget, queries, key):
        return summarize(cache, budget, None, queries, key)

    def upto(cache, capacity, budget, queries, key):
        return summarize(cache, capacity, budget, queries, key)

    def summarize(cache, budget, used, queries, key):
        """The summary of ``budget`` atoms; with ``used`` (traced, no sinks, window or blocks)
        only its first ``used`` free slots are filled, the rest are empty."""
        n, d = cache.keys.shape
        tau = default_scale(d) if scale is None else scale
        win = min(window, int(window_frac * max(0, budget - min(sinks, budget))))
        sink_idx, win_idx, free = protected_split(n, budget, sinks, win)
        prot = jnp.asarray(sink_idx + win_idx, jnp.int32)
        lo, hi = len(sink_idx), n - len(win_idx)
        n_mid = hi - lo
        exact = Cache(*(x[prot] for x in cache))
        if free == 0:
            return Summary(exact, None if merge else prot)
        if free >= n_mid and used is None:
            kept = jnp.arange(n, dtype=jnp.int32)[:budget]
            return Summary(Cache(*(x[kept] for x in cache)), None if merge else kept)
        dt = jnp.promote_types(cache.keys.dtype, jnp.float32)
        cache = Cache(*(x.astype(dt) for x in cache))
        size_b = n_mid if block is None else block
        keys = jax.random.split(key, 1 + -(-n_mid // size_b))  # the law's, then each block's
        draws = min(max(128, n // 4), 256) if samples is None else samples
        law = reference_law(cache, queries, keys[0], draws=draws, horizon=horizon, theta=theta,
                            convention=convention, agnostic=agnostic, logit_std=logit_std,
                            scale=tau, probes=probes, probe_share=probe_share,
                            forward=forward, reach=reach)
        blocks = split_blocks(law, cache, lo, hi, size_b)
        m_b = allocate(law, blocks, free, used, response)
        slots = min(size_b, free)  # no block gets more: every block has this many
        order = select_supports(law, blocks, m_b, keys[1:], slots=slots, pool=pool,
                                sampled=sampled, rounds=rounds,
                                value_aware=selection == "value", ridge=ridge)
        active = jnp.arange(slots)[None, :] < m_b[:, None]
        lab = jax.vmap(nearest_slot)(blocks, order, active)  # [nb, B]
        cols = lo + size_b * jnp.arange(m_b.shape[0])[:, None] + order  # [nb, k]
        # the used slots of every block, in block order, after the protected atoms
        sel = jnp.arange(free) if m_b.shape[0] == 1 else \
            jnp.nonzero(active.reshape(-1), size=free)[0]
        kept = jnp.concatenate([prot, cols.reshape(-1)[sel]])
        slot = jnp.arange(budget)  # unused slots (only with ``used``) go last
        position = jnp.argsort(kept if used is None else jnp.where(slot < used, kept, n + slot))
        kinds = ("fit", "exact", "merged") if merge else ("fit", "exact")
        parts = block_candidates(kinds, law, cache, blocks, cols, order, active, lab, scale=tau,
                                 ridge=ridge, iters=iters)
        summaries = [join_summary(cache, prot, part, sel, position) for part in parts]
        private = [private_risk(blocks, lab, active, part[2]) for part in parts]
        exact = _mm(law.attention[prot].T, cache.values[prot]) + blocks.output[..., 1:].sum(0)
        best, gap = least_risk(law, exact, summaries, private, tau)
        return Summary(best, None if merge else kept[position], gap)

    name = "minimax_agnostic" if agnostic else "minimax"
    # a traced budget needs the protected atoms and the blocks' shares independent of it
    traced = sinks == 0 and window == 0 and block is None
    return Rule(name, compress, False, None, upto if traced else None, randomized=True)


def allocate(law: Law, blocks: Block, free: int, used, response: str):
    r"""Step 3 (V5): slots per block. One block gets every free slot (``used`` if traced);
    several compete by the eigenvalues of their response covariance -- of the value-class
    operator :math:`X_B=W^{1/2}P_B` (``response="mass"``) or of the normalised responses
    :math:`p_j(q)(1,v_j)` (``"full"``) -- block B getting as many slots as it has eigenvalues
    among the global top ``free``."""
    nb, blk = blocks.ok.shape
    if nb == 1:
        return jnp.full((1,), free if used is None else used)
    sw = jnp.sqrt(law.weights)[:, None]

    def response_of(bl):  # the query rows, then the private rows of the isolating probes
        pb = sw * bl.attention.T  # [r, B]
        priv = jnp.sqrt(jnp.where(bl.ok, bl.private, 0.0))
        if response == "mass":
            return jnp.concatenate([pb, jnp.diag(priv)])
        resp_of = jnp.concatenate([jnp.ones((1, blk), pb.dtype), bl.values.T], axis=0)
        rows = (pb[:, None, :] * resp_of[None]).reshape(-1, blk)
        own = (priv[None, :] * resp_of)[None] * jnp.eye(blk, dtype=pb.dtype)[:, None, :]
        return jnp.concatenate([rows, own.reshape(-1, blk)])

    eig = jax.vmap(lambda bl: _gram_eigenvalues(response_of(bl), blk))(blocks)
    nvalid = blocks.ok.sum(1)
    eig = jnp.where(jnp.arange(blk)[None, :] < nvalid[:, None], jnp.maximum(eig, 0.0), -jnp.inf)
    thresh = lax.top_k(eig.reshape(-1), free)[0][-1]
    above = eig > thresh
    return above.sum(1) + _ties(eig, thresh, free - above.sum())


def _gram_eigenvalues(f, k: int):
    """The ``k`` largest eigenvalues of :math:`F^TF` for ``f [R, B]`` (descending), through the
    smaller of the two Gram matrices (the nonzero spectra of F^T F and F F^T coincide)."""
    r, b = f.shape
    small = _mm(f.T, f) if b <= r else _mm(f, f.T)
    eig = jnp.linalg.eigvalsh(small)[::-1]
    return jnp.concatenate([eig, jnp.zeros((max(0, k - eig.shape[0]),), eig.dtype)])[:k]


def _ties(eig, thresh, remaining):
    """Hand the ``remaining`` slots to eigenvalues equal to the threshold, block by block."""
    eq = (eig == thresh).sum(1)
    before = jnp.cumsum(eq) - eq
    return jnp.clip(remaining - before, 0, eq)
