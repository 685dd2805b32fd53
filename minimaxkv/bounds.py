r"""Exact identities, upper bounds and lower bounds on compression risk (docs/theory.md §2, §4, §5).

Every function here is a statement of ``docs/theory.md`` made computable; the docstring names it.

Upper bounds (a summary of the named kind never exceeds them):
    :func:`eviction_bound` (U1), :func:`logit_bound` (U2), :func:`merging_bound` (U3),
    :func:`refit_worst_case` / :func:`width_upper` (U4), :func:`composition_bound` (C1).
Lower bounds and optima:
    :func:`oracle` (L1, brute force, n <= 16), :func:`width_lower` (L2, value class, worst case),
    :func:`width_average_lower` (L2', value class, random values), :func:`lookup_tail` (L3),
    :func:`value_aware_lower` (L4, supports chosen for the values).
Identities:
    :func:`reweighted_error` (I2); I1 is :func:`minimaxkv.attention.combine`, I3 is
    :func:`minimaxkv.summarize.merge`.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special
from jax import lax

from . import _check
from .attention import HIGHEST, attend, attention_weights, log_mass, logits, prepare
from .cache import Cache, Summary
from .compressibility import diameter
from .fit import fitted_values, mass_coefficients, mass_match
from .linalg import matmul as _mm
from .shapes import Arr, Float, Int, Scalar, Shaped

MAX_ORACLE_N = 16



def _weights(w, p, dtype):
    w = _check.weights(w, p)
    return jnp.full((p,), 1.0 / p, dtype) if w is None else w.astype(dtype)


# ------------------------------------------------------------------------------ identities


def reweighted_error(queries: Float[Arr, "p d"], cache: Cache, c: Float[Arr, " n"], *,
                     scale: Scalar | None = None) -> Float[Arr, "p dv"]:
    r"""I2: the error of keeping atom j with weight factor :math:`c_j\ge 0`, by the closed form

    .. math:: A_{\hat C}(q) - A_C(q) = -\frac{\sum_j (1-c_j)\phi_j(q)}{1 - \sum_j (1-c_j)p_j(q)},

    :math:`\phi_j = p_j(v_j - A)`. ``c [n]`` (0 evicts, 1 keeps). Returns ``[p, dv]``.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    c = _check.array(c, "c", (cache.n,)).astype(q.dtype)
    pmat = attention_weights(q, cache, scale)
    a = attend(q, cache, scale)
    one_minus = 1.0 - c
    num = _mm(pmat * one_minus[None, :], cache.values) - a * _mm(pmat, one_minus)[:, None]
    den = 1.0 - _mm(pmat, one_minus)
    return -num / den[:, None]


# ------------------------------------------------------------------------------ upper bounds


