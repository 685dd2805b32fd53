r"""Risk of a summary: how far its attention output is from the cache's (docs/theory.md §1.2).

Pointwise error :math:`e(q) = \lVert A_C(q) - A_{\hat C}(q)\rVert_2`; for a query law given as a
finite weighted set :math:`\{(q_i, w_i)\}` with :math:`\sum_i w_i = 1`

.. math::
    R_P = \sum_i w_i\, e(q_i)^2,\qquad R^\infty = \max_i e(q_i)^2,\qquad
    R^{rel} = R_P \big/ \textstyle\sum_i w_i \lVert A_C(q_i) - \bar v\rVert^2,\qquad
    R^{mass} = \sum_i w_i \big(\log \hat Z(q_i) - \log Z(q_i)\big)^2,

with :math:`\bar v` the weighted mean value :math:`\sum_j \mathrm{softmax}(b)_j v_j`.
When queries are Monte-Carlo samples of a distribution, :func:`mc_interval` gives a confidence
interval for the expectation.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from . import _check
from .attention import _attend_core, _chunk_for, prepare
from .cache import validate
from .shapes import Arr, Float, Scalar

REDUCTIONS = ("mean", "max", "sum", "none")


def _pair(queries, cache, summary, scale, query_pos, key_pos, summary_pos, chunk):
    cache = validate(cache, "cache")
    summary = validate(summary, "summary")
    if summary.keys.shape[1] != cache.keys.shape[1]:
        raise ValueError(
            f"summary: key dimension {summary.keys.shape[1]} differs from the cache's "
            f"{cache.keys.shape[1]}"
        )
    if summary.values.shape[1] != cache.values.shape[1]:
        raise ValueError(
            f"summary: value dimension {summary.values.shape[1]} differs from the cache's "
            f"{cache.values.shape[1]}"
        )
    if query_pos is not None and summary_pos is None:
        raise ValueError("summary_pos: causal risk needs the positions of the summary's atoms")
    # validated once above; both attention passes run in one compiled program
    q, c, sc, qpos, kpos = prepare(queries, cache, scale, query_pos, key_pos, checked=True)
    qh, s, _, _, spos = prepare(q, summary, sc, query_pos, summary_pos, name="summary",
                                checked=True)
    a, lz, ah, lzh = _pair_core(q, c, qh, s, sc, qpos, kpos, spos, _chunk_for(c.n, chunk),
                                _chunk_for(s.n, chunk))
    _check.finite_outputs(a, "risk: the cache's attention output")
    _check.finite_outputs(ah, "risk: the summary's attention output")
    return a, lz, ah, lzh


@partial(jax.jit, static_argnames=("chunk", "chunk_s"))
def _pair_core(q, c, qh, s, scale, qpos, kpos, spos, chunk, chunk_s):
    a, lz = _attend_core(q, c.keys, c.values, c.logw, scale, qpos, kpos, chunk)
    ah, lzh = _attend_core(qh, s.keys, s.values, s.logw, scale, qpos, spos, chunk_s)
    return a, lz, ah, lzh


def _reduce(per_query, w, reduce):
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    if reduce == "none":
        return per_query
    if reduce == "max":
        return jnp.max(per_query)
    if reduce == "sum":
        return jnp.sum(per_query)
    return jnp.mean(per_query) if w is None else jnp.sum(w * per_query)


def errors(queries, cache, summary, scale=None, *, query_pos=None, key_pos=None,
           summary_pos=None, chunk=None) -> Float[Arr, "p dv"]:
    r"""Error vectors :math:`A_{\hat C}(q) - A_C(q)`, ``[p, dv]``."""
    a, _, ah, _ = _pair(queries, cache, summary, scale, query_pos, key_pos, summary_pos, chunk)
    return ah - a


def risk(
    queries: Float[Arr, "p d"],
    cache,
    summary,
    reduce: str = "mean",
    *,
    weights: Float[Arr, " p"] | None = None,
    scale: Scalar | None = None,
    query_pos=None,
    key_pos=None,
    summary_pos=None,
    chunk: int | None = None,
):
    r"""Squared attention-output error of ``summary`` against ``cache``.

    .. math:: R_P(\hat C; C) = \sum_i w_i \lVert A_C(q_i) - A_{\hat C}(q_i)\rVert_2^2

    Args:
        queries: ``[p, d]``; ``weights`` ``[p]`` (default uniform) make them a weighted query law.
        cache, summary: :class:`~minimaxkv.Cache` or ``Summary`` with the same ``d`` and ``dv``.
        reduce: ``"mean"`` (the P-risk), ``"max"`` (sup-risk), ``"sum"`` or ``"none"`` (per-query
            :math:`e(q)^2`, ``[p]``).
        query_pos, key_pos, summary_pos: causal positions (``summary_pos`` are the positions of the
            summary atoms, e.g. ``key_pos[kept]``).
    """
    a, _, ah, _ = _pair(queries, cache, summary, scale, query_pos, key_pos, summary_pos, chunk)
    w = _check.weights(weights, a.shape[0])
    return _reduce(jnp.sum((a - ah) ** 2, axis=1), w, reduce)


def relative_risk(queries, cache, summary, *, weights=None, scale=None, chunk=None, **pos):
    r"""Risk divided by the spread of the outputs: :math:`R_P / \sum_i w_i\lVert A_C(q_i)-\bar v\rVert^2`.

    A relative risk of 1 is what the trivial summary "always answer the mean value" achieves.
    """
    a, _, ah, _ = _pair(queries, cache, summary, scale, pos.get("query_pos"), pos.get("key_pos"),
                        pos.get("summary_pos"), chunk)
    c = validate(cache)
    vbar = jax.nn.softmax(c.logw.astype(a.dtype)) @ c.values.astype(a.dtype)
    w = _check.weights(weights, a.shape[0])
    num = _reduce(jnp.sum((a - ah) ** 2, axis=1), w, "mean")
    den = _reduce(jnp.sum((a - vbar) ** 2, axis=1), w, "mean")
    return num / den


def mass_error(queries, cache, summary, reduce="mean", *, weights=None, scale=None, chunk=None,
               **pos):
    r"""Squared log-mass error :math:`(\log\hat Z(q) - \log Z(q))^2`, reduced like :func:`risk`."""
    _, lz, _, lzh = _pair(queries, cache, summary, scale, pos.get("query_pos"), pos.get("key_pos"),
                          pos.get("summary_pos"), chunk)
    w = _check.weights(weights, lz.shape[0])
    return _reduce((lzh - lz) ** 2, w, reduce)


class Interval(NamedTuple):
    """A Monte-Carlo estimate of an expectation with its confidence interval."""

    mean: float
    stderr: float
    low: float
    high: float
    n: int
    level: float


def _samples(samples, level: float) -> np.ndarray:
    """i.i.d. samples as a float64 vector: at least 2, finite, and a level in (0, 1)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"samples: need at least 2 samples, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError("samples: contain NaN or Inf")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    return x


