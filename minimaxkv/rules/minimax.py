r"""The theory-derived ``minimax`` rule (THEORY.md §6, docs/theory.md §§4-7, §9).

1. Keep what no summary replaces: ``sinks`` first atoms and an exact recent ``window`` (at most
   ``window_frac`` = 1/8 of the budget left by the sinks).
2. Split the rest into blocks of ``block`` atoms (the blocks of causal use; one block in
   one-shot compression).
3. Reference law (docs/theory.md §9), every query counted once: the observed queries (weight 1
   each); ``samples`` draws of future queries (default ``max(64, 4 n)``, at most
   2048) from the RoPE mixture of a Ledoit-Wolf Gaussian fitted to them, weight
   :math:`1-\kappa` each; and one key-aligned *probe* per atom (the query along its key at the
   reference query scale, a query that looks the atom up), of weight :math:`\kappa n e^{b_j}/
   \sum e^b`, where :math:`\kappa = \mathbb E_{\rm obs}\lVert p(q)\rVert^2` is the observed
   collision probability, which brackets the fraction of queries that isolate one atom (V2).
   Query-agnostic (``agnostic=True``): isotropic draws at logit scale ``logit_std`` in place of
   observed and fitted queries (:math:`\kappa` measured on them), and the probes.
4. Spend the budget where the spectrum is heavy: the eigenvalues of every block's response
   covariance compete -- by default of the value-class operator :math:`X = W^{1/2}P` restricted
   to the block (``response="mass"``, :math:`G^0 = X^TX`, docs/theory.md L2/M1), or of the
   full normalised responses :math:`p_j(q)(1, v_j)` (``response="full"``) -- and block B gets
   :math:`m_B` = the number of its eigenvalues among the global top ``free``, the allocation
   that minimises the summed spectral tails. The probes are left out of this operator (ideal
   isolating probes would shift every eigenvalue alike). A block that receives all its atoms is
   kept exact (abstention).
5. Within a block, pick :math:`m_B` atoms for *these* values (``selection="value"``, V1): greedy
   least squares (simultaneous orthogonal matching pursuit) of the block's normalised response
   :math:`\sum_{j\in B}p_j(q)(1, v_j - \bar v_B)` by the atoms' mass responses, which is the
   least-squares-refit risk of the support for the known values; or by pivoted Gram-Schmidt on
   the allocation operator (``selection="spectral"``, value-oblivious, U4).
6. Fit: match the block's mass by NNLS on the log-weights (the block weights
   :math:`\lambda_B` are preserved, C1) and fit values by least squares weighted by the block's
   attention share, with a ridge (``ridge``) towards the atoms' own values.
7. ``merge=True``: a second candidate on the same support moves every kept key to the centroid
   of the block atoms nearest to it (identity I3, bound U3) and refits log-weights and values
   the same way; the rule returns the candidate with the smaller risk on the reference law. Both
   have ``budget`` atoms of keys, values and log-weights (equal bytes); with ``merge=True`` the
   summary may hold new keys, so ``kept`` is ``None``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .. import linalg, rope
from .. import queries as Q
from ..cache import Cache, Summary
from ..linalg import matmul as _mm
from .base import Rule, protected_split, query_positions
from .eviction import _fit


def _new_direction(basis, col):
    """``col`` orthogonalised against the columns of ``basis`` (twice: Gram-Schmidt with
    reorthogonalisation) and normalised; zero when it lies in their span."""
    for _ in range(2):
        col = col - _mm(basis, _mm(basis.T, col))
    nrm = jnp.linalg.norm(col)
    return jnp.where(nrm > 0, col / jnp.where(nrm > 0, nrm, 1.0), 0.0)


def pivoted_order(a, k: int, valid=None):
    """First ``k`` column pivots of ``a [r, B]`` by greedy residual norm (Gram-Schmidt, twice);
    columns with ``valid == False`` are never picked before the valid ones."""
    r, nb = a.shape

    def body(t, st):
        basis, norms, chosen, order = st
        j = jnp.argmax(jnp.where(chosen, -jnp.inf, norms))
        col = _new_direction(basis, a[:, j])
        basis = basis.at[:, t].set(col)
        norms = jnp.where(norms >= 0, jnp.maximum(norms - _mm(col, a) ** 2, 0.0), norms)
        return basis, norms, chosen.at[j].set(True), order.at[t].set(j.astype(jnp.int32))

    valid = jnp.ones((nb,), bool) if valid is None else valid
    init = (jnp.zeros((r, k), a.dtype), jnp.where(valid, jnp.sum(a * a, axis=0), -1.0),
            jnp.zeros((nb,), bool), jnp.zeros((k,), jnp.int32))
    return lax.fori_loop(0, k, body, init)[3]


def target_order(a, t, k: int, valid=None, steps=None):
    r"""First ``k`` columns of ``a [r, B]`` chosen greedily for the target ``t [r, c]``
    (simultaneous orthogonal matching pursuit): each step adds the column whose residual (after
    projecting out the columns chosen so far) removes the most of the target's residual,
    :math:`\lVert R^Ta_j\rVert^2/\lVert\tilde a_j\rVert^2`. Once the target is fitted (or no
    column reduces it) the step falls back to the largest residual column (pivoted QR).
    ``steps`` (traced, at most k) stops after that many choices; later entries are 0."""
    r, nb = a.shape
    valid = jnp.ones((nb,), bool) if valid is None else valid
    eps = jnp.finfo(a.dtype).eps
    init_norms = jnp.sum(a * a, axis=0)
    t0 = jnp.sum(t * t)

    def body(i, st):
        basis, norms, resid, corr, chosen, order = st  # corr = resid^T a, [c, B]
        live = (~chosen) & valid & (norms > 1e3 * eps * init_norms)
        gain = jnp.where(live, jnp.sum(corr * corr, axis=0) / jnp.where(live, norms, 1.0), -1.0)
        j_gain = jnp.argmax(gain)
        j_piv = jnp.argmax(jnp.where((~chosen) & valid, norms, -1.0) +
                           jnp.where(chosen | ~valid, -jnp.inf, 0.0))
        j = jnp.where(gain[j_gain] > 1e3 * eps * t0, j_gain, j_piv)
        col = _new_direction(basis, a[:, j])
        basis = basis.at[:, i].set(col)
        ca, cr = _mm(col, a), _mm(col, resid)  # [B], [c]
        resid = resid - col[:, None] * cr[None, :]
        corr = corr - cr[:, None] * ca[None, :]  # rank-one update: O(cB), not O(rcB)
        norms = jnp.maximum(norms - ca ** 2, 0.0)
        return (basis, norms, resid, corr, chosen.at[j].set(True),
                order.at[i].set(j.astype(jnp.int32)))

    init = (jnp.zeros((r, k), a.dtype), init_norms, t, _mm(t.T, a), jnp.zeros((nb,), bool),
            jnp.zeros((k,), jnp.int32))
    return lax.fori_loop(0, k if steps is None else steps, body, init)[5]


def ledoit_wolf(q):
    r"""Gaussian fit of ``q [p, d]`` (p >= 2) with the Ledoit-Wolf (2004) shrinkage of the
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


