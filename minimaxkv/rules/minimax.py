r"""The theory-derived ``minimax`` rule (THEORY.md §6, docs/theory.md §§4-7).

1. Keep what no summary replaces: ``sinks`` first atoms and an exact recent ``window`` (at most
   ``window_frac`` = 1/8 of the budget left by the sinks).
2. Split the rest into blocks of ``block`` atoms (the blocks of causal use; one block in
   one-shot compression).
3. Reference queries: the observed queries plus ``samples`` (default max(64, 2 x budget), so the
   fit stays overdetermined) draws of future queries from the
   RoPE mixture fitted to them (query-aware), or isotropic draws at a logit scale
   ``logit_std`` (query-agnostic, ``agnostic=True``: no observed query is used).
4. Spend the budget where the spectrum is heavy: the eigenvalues of every block's response
   covariance compete -- by default of the value-class operator :math:`X = W^{1/2}P` restricted
   to the block (``response="mass"``, :math:`G^0 = X^TX`, which governs the value-class width,
   docs/theory.md L2/M1; values are then fitted, not selected), or of the full normalised
   responses :math:`p_j(q)(1, v_j)` (``response="full"``) -- and block B gets
   :math:`m_B` = the number of its eigenvalues among the global top ``free`` -- the allocation
   that minimises the summed spectral tails :math:`\sum_B\sum_{i>m_B}\lambda_i^{(B)}`. A block
   that receives all its atoms is kept exact (abstention).
5. Within a block, pick :math:`m_B` atoms by pivoted Gram-Schmidt on the response matrix
   (column subset selection, U4), match the block's mass by NNLS on the log-weights (so the block
   weights :math:`\lambda_B` are preserved, C1) and fit values by least squares weighted by the
   block's attention share, with a ridge (``ridge``) towards the atoms' own values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .. import linalg, rope
from .. import queries as Q
from ..cache import Cache, Summary
from .base import Rule, protected_split, query_positions
from .eviction import _fit
from ..linalg import matmul as _mm



def pivoted_order(a, k: int, valid=None):
    """First ``k`` column pivots of ``a [r, B]`` by greedy residual norm (Gram-Schmidt, twice);
    columns with ``valid == False`` are never picked before the valid ones."""
    r, nb = a.shape

    def body(t, st):
        basis, norms, chosen, order = st
        j = jnp.argmax(jnp.where(chosen, -jnp.inf, norms))
        col = a[:, j]
        for _ in range(2):
            col = col - _mm(basis, _mm(basis.T, col))
        nrm = jnp.linalg.norm(col)
        col = jnp.where(nrm > 0, col / jnp.where(nrm > 0, nrm, 1.0), 0.0)
        basis = basis.at[:, t].set(col)
        norms = jnp.where(norms >= 0, jnp.maximum(norms - _mm(col, a) ** 2, 0.0), norms)
        return basis, norms, chosen.at[j].set(True), order.at[t].set(j.astype(jnp.int32))

    valid = jnp.ones((nb,), bool) if valid is None else valid
    init = (jnp.zeros((r, k), a.dtype), jnp.where(valid, jnp.sum(a * a, axis=0), -1.0),
            jnp.zeros((nb,), bool), jnp.zeros((k,), jnp.int32))
    return lax.fori_loop(0, k, body, init)[3]


def reference_queries(cache: Cache, queries, key, *, samples, horizon, theta, convention,
                      agnostic, logit_std):
    """Observed queries plus sampled future ones (or isotropic draws when ``agnostic``), with
    weights: the observed and the sampled queries carry half the total weight each."""
    d = cache.keys.shape[1]
    k = cache.keys.astype(jnp.float32)
    if agnostic or queries is None:
        sigma = logit_std * jnp.sqrt(d) / jnp.sqrt(jnp.mean(jnp.sum(k * k, axis=1)))
        return sigma * jax.random.normal(key, (samples, d)), jnp.full((samples,), 1.0 / samples)
    g, p, _ = queries.shape
    q = queries.astype(jnp.float32)
    pre = rope.apply(q, -query_positions(cache.n, p), theta, convention)
    per = max(1, samples // g)

    def draw(qh, kh):
        law = Q.rope_future(_fit(qh, 1e-3), cache.n, horizon, theta, convention)
        return Q.sample(law, kh, per)

    fut = jax.vmap(draw)(pre, jax.random.split(key, g)).reshape(-1, d)
    obs = q.reshape(-1, d)
    w = jnp.concatenate([jnp.full((obs.shape[0],), 0.5 / obs.shape[0]),
                         jnp.full((fut.shape[0],), 0.5 / fut.shape[0])])
    return jnp.concatenate([obs, fut]), w


def minimax(sinks: int = 0, window: int = 0, block: int | None = None, samples: int | None = None,
            horizon: int = 512, theta: float = 10000.0, convention: str = "half",
            agnostic: bool = False, logit_std: float = 2.0, ridge: float = 1e-3,
            window_frac: float = 0.125, response: str = "mass") -> Rule:
    """The minimax rule; ``agnostic=True`` gives the query-agnostic variant.

    ``block=None`` treats everything between the sinks and the window as one block (one-shot
    compression: the whole context closes at once); in causal use pass the driver's block size,
    so the summary of the past and the newly closed block compete for the budget as blocks.
    """
    if response not in ("full", "mass"):
        raise ValueError(f"response: expected 'full' or 'mass', got {response!r}")
    if (block is not None and block < 1) or (samples is not None and samples < 1):
        raise ValueError("block and samples must be positive")

    def compress(cache, budget, queries, key):
        n = cache.n
        # the exact window takes at most window_frac of what the sinks leave of the budget
        win = min(window, int(window_frac * max(0, budget - min(sinks, budget))))
        sink_idx, win_idx, free = protected_split(n, budget, sinks, win)
        prot = jnp.asarray(sink_idx + win_idx, jnp.int32)
        lo, hi = len(sink_idx), n - len(win_idx)
        n_mid = hi - lo
        exact = Cache(*(x[prot] for x in cache))
        if free == 0:
            return Summary(exact, prot)
        if free >= n_mid:
            kept = jnp.arange(n, dtype=jnp.int32)[:budget]
            return Summary(Cache(*(x[kept] for x in cache)), kept)
        dt = jnp.promote_types(cache.keys.dtype, jnp.float32)
        keys, vals, b = (x.astype(dt) for x in cache)
        draws = max(64, 2 * budget) if samples is None else samples
        ref, wref = reference_queries(cache, queries, key, samples=draws, horizon=horizon,
                                      theta=theta, convention=convention, agnostic=agnostic,
                                      logit_std=logit_std)
        ref, sw = ref.astype(dt), jnp.sqrt(wref).astype(dt)[:, None]
        s = ref.shape[-1] ** -0.5 * _mm(ref, keys.T) + b[None, :]
        pmat = jax.nn.softmax(s, axis=1)  # [r, n], globally normalised
        blk = n_mid if block is None else block
        nb = -(-n_mid // blk)
        pad = nb * blk - n_mid
        idx = jnp.concatenate([jnp.arange(lo, hi), jnp.full((pad,), lo)]).reshape(nb, blk)
        valid = (jnp.arange(nb * blk) < n_mid).reshape(nb, blk)

        def block_response(ix, ok):
            pb = pmat[:, ix] * ok[None, :]  # [r, B]
            if response == "mass":  # X = W^1/2 P: the value-class operator (M1)
                return sw * pb
            resp = pb[:, None, :] * jnp.concatenate(
                [jnp.ones((1, blk), dt), vals[ix].T], axis=0)[None]  # [r, 1+dv, B]
            return (sw[:, :, None] * resp).reshape(-1, blk)

        resp = jax.vmap(block_response)(idx, valid)  # [nb, R, B]
        eig = jax.vmap(lambda f: jnp.linalg.eigvalsh(_mm(f.T, f))[::-1])(resp)  # [nb, B]
        nvalid = valid.sum(1)
        eig = jnp.where(jnp.arange(blk)[None, :] < nvalid[:, None], jnp.maximum(eig, 0.0),
                        -jnp.inf)
        thresh = lax.top_k(eig.reshape(-1), free)[0][-1]
        above = eig > thresh
        m_b = above.sum(1) + _ties(eig, thresh, free - above.sum())
        order = jax.vmap(lambda f, ok: pivoted_order(f, blk, ok))(resp, valid)  # [nb, B]
        active = jnp.arange(blk)[None, :] < m_b[:, None]  # slot t of block B is used

        def fit_block(ix, order_b, act, m, nv):
            cols = ix[order_b]
            pb = pmat[:, cols] * act[None, :]
            lam = jnp.sum(pmat[:, ix] * (jnp.arange(blk) < nv)[None, :], axis=1)  # block share
            c = linalg.nnls(sw * pb, sw[:, 0] * lam, 300)
            c = jnp.where(act, c, 0.0)
            beta = jnp.where(c > 0, b[cols] + jnp.log(jnp.where(c > 0, c, 1.0)), -jnp.inf)
            ph = pb * c[None, :]
            zb = jnp.sum(ph, axis=1, keepdims=True)
            phn = ph / jnp.where(zb > 0, zb, 1.0)
            target = _mm(pmat[:, ix] * (jnp.arange(blk) < nv)[None, :], vals[ix]) / \
                jnp.where(lam > 0, lam, 1.0)[:, None]
            wq = sw * lam[:, None]  # query weight x the block's attention share
            h = _mm((wq * phn).T, wq * phn)
            rlam = ridge * jnp.trace(h) / blk + 1e-30
            vhat = linalg.ridge_solve(wq * phn, wq * target, rlam, vals[cols])
            whole = m >= nv  # abstain: keep the block exact
            beta = jnp.where(whole, jnp.where(act, b[cols], -jnp.inf), beta)
            vhat = jnp.where(whole, vals[cols], vhat)
            return cols, beta, vhat

        cols, beta, vhat = jax.vmap(fit_block)(idx, order, active, m_b, nvalid)
        sel = jnp.nonzero(active.reshape(-1), size=free)[0]
        kept_mid = cols.reshape(-1)[sel]
        summ = Cache(jnp.concatenate([exact.keys.astype(dt), keys[kept_mid]]),
                     jnp.concatenate([exact.values.astype(dt), vhat.reshape(-1, vals.shape[1])[sel]]),
                     jnp.concatenate([exact.logw.astype(dt), beta.reshape(-1)[sel]]))
        kept = jnp.concatenate([prot, kept_mid])
        order_all = jnp.argsort(kept)
        return Summary(Cache(*(x[order_all] for x in summ)), kept[order_all])

    name = "minimax_agnostic" if agnostic else "minimax"
    return Rule(name, compress, False)


def _ties(eig, thresh, remaining):
    """Hand the ``remaining`` slots to eigenvalues equal to the threshold, block by block."""
    eq = (eig == thresh).sum(1)
    before = jnp.cumsum(eq) - eq
    return jnp.clip(remaining - before, 0, eq)