def mc_interval(samples, level: float = 0.95) -> Interval:
    r"""Confidence interval for :math:`\mathbb E[X]` from i.i.d. samples (normal approximation).

    .. math:: \bar X \pm z_{(1+\text{level})/2}\, s/\sqrt{N},

    with :math:`s` the sample standard deviation (CLT; coverage tends to ``level`` as N grows).
    Use it on per-query squared errors ``risk(..., reduce="none")`` of sampled queries.
    """
    x = _samples(samples, level)
    mean = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(x.size))
    z = float(stats.norm.ppf(0.5 + level / 2))
    return Interval(mean, se, mean - z * se, mean + z * se, int(x.size), float(level))


def bootstrap_interval(samples, level: float = 0.95, reps: int = 10_000, seed: int = 0
                       ) -> Interval:
    r"""Percentile-bootstrap confidence interval for the mean of i.i.d. samples.

    The ``reps`` means of resamples of size N drawn with replacement; the interval is their
    :math:`(1 \mp \text{level})/2` quantiles (Efron and Tibshirani 1993, ch. 13). Unlike
    :func:`mc_interval` it stays inside the samples' range, so a task score of 16/16 gets
    [1, 1], not an interval past 1: use it for per-prompt scores. ``seed`` fixes the resamples.
    """
    x = _samples(samples, level)
    means = np.random.default_rng(seed).choice(x, (reps, x.size)).mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    se = float(x.std(ddof=1) / np.sqrt(x.size))
    return Interval(float(x.mean()), se, float(low), float(high), int(x.size), float(level))