def reference_queries(cache: Cache, queries, key, *, samples, horizon, theta, convention,
                      agnostic, logit_std):
    """Observed queries ``[N, d]`` (N = 0 when ``agnostic``) followed by ``samples`` draws of
    future queries: the RoPE mixture of a Ledoit-Wolf Gaussian fitted per query head, or
    isotropic draws at logit scale ``logit_std`` when ``agnostic``. Returns (queries, N)."""
    d = cache.keys.shape[1]
    k = cache.keys.astype(jnp.float32)
    if agnostic or queries is None:
        sigma = logit_std * jnp.sqrt(d) / jnp.sqrt(jnp.mean(jnp.sum(k * k, axis=1)))
        return sigma * jax.random.normal(key, (samples, d)), 0
    g, p, _ = queries.shape
    q = queries.astype(jnp.float32)
    pre = rope.apply(q, -query_positions(cache.n, p), theta, convention)
    per = max(1, samples // g)

    def draw(qh, kh):
        law = ledoit_wolf(qh) if p >= 2 else _fit(qh, 1e-3)
        return Q.sample(Q.rope_future(law, cache.n, horizon, theta, convention), kh, per)

    fut = jax.vmap(draw)(pre, jax.random.split(key, g)).reshape(-1, d)
    obs = q.reshape(-1, d)
    return jnp.concatenate([obs, fut]), obs.shape[0]


def reference_law(keys, logw, ref, n_obs: int):
    """Add one key-aligned probe per atom and weight the law (docs/theory.md §9).

    ``ref [r, d]``: observed queries first (``n_obs`` of them), then future draws. Returns
    (queries ``[r + n, d]``, weights ``[r + n]`` summing to 1, the attention matrix ``[r + n, n]``,
    kappa, and the mask of the probe rows)."""
    r0, d = ref.shape
    n = keys.shape[0]
    kn = jnp.linalg.norm(keys, axis=1, keepdims=True)
    scale = jnp.sqrt(jnp.mean(jnp.sum(ref * ref, axis=1)))
    queries = jnp.concatenate([ref, scale * keys / jnp.where(kn > 0, kn, 1.0)])
    pmat = jax.nn.softmax(d ** -0.5 * _mm(queries, keys.T) + logw[None, :], axis=1)
    base = n_obs if n_obs else r0  # rows kappa is measured on: observed, else the draws
    kappa = jnp.mean(jnp.sum(pmat[:base] ** 2, axis=1))
    w = jnp.where(jnp.arange(r0) < n_obs, 1.0, 1 - kappa)  # every query counts once
    prior = jnp.where(jnp.isfinite(logw), jax.nn.softmax(logw), 0.0)
    w = jnp.concatenate([w, kappa * n * prior])
    return queries, w / jnp.sum(w), pmat, kappa, jnp.arange(r0 + n) >= r0


def minimax(sinks: int = 0, window: int = 0, block: int | None = None, samples: int | None = None,
            horizon: int = 512, theta: float = 10000.0, convention: str = "half",
            agnostic: bool = False, logit_std: float = 2.0, ridge: float = 1e-3,
            window_frac: float = 0.125, response: str = "mass", selection: str = "value",
            merge: bool = True) -> Rule:
    """The minimax rule; ``agnostic=True`` gives the query-agnostic variant.

    ``block=None`` treats everything between the sinks and the window as one block (one-shot
    compression: the whole context closes at once); in causal use pass the driver's block size,
    so the summary of the past and the newly closed block compete for the budget as blocks.
    """
    if response not in ("full", "mass"):
        raise ValueError(f"response: expected 'full' or 'mass', got {response!r}")
    if selection not in ("value", "spectral"):
        raise ValueError(f"selection: expected 'value' or 'spectral', got {selection!r}")
    if (block is not None and block < 1) or (samples is not None and samples < 1):
        raise ValueError("block and samples must be positive")

    def compress(cache, budget, queries, key):
        return summarize(cache, budget, None, queries, key)

    def upto(cache, capacity, budget, queries, key):
        return summarize(cache, capacity, budget, queries, key)

    def summarize(cache, budget, used, queries, key):
        """The summary of ``budget`` atoms; with ``used`` (traced, no sinks, window or blocks:
        see ``upto`` below) only its first ``used`` free slots are filled, the rest are empty."""
        n = cache.n
        # the exact window takes at most window_frac of what the sinks leave of the budget
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
        keys, vals, b = (x.astype(dt) for x in cache)
        # max(64, 4 n) capped at 2048 (= max(64, 2 budget, 4 n): budget <= n never decides it)
        draws = min(max(64, 4 * n), 2048) if samples is None else samples
        ref, n_obs = reference_queries(cache, queries, key, samples=draws, horizon=horizon,
                                       theta=theta, convention=convention, agnostic=agnostic,
                                       logit_std=logit_std)
        ref, wref, pmat, _, probe = reference_law(keys, b, ref.astype(dt), n_obs)
        sw = jnp.sqrt(wref)[:, None]
        sw_alloc = jnp.where(probe[:, None], 0.0, sw)  # probes stay out of the allocation
        blk = n_mid if block is None else block
        nb = -(-n_mid // blk)
        pad = nb * blk - n_mid
        idx = jnp.concatenate([jnp.arange(lo, hi), jnp.full((pad,), lo)]).reshape(nb, blk)
        valid = (jnp.arange(nb * blk) < n_mid).reshape(nb, blk)

        def block_response(ix, ok):
            pb = pmat[:, ix] * ok[None, :]  # [r, B]
            if response == "mass":  # X = W^1/2 P: the value-class operator (M1)
                return sw_alloc * pb
            resp = pb[:, None, :] * jnp.concatenate(
                [jnp.ones((1, blk), dt), vals[ix].T], axis=0)[None]  # [r, 1+dv, B]
            return (sw_alloc[:, :, None] * resp).reshape(-1, blk)

        resp = jax.vmap(block_response)(idx, valid)  # [nb, R, B]
        nvalid = valid.sum(1)
        if nb == 1:  # one block: it gets every free slot, no spectrum needed
            m_b = jnp.full((1,), free if used is None else used)
        else:
            eig = jax.vmap(lambda f: _gram_eigenvalues(f, blk))(resp)  # [nb, B], descending
            eig = jnp.where(jnp.arange(blk)[None, :] < nvalid[:, None], jnp.maximum(eig, 0.0),
                            -jnp.inf)
            thresh = lax.top_k(eig.reshape(-1), free)[0][-1]
            above = eig > thresh
            m_b = above.sum(1) + _ties(eig, thresh, free - above.sum())
        kk = min(blk, free)  # no block gets more slots: every per-block array has kk slots

        def value_order(ix, ok):  # V1: greedy LS of the block's response for these values
            bmax = jnp.max(jnp.where(ok, b[ix], -jnp.inf))
            wb = jnp.where(ok & jnp.isfinite(b[ix]), jnp.exp(b[ix] - bmax), 0.0)
            vb = vals[ix] - _mm(wb, vals[ix]) / jnp.sum(wb)  # centred: a shift changes nothing
            xb = sw * pmat[:, ix] * ok[None, :]
            y = jnp.concatenate([jnp.sum(xb, axis=1, keepdims=True), _mm(xb, vb)], axis=1)
            return target_order(xb, y, kk, ok, used)

        if selection == "value":
            order = jax.vmap(value_order)(idx, valid)
        else:
            order = jax.vmap(lambda f, ok: pivoted_order(f, kk, ok))(resp, valid)  # [nb, kk]
        active = jnp.arange(kk)[None, :] < m_b[:, None]  # slot t of block B is used
        logz = jax.nn.logsumexp(d_scale(ref) * _mm(ref, keys.T) + b[None, :], axis=1)

        def fit_block(ix, order_b, act, m, nv, merged):
            cols = ix[order_b]
            okb = jnp.arange(blk) < nv
            kout, bcol, prior = keys[cols], b[cols], vals[cols]
            pb = pmat[:, cols] * act[None, :]
            if merged:  # every block atom joins its nearest kept key; that key -> the centroid
                kb = keys[ix]  # squared distances [B, kk] without a [B, kk, d] temporary
                d2 = (jnp.sum(kb * kb, axis=1)[:, None] + jnp.sum(kout * kout, axis=1)[None, :]
                      - 2 * _mm(kb, kout.T))
                lab = jnp.argmin(jnp.where(act[None, :], d2, jnp.inf), axis=1)
                bmax = jnp.max(jnp.where(okb, b[ix], -jnp.inf))
                wj = jnp.where(okb & jnp.isfinite(b[ix]), jnp.exp(b[ix] - bmax), 0.0)
                oh = jax.nn.one_hot(lab, kk, dtype=dt) * wj[:, None]  # [atoms, slots]
                mass = jnp.sum(oh, axis=0)
                safe = jnp.where(mass > 0, mass, 1.0)[:, None]
                kout = jnp.where((mass > 0)[:, None], _mm(oh.T, keys[ix]) / safe, kout)
                prior = jnp.where((mass > 0)[:, None], _mm(oh.T, vals[ix]) / safe, prior)
                bcol = jnp.where(mass > 0, bmax + jnp.log(safe[:, 0]), -jnp.inf)
                pb = jnp.exp(d_scale(ref) * _mm(ref, kout.T) + bcol[None, :] - logz[:, None])
                pb = pb * act[None, :]
            lam = jnp.sum(pmat[:, ix] * okb[None, :], axis=1)  # block share
            c = linalg.nnls(sw * pb, sw[:, 0] * lam, 300)
            c = jnp.where(act, c, 0.0)
            beta = jnp.where(c > 0, bcol + jnp.log(jnp.where(c > 0, c, 1.0)), -jnp.inf)
            ph = pb * c[None, :]
            zb = jnp.sum(ph, axis=1, keepdims=True)
            phn = ph / jnp.where(zb > 0, zb, 1.0)
            target = _mm(pmat[:, ix] * okb[None, :], vals[ix]) / \
                jnp.where(lam > 0, lam, 1.0)[:, None]
            wq = sw * lam[:, None]  # query weight x the block's attention share
            h = _mm((wq * phn).T, wq * phn)
            rlam = ridge * jnp.trace(h) / blk + 1e-30
            vhat = linalg.ridge_solve(wq * phn, wq * target, rlam, prior)
            whole = m >= nv  # abstain: keep the block exact
            beta = jnp.where(whole, jnp.where(act, b[cols], -jnp.inf), beta)
            vhat = jnp.where(whole, vals[cols], vhat)
            kout = jnp.where(whole, keys[cols], kout)
            return kout, beta, vhat

        sel = jnp.arange(free) if nb == 1 else jnp.nonzero(active.reshape(-1), size=free)[0]

        def assemble(merged):
            kout, beta, vhat = jax.vmap(lambda *a: fit_block(*a, merged))(
                idx, order, active, m_b, nvalid)
            return Cache(
                jnp.concatenate([exact.keys.astype(dt), kout.reshape(-1, keys.shape[1])[sel]]),
                jnp.concatenate([exact.values.astype(dt), vhat.reshape(-1, vals.shape[1])[sel]]),
                jnp.concatenate([exact.logw.astype(dt), beta.reshape(-1)[sel]]))

        cols = jax.vmap(lambda ix, o: ix[o])(idx, order)
        kept = jnp.concatenate([prot, cols.reshape(-1)[sel]])
        slot = jnp.arange(budget)  # unused slots (only with ``used``) go last
        position = jnp.argsort(kept if used is None else jnp.where(slot < used, kept, n + slot))
        summ = assemble(False)
        if not merge:
            return Summary(Cache(*(x[position] for x in summ)), kept[position])
        alt = assemble(True)
        exact_out = _mm(pmat, vals)

        def ref_risk(c):
            sh = d_scale(ref) * _mm(ref, c.keys.T) + c.logw[None, :]
            return jnp.sum(wref * jnp.sum((_mm(jax.nn.softmax(sh, axis=1), c.values)
                                           - exact_out) ** 2, axis=1))

        use = ref_risk(alt) < ref_risk(summ)
        summ = jax.tree.map(lambda a, s_: jnp.where(use, a, s_), alt, summ)
        return Summary(Cache(*(x[position] for x in summ)), None)

    name = "minimax_agnostic" if agnostic else "minimax"
    # a traced budget needs the protected atoms and the blocks' shares independent of it
    traced = sinks == 0 and window == 0 and block is None
    return Rule(name, compress, False, None, upto if traced else None)


def d_scale(q):
    r"""The logit temperature :math:`1/\sqrt d` for queries ``q [..., d]``."""
    return q.shape[-1] ** -0.5


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
