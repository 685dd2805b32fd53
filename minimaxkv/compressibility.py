r"""Intrinsic compressibility of a cache under a query law (docs/theory.md §3).

With normalised responses :math:`\tilde\psi_j(q) = p_j(q)\,(1, v_j)` and value-centred responses
:math:`\phi_j(q) = p_j(q)(v_j - A(q))`, for a weighted query set :math:`(q_i, w_i)`:

.. math::
    G_{jl} = \sum_i w_i \langle\tilde\psi_j(q_i), \tilde\psi_l(q_i)\rangle
           = \big[P^T W P \circ (\mathbf 1\mathbf 1^T + VV^T)\big]_{jl},\qquad
    \Gamma_{jl} = \sum_i w_i \langle\phi_j(q_i), \phi_l(q_i)\rangle .

Fast spectral decay means a few atoms' responses span the rest (compressible); a flat spectrum
(lookup-like context) means every atom is needed by some query. Also here: tail mass, ε-rank,
effective dimension, ridge leverage scores, singular values of the attention operator, entropy,
top-m mass, the greedy k-centre covering radius of the keys and the radius of the values.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _check, linalg
from .attention import HIGHEST, attend, attention_weights, prepare
from .cache import Cache
from .linalg import matmul as _mm
from .shapes import Arr, Float, Scalar



def _setup(queries, cache, weights, scale):
    q, c, scale, _, _ = prepare(queries, cache, scale)
    w = _check.weights(weights, q.shape[0])
    w = jnp.full((q.shape[0],), 1.0 / q.shape[0], q.dtype) if w is None else w.astype(q.dtype)
    pmat = attention_weights(q, c, scale)
    return q, c, scale, w, pmat


def response_covariance(queries: Float[Arr, "p d"], cache: Cache, *,
                        weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    r"""Response covariance :math:`G = P^TWP\circ(\mathbf 1\mathbf 1^T + VV^T)`, ``[n, n]`` (PSD).

    Example:
        >>> import jax.numpy as jnp, minimaxkv as mkv
        >>> c = mkv.Cache(jnp.zeros((3, 2)), jnp.zeros((3, 1)))
        >>> mkv.compressibility.response_covariance(jnp.ones((2, 2)), c)[0, 1].item()  # (1/3)^2
        0.1111111...
    """
    _, c, _, w, pmat = _setup(queries, cache, weights, scale)
    return _g(pmat, w, c.values)


@jax.jit
def _g(pmat, w, values):
    k = _mm(pmat.T * w[None, :], pmat)
    return k * (1.0 + _mm(values, values.T))


def value_centred_covariance(queries: Float[Arr, "p d"], cache: Cache, *,
                             weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    r"""Value-centred covariance :math:`\Gamma_{jl} = \sum_i w_i p_j p_l\langle v_j - A, v_l - A\rangle`.

    Expanded with :math:`M_{ij} = p_j(q_i)\langle v_j, A(q_i)\rangle`:
    :math:`\Gamma = P^TWP\circ VV^T - M^TWP - P^TWM + P^T\mathrm{diag}(w\lVert A\rVert^2)P`.
    Note :math:`\Gamma\mathbf 1 = 0` since :math:`\sum_j\phi_j(q) = 0`.
    """
    q, c, scale, w, pmat = _setup(queries, cache, weights, scale)
    a = attend(q, c, scale)
    return _gamma(pmat, w, c.values, a)


@jax.jit
def _gamma(pmat, w, values, a):
    vv = _mm(values, values.T)
    m = pmat * _mm(a, values.T)
    wp = pmat * w[:, None]
    return (
        _mm(pmat.T, wp) * vv
        - _mm(m.T, wp)
        - _mm(wp.T, m)
        + _mm(pmat.T * (w * jnp.sum(a * a, axis=1))[None, :], pmat)
    )


def response_factor(queries: Float[Arr, "p d"], cache: Cache, *,
                    weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None,
                    centred=False):
    r"""A factor :math:`F` ``[n, p(1+d_v)]`` (``[n, p d_v]`` if centred) with :math:`G = FF^T`.

    Column ``(i, c)`` is :math:`\sqrt{w_i}` times coordinate c of :math:`\tilde\psi_j(q_i)`
    (or :math:`\phi_j(q_i)`).
    """
    q, c, scale, w, pmat = _setup(queries, cache, weights, scale)
    if centred:
        a = attend(q, c, scale)
        resp = pmat[:, :, None] * (c.values[None, :, :] - a[:, None, :])
    else:
        ones = jnp.ones((c.n, 1), c.values.dtype)
        resp = pmat[:, :, None] * jnp.concatenate([ones, c.values], axis=1)[None]
    resp = resp * jnp.sqrt(w)[:, None, None]
    return jnp.transpose(resp, (1, 0, 2)).reshape(c.n, -1)


def spectrum(queries: Float[Arr, "p d"], cache: Cache, k: int | None = None, *,
             weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None, centred=False,
             key=None, oversample: int | None = None, iters: int = 4, method: str = "subspace",
             block: int | None = None, depth: int = 6):
    r"""Eigenvalues of :math:`G` (or :math:`\Gamma` if ``centred``), descending.

    ``k=None``: the exact spectrum (``eigvalsh`` of G, or of :math:`F^TF` when that is smaller;
    both have the same non-zero eigenvalues), length n. ``k`` given: the top-k Ritz values of a
    randomized subspace iteration or, with ``method="krylov"``, of a block Krylov space
    (:func:`randomized_spectrum`), each a lower bound on the corresponding eigenvalue and within
    its residual of the spectrum.
    """
    if k is None:
        f = response_factor(queries, cache, weights=weights, scale=scale, centred=centred)
        n, r = f.shape
        if r < n:
            ev = jnp.linalg.eigvalsh(_mm(f.T, f))
            ev = jnp.concatenate([jnp.zeros((n - r,), ev.dtype), ev])  # ascending
        else:
            ev = jnp.linalg.eigvalsh(_mm(f, f.T))
        return jnp.clip(ev[::-1], 0.0, None)
    return randomized_spectrum(queries, cache, k, weights=weights, scale=scale, centred=centred,
                               key=key, oversample=oversample, iters=iters, method=method,
                               block=block, depth=depth).values


def randomized_spectrum(queries: Float[Arr, "p d"], cache: Cache, k: int, *,
                        weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None,
                        centred=False, key=None, oversample: int | None = None, iters: int = 4,
                        method: str = "subspace", block: int | None = None,
                        depth: int = 6) -> linalg.Ritz:
    """Top-k eigenpairs of G (or Γ) with residual bounds, without forming the n x n matrix.

    ``method="subspace"``: ``k + oversample`` columns (default oversample = k) and ``iters``
    power steps (:func:`~minimaxkv.linalg.randomized_eigh`). ``method="krylov"``: a block Krylov
    space of ``depth + 1`` blocks of ``block`` columns (default ``k // 2``;
    :func:`~minimaxkv.linalg.block_krylov_eigh`). Products with
    G use the factor form, :math:`GX = F(F^TX)`, computed from the attention
    weights in blocks: cost :math:`O(p\\,n\\,d_v\\,(k+\\text{oversample}))` per product.
    """
    q, c, scale, w, pmat = _setup(queries, cache, weights, scale)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c.n:
        raise ValueError(f"k: expected an int in [1, n={c.n}], got {k!r}")
    if key is None:
        raise ValueError("randomized_spectrum draws its starting block at random: pass key= (a "
                         "jax.random.PRNGKey)")
    if centred:
        a = attend(q, c, scale)
        mat = partial(_gamma_matmat, pmat, w, c.values, a)
    else:
        mat = partial(_g_matmat, pmat, w, c.values)
    if method == "krylov":
        block = max(1, k // 2) if block is None else block
        return linalg.block_krylov_eigh(mat, c.n, k, key, block, depth, pmat.dtype)
    if method != "subspace":
        raise ValueError(f"method: expected 'subspace' or 'krylov', got {method!r}")
    oversample = k if oversample is None else oversample
    return linalg.randomized_eigh(mat, c.n, k, key, oversample, iters, pmat.dtype)


MATMAT_BLOCK = 1024  # atoms per block of the factor F in products with G


@jax.jit
def _g_matmat(pmat, w, values, x):
    r"""G x = F (F^T x) with the factor :math:`F_{j,(i,c)} = \sqrt{w_i} P_{ij} \hat v_{jc}`,
    :math:`\hat v_j = (1, v_j)`, never formed: with :math:`\tilde P = W^{1/2}P`,
    :math:`(F^Tx)_{(i,c)} = \sum_j \tilde P_{ij}\hat v_{jc}x_j`, one matmul of :math:`\tilde P`
    with the ``[n, (1+d_v) k]`` array :math:`\hat v_{jc}x_{jk}`, and
    :math:`(Gx)_j = \sum_c \hat v_{jc}\,(\tilde P^T F^Tx)_{j,c}`. Atoms go a block at a time
    (two passes, :math:`4\,n\,p(1+d_v)\,k` flops, temporaries ``[block, (1+d_v) k]``). When
    ``k >= p`` the block of F itself, ``[block, p(1+d_v)]``, is the smaller temporary and is
    built instead."""
    n, k = x.shape
    p = pmat.shape[0]
    b = min(MATMAT_BLOCK, n)
    nb = -(-n // b)
    pad = nb * b - n
    vhat = jnp.concatenate([jnp.ones((n, 1), values.dtype), values], axis=1)
    c1 = vhat.shape[1]
    pw = (pmat * jnp.sqrt(w)[:, None]).T  # [n, p]
    pw = jnp.pad(pw, ((0, pad), (0, 0))).reshape(nb, b, p)
    vhat = jnp.pad(vhat, ((0, pad), (0, 0))).reshape(nb, b, c1)
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(nb, b, k)

    if k >= p:
        def factor(pb, vb):  # the block's rows of F, [b, p(1+dv)]
            return (pb[:, :, None] * vb[:, None, :]).reshape(b, p * c1)

        def project(acc, blk):  # accumulate F^T x, [p(1+dv), k]
            pb, vb, xb_ = blk
            return acc + _mm(factor(pb, vb).T, xb_), None

        def expand(blk):
            return _mm(factor(*blk), ftx)

        ftx, _ = lax.scan(project, jnp.zeros((p * c1, k), x.dtype), (pw, vhat, xb))
        return lax.map(expand, (pw, vhat)).reshape(nb * b, k)[:n]

    def project(acc, blk):  # accumulate F^T x as [p, (1+dv) k]
        pb, vb, xb_ = blk
        return acc + _mm(pb.T, (vb[:, :, None] * xb_[:, None, :]).reshape(b, c1 * k)), None

    ftx, _ = lax.scan(project, jnp.zeros((p, c1 * k), x.dtype), (pw, vhat, xb))

    def expand(blk):  # rows of F (F^T x) for one block of atoms
        pb, vb = blk
        return jnp.sum(vb[:, :, None] * _mm(pb, ftx).reshape(b, c1, k), axis=1)

    out = lax.map(expand, (pw, vhat))
    return out.reshape(nb * b, k)[:n]


@jax.jit
def _gamma_matmat(pmat, w, values, a, x):
    # Gamma x = sum_i w_i X_i X_i^T x with X_i = diag(p_i)(V - 1 a_i^T), [n, dv]
    # X_i^T x = V^T (p_i * x) - a_i (p_i . x)
    px = pmat[:, :, None] * x[None, :, :]  # [p, n, k]
    u = jnp.einsum("nv,pnk->pvk", values, px, precision=HIGHEST) - a[:, :, None] * jnp.sum(
        px, axis=1
    )[:, None, :]
    u = u * w[:, None, None]
    # X_i u_i = p_i * (V u_i - 1 (a_i . u_i))
    vu = jnp.einsum("nv,pvk->pnk", values, u, precision=HIGHEST) - jnp.einsum(
        "pv,pvk->pk", a, u, precision=HIGHEST
    )[:, None, :]
    return jnp.sum(pmat[:, :, None] * vu, axis=0)


# ---------------------------------------------------------------- summaries of a spectrum


def _desc(eigs):
    e = jnp.asarray(eigs)
    if e.ndim != 1 or e.shape[0] == 0:
        raise ValueError(f"eigs: expected a non-empty 1-D spectrum, got shape {e.shape}")
    return jnp.sort(jnp.clip(e, 0.0, None))[::-1]


def tail_mass(eigs: Float[Arr, " n"], m: int):
    r"""Tail mass :math:`\sum_{i>m}\lambda_i` (eigenvalues sorted descending, ``0 <= m <= n``)."""
    e = _desc(eigs)
    if not 0 <= m <= e.shape[0]:
        raise ValueError(f"m: expected 0 <= m <= {e.shape[0]}, got {m}")
    return jnp.sum(e[m:])


def eps_rank(eigs: Float[Arr, " n"], eps: float) -> int:
    r"""ε-rank: the smallest m with :math:`\sum_{i>m}\lambda_i \le \varepsilon\sum_i\lambda_i`."""
    if not 0 <= eps <= 1:
        raise ValueError(f"eps: expected a relative tolerance in [0, 1], got {eps}")
    e = np.asarray(_desc(eigs), dtype=np.float64)
    tails = np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]])  # tails[m] = sum_{i>=m} e_i (0-based)
    return int(np.argmax(tails <= eps * e.sum()))


def effective_dimension(eigs: Float[Arr, " n"], ridge: float):
    r"""Effective dimension :math:`d_{\text{eff}}(\lambda) = \mathrm{tr}\,G(G+\lambda I)^{-1} = \sum_i \frac{\lambda_i}{\lambda_i+\lambda}`."""
    if ridge <= 0:
        raise ValueError(f"ridge: expected a positive regulariser, got {ridge}")
    e = _desc(eigs)
    return jnp.sum(e / (e + ridge))


def ridge_leverage(gram: Float[Arr, "n n"], ridge: float) -> Float[Arr, " n"]:
    r"""Ridge leverage scores :math:`\ell_j = [G(G+\lambda I)^{-1}]_{jj}`, ``[n]``; sum = :math:`d_{\text{eff}}`."""
    g = _check.array(gram, "gram", (None, None))
    if g.shape[0] != g.shape[1]:
        raise ValueError(f"gram: expected a square matrix, got shape {tuple(g.shape)}")
    if ridge <= 0:
        raise ValueError(f"ridge: expected a positive regulariser, got {ridge}")
    lam, u = jnp.linalg.eigh(0.5 * (g + g.T))
    lam = jnp.clip(lam, 0.0, None)
    return jnp.sum(u * u * (lam / (lam + ridge))[None, :], axis=1)


def attention_singular_values(queries: Float[Arr, "p d"], cache: Cache, *,
                              weights: Float[Arr, " p"] | None = None, scale: Scalar | None = None):
    r"""Singular values of the weighted attention operator :math:`W^{1/2}P` (descending)."""
    _, _, _, w, pmat = _setup(queries, cache, weights, scale)
    return jnp.linalg.svd(jnp.sqrt(w)[:, None] * pmat, compute_uv=False)


def attention_entropy(queries: Float[Arr, "p d"], cache: Cache, *, scale: Scalar | None = None):
    r"""Entropy :math:`H(q) = -\sum_j p_j(q)\log p_j(q)` of each query's attention, ``[p]`` (nats)."""
    _, _, _, _, pmat = _setup(queries, cache, None, scale)
    return -jnp.sum(jnp.where(pmat > 0, pmat * jnp.log(jnp.where(pmat > 0, pmat, 1.0)), 0.0), 1)


