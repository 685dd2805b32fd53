r"""Query laws: how future queries may probe a cache (docs/theory.md §1.2, §1.4).

A law is one of

* :class:`QuerySet` -- a finite weighted set (query-aware: queries observed in the prompt, or
  captured future queries);
* :class:`Gaussian` -- :math:`\mathcal N(\mu, LL^T)`; :func:`isotropic` uses the empirical query
  scale, :func:`fit_gaussian` the empirical mean and covariance of observed queries;
* :class:`RopeGaussian` -- the law of :math:`R_t x` with :math:`x \sim \mathcal N(\mu, LL^T)` a
  pre-RoPE query and :math:`t` uniform over future positions: the exact mixture over positions;
  :func:`moment_matched` gives the Gaussian with the same mean and covariance, and
  :func:`expected_attention_gaussian` the one used by Expected Attention
  (:math:`\bar R\mu`, :math:`\bar R\Sigma\bar R^T`, Devoto, Jeblick & Jégou 2025).

Every law turns into a weighted query set with :func:`to_query_set` (Monte-Carlo samples for the
continuous ones); risks and compressibility measures take that set.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _check, rope
from .shapes import Arr, Float, Int


class QuerySet(NamedTuple):
    """Queries ``[p, d]`` with weights ``[p]`` summing to one."""

    queries: Float[Arr, "p d"]
    weights: Float[Arr, " p"]


class Gaussian(NamedTuple):
    r""":math:`\mathcal N(\text{mean}, \text{chol}\,\text{chol}^T)`."""

    mean: Float[Arr, " d"]
    chol: Float[Arr, "d d"]


class RopeGaussian(NamedTuple):
    r"""Pre-RoPE Gaussian :math:`\mathcal N(\mu, LL^T)` rotated at a uniform future position."""

    mean: Float[Arr, " d"]
    chol: Float[Arr, "d d"]
    positions: Int[Arr, " h"]
    theta: float | rope.Llama3
    convention: str


def empirical(queries, weights=None) -> QuerySet:
    """The finite law of observed queries (uniform weights unless given)."""
    q = _check.array(queries, "queries", (None, None))
    if q.shape[0] == 0:
        raise ValueError("queries: need at least one query")
    w = _check.weights(weights, q.shape[0])
    return QuerySet(q, jnp.full((q.shape[0],), 1.0 / q.shape[0], q.dtype) if w is None else w)


def isotropic(observed) -> Gaussian:
    r"""Isotropic :math:`\mathcal N(0, \sigma^2 I)` with :math:`\sigma^2 = \frac1{pd}\sum \lVert q_i\rVert^2`.

    Same expected squared norm as the observed queries, no preferred direction (query-agnostic).
    """
    q = _check.array(observed, "observed", (None, None))
    if q.shape[0] == 0:
        raise ValueError("observed: need at least one query to set the scale")
    sigma = jnp.sqrt(jnp.mean(q.astype(jnp.float32) ** 2))
    d = q.shape[1]
    return Gaussian(jnp.zeros((d,), sigma.dtype), sigma * jnp.eye(d, dtype=sigma.dtype))


def fit_gaussian(observed, shrinkage: float = 1e-3) -> Gaussian:
    r"""Gaussian with the observed mean and covariance, shrunk towards its diagonal scale.

    :math:`\Sigma = (1-s)\hat\Sigma + s\,\frac{\mathrm{tr}\hat\Sigma}{d} I` keeps the Cholesky
    factor defined when ``p <= d``.
    """
    q = _check.array(observed, "observed", (None, None))
    if q.shape[0] < 2:
        raise ValueError(f"observed: need at least 2 queries to fit a covariance, got {q.shape[0]}")
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
    if shrinkage == 0 and q.shape[0] <= q.shape[1]:
        raise ValueError(f"observed: {q.shape[0]} queries in d = {q.shape[1]} dimensions have a "
                         "singular covariance (rank < d) and no Cholesky factor; give shrinkage > 0")
    q = q.astype(_check.compute_dtype(q))
    mu = jnp.mean(q, axis=0)
    cov = jnp.cov(q, rowvar=False).reshape(q.shape[1], q.shape[1])
    d = q.shape[1]
    tr = jnp.trace(cov) / d
    cov = (1 - shrinkage) * cov + shrinkage * jnp.maximum(tr, 1e-12) * jnp.eye(d, dtype=q.dtype)
    return Gaussian(mu, jnp.linalg.cholesky(cov))


def rope_future(law: Gaussian, start: int, horizon: int = 512,
                theta: float | rope.Llama3 = 10000.0, convention: str = "half") -> RopeGaussian:
    """Pre-RoPE Gaussian ``law`` applied at a position uniform in ``start .. start+horizon-1``."""
    if horizon < 1:
        raise ValueError(f"horizon: expected at least 1 future position, got {horizon}")
    pos = jnp.arange(start, start + horizon)
    return RopeGaussian(law.mean, law.chol, pos, theta, convention)


def _rotations(law: RopeGaussian):
    return rope.rotations(law.positions, law.mean.shape[0], law.theta, law.convention)


def moment_matched(law: RopeGaussian) -> Gaussian:
    r"""The Gaussian with the exact mean and covariance of the RoPE mixture.

    .. math:: \mu' = \bar R\mu,\quad \Sigma' = \frac1h\sum_t R_t(\Sigma + \mu\mu^T)R_t^T - \mu'\mu'^T.
    """
    r = _rotations(law).astype(law.mean.dtype)
    sigma = law.chol @ law.chol.T + jnp.outer(law.mean, law.mean)
    mu = jnp.mean(r, axis=0) @ law.mean
    second = jnp.mean(jnp.einsum("tab,bc,tdc->tad", r, sigma, r), axis=0)
    cov = second - jnp.outer(mu, mu)
    cov = 0.5 * (cov + cov.T) + 1e-9 * jnp.trace(cov) / cov.shape[0] * jnp.eye(cov.shape[0])
    return Gaussian(mu, jnp.linalg.cholesky(cov))


def expected_attention_gaussian(law: RopeGaussian) -> Gaussian:
    r"""Expected Attention's approximation: :math:`(\bar R\mu,\ \bar R\Sigma\bar R^T)`.

    It ignores the spread of the rotations (compare :func:`moment_matched`).
    """
    rbar = jnp.mean(_rotations(law).astype(law.mean.dtype), axis=0)
    cov = rbar @ (law.chol @ law.chol.T) @ rbar.T
    cov = 0.5 * (cov + cov.T) + 1e-9 * jnp.trace(cov) / cov.shape[0] * jnp.eye(cov.shape[0])
    return Gaussian(rbar @ law.mean, jnp.linalg.cholesky(cov))


def sample(law, key, num: int):
    """``num`` i.i.d. queries ``[num, d]`` from a law (a ``QuerySet`` is sampled by its weights)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num: expected a positive int, got {num!r}")
    if isinstance(law, QuerySet):
        idx = jax.random.choice(key, law.queries.shape[0], (num,), p=law.weights)
        return law.queries[idx]
    if isinstance(law, Gaussian):
        z = jax.random.normal(key, (num, law.mean.shape[0]), law.mean.dtype)
        return law.mean + z @ law.chol.T
    if isinstance(law, RopeGaussian):
        kz, kt = jax.random.split(key)
        z = jax.random.normal(kz, (num, law.mean.shape[0]), law.mean.dtype)
        t = jax.random.choice(kt, law.positions, (num,))
        return rope.apply(law.mean + z @ law.chol.T, t, law.theta, law.convention)
    raise ValueError(f"law: expected QuerySet, Gaussian or RopeGaussian, got {type(law).__name__}")


