r"""Small linear-algebra kernels used by fitting, bounds and compressibility; all jittable.

* :func:`nnls` -- non-negative least squares :math:`\min_{c\ge0}\lVert Mc-y\rVert^2` by
  accelerated projected gradient (FISTA, Beck & Teboulle 2009) on the normal equations
  (:func:`nnls_gram`, which takes them directly; the fits of :mod:`minimaxkv.fit` call it);
* :func:`randomized_eigh` -- top eigenpairs of a PSD operator given by products with blocks of
  vectors (randomized subspace iteration + Rayleigh-Ritz, Halko, Martinsson & Tropp 2011,
  Alg. 4.4/5.3), with residual norms that bound the distance of each Ritz value to the spectrum;
* :func:`block_krylov_eigh` -- the same from a block Krylov space (block Lanczos with full
  reorthogonalisation, Musco & Musco 2015): fewer products for the same accuracy.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def matmul(a, b):
    """Matrix product at full float32/float64 precision (no reduced-precision passes on GPUs)."""
    return jnp.matmul(a, b, precision=HIGHEST)


_mm = matmul


@partial(jax.jit, static_argnames=("iters",))
def nnls(m, y, iters: int = 2000, lower=0.0, upper=jnp.inf):
    r"""Box-constrained least squares :math:`\min_{l\le c\le u}\lVert Mc - y\rVert_2^2`.

    ``m [r, k]``, ``y [r]``; returns ``c [k]``: :func:`nnls_gram` on the normal equations.
    """
    return nnls_gram(_mm(m.T, m), _mm(m.T, y), iters, lower, upper)


@partial(jax.jit, static_argnames=("iters", "exact_up_to"))
def nnls_gram(h, g, iters: int = 2000, lower=0.0, upper=jnp.inf, exact_up_to: int = 512,
              x0=None):
    r"""Box-constrained quadratic :math:`\min_{l\le c\le u} c^THc - 2g^Tc` for PSD ``h [k, k]``
    (the normal-equation form of :func:`nnls`, :math:`H=M^TM`, :math:`g=M^Ty`). FISTA (Beck &
    Teboulle 2009) with step :math:`1/\lambda_{\max}(H)` and a gradient-based restart;
    ``iters`` iterations from ``x0`` (default 0, clipped to the box; converges at rate
    :math:`O(1/t^2)` in objective). The step is exact
    (``eigvalsh``) up to k = ``exact_up_to``, then a power-iteration estimate x 1.1.
    """
    lip = largest_eigenvalue(h, exact_up_to)
    return fista(lambda z: _mm(h, z), g, lip, iters, lower, upper, x0)


def nnls_factored(b, g, diag, iters: int = 2000, lower=0.0, upper=jnp.inf,
                  exact_up_to: int = 512, x0=None):
    r""":func:`nnls_gram` for :math:`H=B^TB+\mathrm{diag}(d)` with ``b [r, k]``, r < k, never
    formed: products with H cost O(r k) instead of O(k^2). The step is
    :math:`1/(\lambda_{\max}(BB^T)+\max_s d_s)` (Weyl: an upper bound on
    :math:`\lambda_{\max}(H)`, as the nonzero spectra of :math:`B^TB` and :math:`BB^T`
    coincide), the r x r eigenvalue by :func:`largest_eigenvalue` (exact up to r =
    ``exact_up_to``)."""
    lip = largest_eigenvalue(_mm(b, b.T), exact_up_to) + jnp.max(diag)
    return fista(lambda z: _mm(b.T, _mm(b, z)) + diag * z, g, lip, iters, lower, upper, x0)


def fista(hmul, g, lip, iters: int, lower, upper, x0=None):
    r"""FISTA (Beck & Teboulle 2009) with a gradient-based restart for
    :math:`\min_{l\le c\le u} c^THc - 2g^Tc`, H known through ``hmul`` (z -> Hz) and ``lip``
    :math:`\ge\lambda_{\max}(H)`; ``iters`` steps of size 1/``lip`` from ``x0`` (default 0)."""
    lip = jnp.maximum(lip, 1e-30)
    x0 = jnp.clip(jnp.zeros_like(g) if x0 is None else x0, lower, upper)

    def body(_, st):
        x, z, t = st
        grad = hmul(z) - g
        xn = jnp.clip(z - grad / lip, lower, upper)
        tn = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
        restart = jnp.dot(z - xn, xn - x) > 0
        zn = jnp.where(restart, xn, xn + ((t - 1) / tn) * (xn - x))
        tn = jnp.where(restart, 1.0, tn)
        return xn, zn, tn

    x, _, _ = lax.fori_loop(0, iters, body, (x0, x0, jnp.asarray(1.0, g.dtype)))
    return x


def largest_eigenvalue(h, exact_up_to: int = 512, steps: int = 60):
    """The largest eigenvalue of a symmetric PSD ``h``: exact for k <= ``exact_up_to``, else
    ``steps`` power iterations from the all-ones vector, x 1.1 (an estimate from above in
    practice: the Rayleigh quotient approaches it from below)."""
    if h.shape[0] <= exact_up_to:
        return jnp.linalg.eigvalsh(h)[-1]

    def step(_, v):
        w = _mm(h, v)
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

    v = lax.fori_loop(0, steps, step, jnp.ones((h.shape[0],), h.dtype) / h.shape[0] ** 0.5)
    return 1.1 * jnp.dot(v, _mm(h, v))


class Ritz(NamedTuple):
    """Approximate eigenpairs: ``values [k]`` (descending), ``vectors [n, k]``, ``residuals [k]``.

    For a symmetric operator G, every interval ``values[i] ± residuals[i]`` contains an
    eigenvalue of G, and ``values[i] <= lambda_i(G)`` (Cauchy interlacing); docs/theory.md, S1.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array