def top_mass(queries: Float[Arr, "p d"], cache: Cache, m: int, *, scale: Scalar | None = None):
    r"""Attention mass on each query's own top-m atoms, ``[p]``."""
    _, c, _, _, pmat = _setup(queries, cache, None, scale)
    _check.budget(m, c.n, "m")
    return jnp.sum(lax.top_k(pmat, m)[0], axis=1)


class Covering(NamedTuple):
    """Greedy k-centre result: ``radius`` max distance to the nearest centre, ``centres`` [m],
    ``assignment`` [n] (index into ``centres``)."""

    radius: jax.Array
    centres: jax.Array
    assignment: jax.Array


def covering_radius(keys: Float[Arr, "n d"], m: int) -> Covering:
    r"""Greedy k-centre (Gonzalez 1985) on the keys: a 2-approximation of
    :math:`r_m = \min_{|S|=m}\max_j \min_{c\in S}\lVert k_j - k_c\rVert`.

    Starts from atom 0 and repeatedly adds the atom farthest from the current centres.
    """
    x = _check.array(keys, "keys", (None, None))
    m = _check.budget(m, x.shape[0], "m")
    return _kcentre(x.astype(_check.compute_dtype(x)), m)


@partial(jax.jit, static_argnames=("m",))
def _kcentre(x, m):
    def dist(i):
        return jnp.linalg.norm(x - x[i], axis=1)

    def body(t, st):
        centres, dmin, assign = st
        nxt = jnp.argmax(dmin)
        dn = dist(nxt)
        assign = jnp.where(dn < dmin, t, assign).astype(jnp.int32)
        return centres.at[t].set(nxt.astype(jnp.int32)), jnp.minimum(dmin, dn), assign

    centres = jnp.zeros((m,), jnp.int32)  # atom 0 first
    st = (centres, dist(0), jnp.zeros((x.shape[0],), jnp.int32))
    centres, dmin, assign = lax.fori_loop(1, m, body, st)
    return Covering(jnp.max(dmin), centres, assign)


def value_radius(values: Float[Arr, "n dv"]):
    r"""Radius of the values about their mean, :math:`\max_j\lVert v_j-\bar v\rVert`.

    It bounds the Chebyshev radius r (smallest enclosing ball) from above, and
    :math:`\mathrm{diam}/2 \le r \le \max_j\lVert v_j-\bar v\rVert \le \mathrm{diam}`.
    """
    v = _check.array(values, "values", (None, None))
    v = v.astype(_check.compute_dtype(v))
    return jnp.max(jnp.linalg.norm(v - jnp.mean(v, axis=0), axis=1))


def diameter(x):
    r"""Diameter :math:`\max_{j,l}\lVert x_j - x_l\rVert` (exact; one row of distances at a time)."""
    x = _check.array(x, "x", (None, None))
    return _diameter(x.astype(_check.compute_dtype(x)))


@jax.jit
def _diameter(x):
    return jnp.max(lax.map(lambda xi: jnp.max(jnp.linalg.norm(x - xi, axis=1)), x))