def eviction_bound(queries: Float[Arr, "p d"], cache: Cache, evicted: Shaped[Arr, " n"], *,
                   scale: Scalar | None = None) -> Float[Arr, " p"]:
    r"""U1: :math:`e(q) \le \frac{\varepsilon(q)}{1-\varepsilon(q)}\max_{j\in E}\lVert v_j - A(q)\rVert`.

    ``evicted`` is a boolean mask ``[n]``; :math:`\varepsilon(q) = \sum_{j\in E}p_j(q)`. Returns the
    per-query bound ``[p]`` (``inf`` where everything visible is evicted).
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    ev = jnp.asarray(evicted, bool)
    if ev.shape != (cache.n,):
        raise ValueError(f"evicted: expected a boolean mask of shape ({cache.n},), got {ev.shape}")
    pmat = attention_weights(q, cache, scale)
    eps = jnp.sum(jnp.where(ev[None, :], pmat, 0.0), axis=1)
    kept = jnp.sum(jnp.where(ev[None, :], 0.0, pmat), axis=1)  # 1 - eps, without cancellation
    # v_j - A(q) measured from the query's most attended value c: A - c = sum_l p_l (v_l - c)
    # keeps its digits when A is close to c (1 - eps tiny: the case where the bound is tight)
    rel = cache.values[None, :, :] - cache.values[jnp.argmax(pmat, axis=1)][:, None, :]
    a_rel = jnp.einsum("pn,pnv->pv", pmat, rel, precision=HIGHEST)
    dist = jnp.linalg.norm(rel - a_rel[:, None, :], axis=2)
    far = jnp.max(jnp.where(ev[None, :], dist, 0.0), axis=1)
    return jnp.where(kept > 0, eps / jnp.where(kept > 0, kept, 1.0) * far, jnp.inf)


def softmax_tv_bound(delta):
    r"""U2 lemma: if logits move by :math:`s'_j - s_j \in [\alpha, \alpha + 2\delta]` for all j, the
    attention weights move in total variation by at most :math:`\tanh(\delta/2)` (tight)."""
    return jnp.tanh(jnp.asarray(delta) / 2)


def logit_bound(delta, values: Float[Arr, "n dv"]):
    r"""U2: :math:`e(q)\le\tanh(\delta/2)\,\mathrm{diam}(V)` for logit moves within a band of
    half-width δ (in particular :math:`|s'_j-s_j|\le\delta`), values unchanged."""
    return softmax_tv_bound(delta) * diameter(values)


def merging_bound(queries: Float[Arr, "p d"], cache: Cache, labels: Int[Arr, " n"],
                  centres: Float[Arr, "k d"], *, scale: Scalar | None = None) -> Float[Arr, " p"]:
    r"""U3: a merged summary (I3) errs by at most :math:`\tanh(\tau\lVert q\rVert r/2)\,\mathrm{diam}(V)`,

    with :math:`r = \max_j\lVert k_j - \kappa_{\ell(j)}\rVert` the distance of the keys to their
    cluster's key. ``labels [n]``, ``centres [k, d]``. Returns ``[p]``.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    centres = _check.array(centres, "centres", (None, cache.keys.shape[1])).astype(q.dtype)
    labels = jnp.asarray(labels)
    r = jnp.max(jnp.linalg.norm(cache.keys - centres[labels], axis=1))
    return jnp.tanh(scale * jnp.linalg.norm(q, axis=1) * r / 2) * diameter(cache.values)


def composition_bound(outputs: Float[Arr, "B p dv"], log_masses: Float[Arr, "B p"],
                      outputs_hat: Float[Arr, "B p dv"],
                      log_masses_hat: Float[Arr, "B p"]) -> Float[Arr, " p"]:
    r"""C1: error of a block-wise summary from the blocks' own errors and mass errors.

    With blocks B, exact ``(A_B, log Z_B)`` and summarised ``(Â_B, log Ẑ_B)`` (``[B, p, dv]`` and
    ``[B, p]``), :math:`r_B = \log\hat Z_B - \log Z_B` and :math:`\delta = (\max_B r_B - \min_B r_B)/2`:

    .. math:: \lVert \hat A - A\rVert \le \sum_B \hat\lambda_B\lVert\hat A_B - A_B\rVert
              + \tanh(\delta/2)\max_{B,B'}\lVert A_B - A_{B'}\rVert .

    Returns the per-query bound ``[p]``.
    """
    out, lz, outh, lzh = (jnp.asarray(x) for x in (outputs, log_masses, outputs_hat,
                                                     log_masses_hat))
    lam_hat = jax.nn.softmax(lzh, axis=0)
    err = jnp.linalg.norm(outh - out, axis=2)
    r = lzh - lz
    delta = (jnp.max(r, axis=0) - jnp.min(r, axis=0)) / 2
    spread = jnp.max(jnp.linalg.norm(out[:, None] - out[None, :], axis=3), axis=(0, 1))
    return jnp.sum(lam_hat * err, axis=0) + jnp.tanh(delta / 2) * spread


