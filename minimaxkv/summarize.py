r"""Primitive summaries of a cache: eviction, reweighting, merging (docs/theory.md §1.1, §1.3).

* :func:`evict` keeps a subset: :math:`(K_S, V_S, b_S)`;
* :func:`reweight` keeps a subset with new log-weights :math:`\beta`;
* :func:`merge` replaces each cluster :math:`C` by one atom: any representative key (the centroid
  by default), the weight-averaged value :math:`\sum_{j\in C} e^{b_j} v_j / \sum_{j\in C} e^{b_j}` and
  the log of the cluster's total weight :math:`\log\sum_{j\in C} e^{b_j}` (``log count`` for a raw
  cache). Identity I3: its output equals the cache's with every key replaced by its cluster's key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _check
from .cache import Cache, Summary, validate
from .fit import _support


def evict(cache: Cache, kept) -> Summary:
    """Keep the atoms ``kept [m]`` unchanged."""
    cache = validate(cache)
    kept = _support(kept, cache.n)
    return Summary(Cache(cache.keys[kept], cache.values[kept], cache.logw[kept]), kept)


def reweight(cache: Cache, kept, logw) -> Summary:
    """Keep the atoms ``kept [m]`` with new log-weights ``logw [m]``."""
    cache = validate(cache)
    kept = _support(kept, cache.n)
    logw = _check.array(logw, "logw", (kept.shape[0],), allow_neg_inf=True)
    return Summary(Cache(cache.keys[kept], cache.values[kept], logw), kept)


def merge(cache: Cache, labels, num_clusters: int, keys=None) -> Summary:
    r"""Merge atoms by cluster ``labels [n]`` (ints in ``[0, num_clusters)``).

    ``keys [k, d]`` are the clusters' representative keys; default: the weighted centroids
    :math:`\sum_{j\in C} e^{b_j}k_j/\sum_{j\in C}e^{b_j}`. Empty clusters get weight zero
    (log-weight ``-inf``).
    """
    cache = validate(cache)
    labels = jnp.asarray(labels)
    if labels.shape != (cache.n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: expected {cache.n} integer cluster labels, got shape "
                         f"{labels.shape} dtype {labels.dtype}")
    k = _check.budget(num_clusters, cache.n, "num_clusters")
    if _check.is_concrete(labels):
        lo, hi = int(np.min(np.asarray(labels))), int(np.max(np.asarray(labels)))
        if lo < 0 or hi >= k:
            raise ValueError(f"labels: must lie in [0, {k}), got range [{lo}, {hi}]")
    dt = _check.compute_dtype(cache.keys, cache.values, cache.logw)
    b = cache.logw.astype(dt)
    top = jnp.max(b)
    wts = jnp.exp(b - top)
    onehot = jax.nn.one_hot(labels, k, dtype=dt)  # [n, k]
    mass = onehot.T @ wts  # [k]
    safe = jnp.where(mass > 0, mass, 1.0)
    vals = (onehot.T * wts[None, :]) @ cache.values.astype(dt) / safe[:, None]
    if keys is None:
        keys = (onehot.T * wts[None, :]) @ cache.keys.astype(dt) / safe[:, None]
    else:
        keys = _check.array(keys, "keys", (k, cache.keys.shape[1])).astype(dt)
    logw = jnp.where(mass > 0, top + jnp.log(safe), -jnp.inf)
    return Summary(Cache(keys, vals, logw), None)