def randomized_eigh(matmat, n: int, k: int, key, oversample: int = 10, iters: int = 4,
                    dtype=jnp.float32) -> Ritz:
    r"""Top-``k`` eigenpairs of a symmetric PSD ``n x n`` operator known through ``matmat(X)``.

    Subspace iteration with ``k + oversample`` columns and ``iters`` re-orthonormalised power
    steps, then Rayleigh-Ritz on the subspace. Residuals :math:`\lVert G u_i - \lambda_i u_i\rVert`
    cost one more product.
    """
    ell = min(n, k + oversample)
    q = jax.random.normal(key, (n, ell), dtype)
    q, _ = jnp.linalg.qr(matmat(q))
    for _ in range(iters):
        q, _ = jnp.linalg.qr(matmat(q))
    return _rayleigh_ritz(q, matmat(q), k)


def _rayleigh_ritz(q, gq, k: int) -> Ritz:
    """Top-``k`` Ritz pairs of G on the orthonormal basis ``q`` given ``gq = G q``, with the
    residuals :math:`\\lVert G u_i - \\lambda_i u_i\\rVert` (no further product)."""
    h = _mm(q.T, gq)
    vals, vecs = jnp.linalg.eigh(0.5 * (h + h.T))
    vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    u = _mm(q, vecs)
    res = jnp.linalg.norm(_mm(gq, vecs) - u * vals[None, :], axis=0)
    return Ritz(vals, u, res)


def block_krylov_eigh(matmat, n: int, k: int, key, block: int = 32, depth: int = 6,
                      dtype=jnp.float32) -> Ritz:
    r"""Top-``k`` eigenpairs of a symmetric PSD ``n x n`` operator from the block Krylov space
    :math:`\mathrm{span}[X, GX, \dots, G^{depth}X]`, ``X`` a random ``[n, block]`` block.

    Each new block :math:`G Q_i` is orthogonalised against all earlier ones (twice, for float32)
    and orthonormalised; the images :math:`G Q_i` are kept, so Rayleigh-Ritz on the orthonormal
    basis :math:`B` (``block * (depth + 1)`` columns) and the residuals
    :math:`\lVert G u_i - \lambda_i u_i\rVert` need no product beyond the ``depth + 1`` that
    build the space. ``B`` orthonormal makes the guarantees of :class:`Ritz` hold as for
    :func:`randomized_eigh`.
    """
    dim = block * (depth + 1)
    if dim < k:
        raise ValueError(f"block * (depth + 1) = {dim} must be >= k = {k}")
    if dim > n:
        raise ValueError(f"block * (depth + 1) = {dim} must be <= n = {n}")
    q, _ = jnp.linalg.qr(jax.random.normal(key, (n, block), dtype))
    basis, images = [q], []
    for i in range(depth + 1):
        y = matmat(basis[-1])
        images.append(y)
        if i == depth:
            break
        b = jnp.concatenate(basis, axis=1)
        w = y - _mm(b, _mm(b.T, y))
        w = w - _mm(b, _mm(b.T, w))
        basis.append(jnp.linalg.qr(w)[0])
    return _rayleigh_ritz(jnp.concatenate(basis, axis=1), jnp.concatenate(images, axis=1), k)