def refit_worst_case(queries: Float[Arr, "p d"], cache: Cache, keys: Float[Arr, "m d"],
                     logw: Float[Arr, " m"], *, weights: Float[Arr, " p"] | None = None,
                     scale: Scalar | None = None) -> float:
    r"""U4 (exact): worst case over unit-norm value vectors of the least-squares-refit summary.

    The summary has keys ``keys [m, d]`` and log-weights ``logw [m]``; its values are the LS fit
    (:func:`minimaxkv.fit.fit_values`), so its output is :math:`\Pi X v` with :math:`X = W^{1/2}P`
    and :math:`\Pi` the projector on the column span of :math:`W^{1/2}\hat P`. Hence, for one
    value column,

    .. math:: \sup_{\lVert v\rVert=1} R_P = \lVert (I-\Pi)X\rVert_2^2 \;\ge\; \sigma_{m+1}(X)^2.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    x = jnp.sqrt(_weights(weights, q.shape[0], q.dtype))[:, None] * attention_weights(q, cache,
                                                                                       scale)
    dummy = Cache(jnp.asarray(keys, q.dtype), jnp.zeros((len(keys), 1), q.dtype),
                  jnp.asarray(logw, q.dtype))
    xh = jnp.sqrt(_weights(weights, q.shape[0], q.dtype))[:, None] * attention_weights(q, dummy,
                                                                                        scale)
    return _residual_norm2(np.asarray(x, np.float64), np.asarray(xh, np.float64))


def mass_gap(queries: Float[Arr, "p d"], cache: Cache, summary: Cache | Summary, *,
             weights: Float[Arr, " p"] | None = None,
             scale: Scalar | None = None) -> Float[Arr, ""]:
    r"""U4(c)'s mass-matching term of a summary on a query set, an a-posteriori certificate:

    .. math:: \eta = \max_{i:\,w_i>0}\bigl|1 - Z(q_i)/\hat Z(q_i)\bigr|,

    :math:`Z` and :math:`\hat Z` the masses of the cache and of the summary (a ``Cache`` or a
    ``Summary``). For a subset summary with positive factors on a support S, the least-squares
    values' error operator satisfies
    :math:`\lVert(I-\Pi_{\hat X})X\rVert\le\lVert(I-\Pi_{X_S})X\rVert+\eta\lVert X\rVert`
    (docs/theory.md U4(c)). A scalar."""
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    summ = summary.cache if isinstance(summary, Summary) else summary
    _, summ, _, _, _ = prepare(q, summ, scale, name="summary")
    w = _weights(weights, q.shape[0], q.dtype)
    return gap_of_log_masses(log_mass(q, cache, scale), log_mass(q, summ, scale), w)


def gap_of_log_masses(logz: Float[Arr, " p"], logz_hat: Float[Arr, " p"],
                      weights: Float[Arr, " p"]) -> Float[Arr, ""]:
    r""":math:`\max_{i:\,w_i>0}|1-e^{\log Z_i-\log\hat Z_i}|` from the log-masses ``[p]`` (the
    core of :func:`mass_gap`, for callers that hold the log-masses already)."""
    gap = jnp.abs(1.0 - jnp.exp(logz - logz_hat))
    return jnp.max(jnp.where(weights > 0, gap, 0.0))


def _residual_norm2(x, basis):
    u, s, _ = np.linalg.svd(basis, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(basis.shape) * np.finfo(np.float64).eps)) if s.size else 0
    u = u[:, :rank]
    resid = x - u @ (u.T @ x)
    return float(np.linalg.norm(resid, 2) ** 2)


# ------------------------------------------------------------------------------ lower bounds


def _attention_operator(queries, cache, weights, scale):
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    w = _weights(weights, q.shape[0], q.dtype)
    return jnp.sqrt(w)[:, None] * attention_weights(q, cache, scale), cache


def width_lower(queries: Float[Arr, "p d"], cache: Cache, budget: int, *,
                weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    r"""L2: :math:`\sigma_{m+1}(W^{1/2}P)^2` -- value-class worst-case lower bound.

    For every summary whose output is :math:`LV` with :math:`L` of rank :math:`\le m` chosen without
    looking at V (eviction, reweighting, mean-value merging, LS refit with V-independent keys and
    weights), the worst case over one unit-norm value column of the weighted-mean risk
    :math:`\sum_i w_i e(q_i)^2` is at least this number (Eckart-Young). With ``weights=None`` the
    weights are 1/p (the mean over queries); multiply by p for the summed error, by :math:`d_v`
    for :math:`d_v` unit-norm value columns. It bounds the class, not one instance. 0 if m = n.
    """
    x, cache = _attention_operator(queries, cache, weights, scale)
    m = _check.budget(budget, cache.n)
    s = jnp.linalg.svd(x, compute_uv=False)
    return s[m] ** 2 if m < s.shape[0] else jnp.zeros((), s.dtype)


def width_average_lower(queries: Float[Arr, "p d"], cache: Cache, budget: int, *,
                        weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    r"""L2': :math:`\sum_{i>m}\sigma_i(W^{1/2}P)^2` -- value class, random values.

    If the values have i.i.d. zero-mean entries of variance :math:`s^2`, independent of the
    summary's linear map, every rank-m value-linear summary has expected risk
    :math:`\ge d_v s^2 \sum_{i>m}\sigma_i^2` (Eckart-Young in Frobenius norm).
    """
    x, cache = _attention_operator(queries, cache, weights, scale)
    m = _check.budget(budget, cache.n)
    s = jnp.linalg.svd(x, compute_uv=False)
    return jnp.sum(s[m:] ** 2)


class ValueAwareLower(NamedTuple):
    r"""L4's bound ``bound`` :math:`=(1-t)\sigma_k^2`, attained at rank ``rank`` (k) with the
    share ``share`` (t); ``log_subspaces``: log of the count N of candidate output spaces."""

    bound: float
    rank: int
    share: float
    log_subspaces: float


def _projection_share(k: int, m: int, log_count: float, delta: float) -> float:
    r"""L4's :math:`t_k`: a share with :math:`N\,\Pr[\lVert P_Fc\rVert^2\ge t]\le\delta` for a
    fixed m-dimensional F and c uniform on the unit sphere of :math:`\mathbb R^k`, N =
    ``exp(log_count)``: the exact Beta(m/2, (k-m)/2) quantile where it is representable, else
    the Dasgupta-Gupta (2003) tail :math:`\exp(\frac m2(1-\beta+\ln\beta))` at
    :math:`t=\beta m/k`. 1 (no bound) when neither is below 1."""
    tail = math.log(delta) - log_count  # log of the admissible tail per subspace
    if tail > math.log(1e-300):
        return float(scipy.special.betainccinv(m / 2, (k - m) / 2, math.exp(tail)))
    need = -2 * tail / m  # beta - 1 - log beta >= need, beta > 1 (increasing there)
    lo, hi = 1.0, 2.0 + 2 * need
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - 1 - math.log(mid) < need else (lo, mid)
    return min(1.0, hi * m / k)


def value_aware_lower(queries: Float[Arr, "p d"], cache: Cache, budget: int, *, menu: int = 1,
                      weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None,
                      delta: float = 0.5) -> ValueAwareLower:
    r"""L4: a worst-case lower bound for rules that choose their support *knowing the values*.

    Class: summaries of at most m atoms of the cache, the support chosen for the values, with
    keys and log-weights given by one of ``menu`` maps of the support that do not look at V
    (eviction's own weights, mass matching on a value-blind law, merging into the nearest kept
    key; ``minimax`` has 3: fit, exact, merged), and any values. With
    :math:`X=W^{1/2}P` and :math:`N=\mathrm{menu}\sum_{j\le m}\binom nj` candidate output spaces,
    every such rule has
    :math:`\sup_{\lVert v\rVert=1}\sum_iw_ie(q_i)^2\ge\max_{k>m}(1-t_k)\sigma_k(X)^2`; a unit v
    drawn uniformly from the top-k right singular space of X attains it for every rule of the
    class at once with probability at least 1 - ``delta``."""
    x, cache = _attention_operator(queries, cache, weights, scale)
    m = _check.budget(budget, cache.n)
    n = cache.n
    sig2 = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False) ** 2
    log_count = math.log(menu) + math.log(sum(math.comb(n, j) for j in range(1, m + 1)))
    best = ValueAwareLower(0.0, m, 1.0, log_count)
    for k in range(m + 1, sig2.shape[0] + 1):
        t = _projection_share(k, m, log_count, delta)
        if (1 - t) * sig2[k - 1] > best.bound:
            best = best._replace(bound=float((1 - t) * sig2[k - 1]), rank=k, share=t)
    return best


def lookup_tail(n: int, m: float, gap: float):
    r"""L3 (closed form): :math:`\sum_{i>m}\sigma_i^2` for the exact lookup cache.

    Orthogonal keys, query i aligned with key i with logit gap ``gap`` (own logit minus the others'),
    uniform weights over the n queries: :math:`P = (a-o)I + o\mathbf 1\mathbf 1^T` with
    :math:`a = e^{g}/(e^{g}+n-1)`, :math:`o = 1/(e^{g}+n-1)`; for :math:`1\le m<n` the tail is
    :math:`(n-m)(a-o)^2/n` (``m`` may be real: the formula continued between budgets is what the
    ``lookup_support`` experiment inverts).
    """
    if not 1 <= m <= n:
        raise ValueError(f"m: expected 1 <= m <= n = {n}, got {m}")
    den = math.exp(gap) + n - 1
    a, o = math.exp(gap) / den, 1.0 / den
    return (n - m) * (a - o) ** 2 / n


# ------------------------------------------------------------------------------ achievable


def max_volume_support(queries: Float[Arr, "p d"], cache: Cache, budget: int, *,
                       weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    """Support of m columns of :math:`W^{1/2}P` with maximal volume (brute force, n <= 16)."""
    x, cache = _attention_operator(queries, cache, weights, scale)
    m = _check.budget(budget, cache.n)
    _small(cache.n)
    x = np.asarray(x, np.float64)
    best, arg = -1.0, None
    for s in itertools.combinations(range(cache.n), m):
        vol = abs(np.linalg.det(x[:, s].T @ x[:, s]))
        if vol > best:
            best, arg = vol, s
    return np.asarray(arg)


def width_upper(queries: Float[Arr, "p d"], cache: Cache, budget: int, *,
                weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None, support=None,
                iters: int = 2000):
    r"""U4: achievable value-class worst case of mass-matched, LS-refit subset summaries.

    For a support S: log-weights by mass matching (:func:`minimaxkv.fit.mass_match`), values by
    least squares; returns :func:`refit_worst_case` for it. With ``support=None``: the minimum over
    all supports of size m when there are at most 200 of them, else the support of
    column-pivoted QR on :math:`W^{1/2}P`. Returns ``(value, support)``.
    """
    x, cache = _attention_operator(queries, cache, weights, scale)
    m = _check.budget(budget, cache.n)
    if support is not None:
        cands = [np.asarray(support)]
    elif math.comb(cache.n, m) <= 200:
        cands = [np.asarray(s) for s in itertools.combinations(range(cache.n), m)]
    else:
        _, _, piv = scipy.linalg.qr(np.asarray(x, np.float64), mode="economic", pivoting=True)
        cands = [np.sort(piv[:m])]
    best = (np.inf, None)
    for s in cands:
        beta = mass_match(queries, cache, jnp.asarray(s), weights=weights, scale=scale,
                          iters=iters)
        val = refit_worst_case(queries, cache, cache.keys[s], beta, weights=weights, scale=scale)
        if val < best[0]:
            best = (val, s)
    return best


# ------------------------------------------------------------------------------ oracle (L1)


class OracleResult(NamedTuple):
    """Best summary found by :func:`oracle` and the best plain eviction for reference."""

    risk: jax.Array
    summary: Summary
    eviction_risk: jax.Array
    eviction_support: jax.Array


def _small(n):
    if n > MAX_ORACLE_N:
        raise ValueError(f"brute force over supports needs n <= {MAX_ORACLE_N} atoms, got n = {n}")


def _supports(n: int, m: int):
    rows, masks = [], []
    for k in range(1, m + 1):
        for s in itertools.combinations(range(n), k):
            rows.append(list(s) + [s[0]] * (m - k))
            masks.append([True] * k + [False] * (m - k))
    return jnp.asarray(rows, jnp.int32), jnp.asarray(masks)


def oracle(queries: Float[Arr, "p d"], cache: Cache, budget: int, *,
           weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None, steps: int = 150,
           lr: float = 0.05, nnls_iters: int = 500, batch_size: int = 512) -> OracleResult:
    r"""L1: brute-force best summary of the subset class, for ``n <= 16``.

    Class: at most m of the cache's atoms (keys unchanged), any log-weights, any values. For every
    support S with :math:`|S|\le m` it evaluates

    1. plain eviction (:math:`\beta = b_S`, :math:`\hat V = V_S`);
    2. least-squares values with :math:`\beta = b_S` and with the mass-matching
       :math:`\beta = b_S + \log c` (NNLS), each refined by ``steps`` Adam steps on :math:`\beta`
       of the risk with LS values (variable projection);

    and keeps the lowest risk. So per instance the result is at most the risk of every eviction,
    mass-matched reweighting and LS refit on any support -- the oracle's class -- and, the risk
    being a minimum over supports of a non-convex function of β, an upper bound on the class's
    exact optimum that is exact over supports.
    """
    q, cache, scale, _, _ = prepare(queries, cache, scale)
    _small(cache.n)
    m = _check.budget(budget, cache.n)
    w = _weights(weights, q.shape[0], q.dtype)
    s = logits(q, cache.keys, cache.logw, scale)
    a = attend(q, cache, scale)
    pmat = attention_weights(q, cache, scale)
    idx, mask = _supports(cache.n, m)
    ev, best, beta, vals = _oracle_all(s, pmat, a, cache.values, w, idx, mask, lr, steps=steps,
                                       nnls_iters=nnls_iters, batch_size=batch_size)
    i = int(jnp.argmin(best))
    j = int(jnp.argmin(ev))
    k = int(mask[i].sum())
    kept = idx[i, :k]
    summary = Summary(Cache(cache.keys[kept], vals[i, :k], beta[i, :k] + cache.logw[kept]), kept)
    return OracleResult(best[i], summary, ev[j], idx[j, : int(mask[j].sum())])


@partial(jax.jit, static_argnames=("steps", "nnls_iters", "batch_size"))
def _oracle_all(s, pmat, a, values, w, idx, mask, lr, *, steps, nnls_iters, batch_size):
    def one(im):
        return _oracle_one(s, pmat, a, values, w, *im, steps=steps, lr=lr, nnls_iters=nnls_iters)

    return lax.map(one, (idx, mask), batch_size=batch_size)


def _masked_softmax(x, mask):
    mx = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0) - mx), 0.0)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _ls_risk(delta, s_sub, mask, a, w):
    """Risk with LS values for logits ``s_sub + delta``; returns (risk, values)."""
    ph = _masked_softmax(s_sub + delta[None, :], mask[None, :])
    ridge = 1e-13 * (jnp.sum(w[:, None] * ph * ph) + 1e-300)  # 1e-13 x trace(ph^T W ph)
    vals = fitted_values(ph, a, w, ridge=ridge)
    err = _mm(ph, vals) - a
    return jnp.sum(w * jnp.sum(err * err, axis=1)), vals


def _oracle_one(s, pmat, a, values, w, idx, mask, *, steps, lr, nnls_iters):
    s_sub = s[:, idx]
    # 1. plain eviction
    ph = _masked_softmax(s_sub, mask[None, :])
    ev_err = _mm(ph, values[idx]) - a
    ev_risk = jnp.sum(w * jnp.sum(ev_err * ev_err, axis=1))
    # 2. mass matching start
    msub = jnp.where(mask[None, :], pmat[:, idx], 0.0)
    c = mass_coefficients(msub, jnp.ones_like(w), w, iters=nnls_iters)
    start_mm = jnp.where(mask, jnp.log(jnp.maximum(c, 1e-30)), 0.0)

    def obj(delta):
        return _ls_risk(delta, s_sub, mask, a, w)[0]

    vg = jax.value_and_grad(obj)

    def descend(x0):
        def body(t, st):
            x, mo, ve, bx, bf = st
            f, g = vg(x)
            g = jnp.where(jnp.isfinite(g) & mask, g, 0.0)
            better = f < bf
            bx, bf = jnp.where(better, x, bx), jnp.where(better, f, bf)
            mo = 0.9 * mo + 0.1 * g
            ve = 0.999 * ve + 0.001 * g * g
            mh = mo / (1 - 0.9 ** (t + 1))
            vh = ve / (1 - 0.999 ** (t + 1))
            return x - lr * mh / (jnp.sqrt(vh) + 1e-12), mo, ve, bx, bf

        z = jnp.zeros_like(x0)
        x, _, _, bx, bf = lax.fori_loop(0, steps, body, (x0, z, z, x0, jnp.asarray(jnp.inf,
                                                                                    x0.dtype)))
        f = obj(x)
        return jnp.where(f < bf, x, bx), jnp.minimum(f, bf)

    x0, f0 = descend(jnp.zeros((idx.shape[0],), s.dtype))
    x1, f1 = descend(start_mm.astype(s.dtype))
    delta = jnp.where(f1 < f0, x1, x0)
    _, vals = _ls_risk(delta, s_sub, mask, a, w)
    ls_risk = obj(delta)
    use_ev = ev_risk <= ls_risk
    best = jnp.minimum(ev_risk, ls_risk)
    delta = jnp.where(use_ev, 0.0, delta)
    vals = jnp.where(use_ev, values[idx], vals)
    return ev_risk, best, delta, vals