def uniforms(key, shapes, dtype):
    """Arrays of the given ``shapes`` of i.i.d. U(0, 1) numbers in ``[tiny, 1)``, from one draw
    of the key: a compiled program pays for each random-number call site (about half a second
    of XLA:CPU compilation each), so a step that needs several kinds of noise draws it once."""
    sizes = [math.prod(s) for s in shapes]
    u = jax.random.uniform(key, (sum(sizes),), dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    parts = jnp.split(u, list(itertools.accumulate(sizes))[:-1])
    return [part.reshape(s) for part, s in zip(parts, shapes)]


def standard_normal(u):
    r"""Standard normals from uniforms ``u`` in (0, 1) by the inverse CDF
    :math:`\sqrt2\,\mathrm{erf}^{-1}(2u-1)` (clipped one ulp inside (-1, 1), as
    ``jax.random.normal`` does, so every draw is finite)."""
    one = 1.0 - jnp.finfo(u.dtype).eps
    return jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(jnp.clip(2 * u - 1, -one, one))


def rope_draws(law: RopeGaussian, u):
    """Draws of the RoPE mixture from uniforms ``u [num, d + 1]``: the first d columns give the
    pre-RoPE Gaussian, the last a position uniform over ``law.positions`` -- the law of
    :func:`sample`, from noise the caller drew (:func:`uniforms`)."""
    d = law.mean.shape[0]
    h = law.positions.shape[0]
    t = law.positions[jnp.minimum((u[:, d] * h).astype(jnp.int32), h - 1)]
    return rope.apply(law.mean + standard_normal(u[:, :d]) @ law.chol.T, t, law.theta,
                      law.convention)


def to_query_set(law, key=None, num: int | None = None) -> QuerySet:
    """A weighted query set for the law: itself if finite, else ``num`` Monte-Carlo samples."""
    if isinstance(law, QuerySet):
        return law
    if key is None or num is None:
        raise ValueError("a continuous query law needs key= and num= to draw Monte-Carlo queries")
    q = sample(law, key, num)
    return QuerySet(q, jnp.full((num,), 1.0 / num, q.dtype))
