r"""The pieces every compression rule is made of: score -> protect -> select -> (fit).

A rule is a :class:`Rule`: a name and a pure function
``compress(cache, budget, queries, key) -> Summary`` closed over its hyperparameters (the
factory pattern of optax). Calling the rule validates its inputs first.

Conventions (one KV head):

* ``queries`` are the observed (post-RoPE) queries of the query heads that read this KV head:
  ``[p, d]`` or ``[g, p, d]`` for a GQA group of g heads; scores defined per query head are
  averaged over the group. They belong to the last p tokens of the cache (positions
  ``n-p .. n-1``), so attention from them is causal.
* Protected atoms -- the first ``sinks`` and the last ``window`` -- are kept by construction:
  they are removed from the candidates and the rest of the budget goes to the best-scored
  candidates. If the budget cannot hold them all, sinks come first, then the most recent atoms.
* Every summary has exactly ``budget`` atoms (fixed shapes: rules jit and vmap); atoms a rule
  drops after selection carry log-weight ``-inf``. ``kept`` lists the source atoms in position
  order.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import _check
from ..attention import HIGHEST
from ..cache import Cache, Summary, validate


class Rule(NamedTuple):
    """A compression rule: ``rule(cache, budget, queries=None, key=None) -> Summary``."""

    name: str
    compress: Callable
    needs_queries: bool = False
    score: Callable | None = None  # (cache, queries [g, p, d], key) -> [n], for scored rules

    def __call__(self, cache, budget, queries=None, key=None) -> Summary:
        cache = validate(cache)
        budget = _check.budget(budget, cache.n)
        q = None if queries is None else group_queries(queries, cache.keys.shape[1])
        if self.needs_queries and q is None:
            raise ValueError(f"rule {self.name!r} is query-aware: pass the observed queries= "
                             "([p, d] or [g, p, d] for a GQA group)")
        key = jax.random.PRNGKey(0) if key is None else key
        if budget == cache.n:  # nothing to compress: the exact cache
            kept = jnp.arange(cache.n, dtype=jnp.int32)
            return Summary(cache, kept)
        return _jitted(self.compress)(cache, budget, q, key)


@lru_cache(maxsize=None)
def _jitted(compress):
    """One compiled version per rule function (and per shape, by jit's own cache)."""
    return jax.jit(compress, static_argnums=1)


def group_queries(queries, d: int):
    """Queries as ``[g, p, d]`` (a single head becomes g = 1)."""
    q = jnp.asarray(queries)
    if q.ndim == 2:
        q = q[None]
    if q.ndim != 3:
        raise ValueError(f"queries: expected [p, d] or [g, p, d], got shape {tuple(q.shape)}")
    _check.array(q, "queries", (None, None, d))
    if q.shape[1] == 0:
        raise ValueError("queries: need at least one observed query")
    return q


def protected_split(n: int, budget: int, sinks: int, window: int):
    """Static (sink indices, window indices, number of free slots) for a budget."""
    s = min(sinks, budget, n)
    w = min(window, budget - s, n - s)
    return list(range(s)), list(range(n - w, n)), budget - s - w


def select(scores, budget: int, sinks: int = 0, window: int = 0):
    """Kept indices ``[budget]`` (position order): protected atoms plus the top-scored others."""
    n = scores.shape[0]
    sink_idx, win_idx, free = protected_split(n, budget, sinks, window)
    prot = jnp.asarray(sink_idx + win_idx, jnp.int32)
    if free == 0:
        return jnp.sort(prot)
    cand = jnp.ones((n,), bool)
    if prot.shape[0]:
        cand = cand.at[prot].set(False)
    masked = jnp.where(cand, scores, -jnp.inf)
    top = lax.top_k(masked, free)[1].astype(jnp.int32)
    return jnp.sort(jnp.concatenate([prot, top]))


def evict(cache: Cache, kept) -> Summary:
    """The summary that keeps ``kept`` unchanged (no validation: used inside rules)."""
    return Summary(Cache(cache.keys[kept], cache.values[kept], cache.logw[kept]), kept)


def scored(name: str, score: Callable, *, sinks: int = 0, window: int = 0,
           needs_queries: bool = False) -> Rule:
    """A rule that keeps protected atoms and the top-scored others; ``score(cache, q, key) -> [n]``."""

    def compress(cache, budget, queries, key):
        return evict(cache, select(score(cache, queries, key), budget, sinks, window))

    return Rule(name, compress, needs_queries, score)


# ------------------------------------------------------------------------------ attention helpers


def query_positions(n: int, p: int):
    """Positions of p observed queries: the last p tokens of a cache of n."""
    return jnp.arange(n - p, n)


def head_attention(cache: Cache, queries, scale=None):
    """Causal attention weights of each observed query ``[g, p, n]`` (float32 at least)."""
    g, p, d = queries.shape
    n = cache.n
    dt = _check.compute_dtype(queries, cache.keys)
    scale = d ** -0.5 if scale is None else scale
    s = scale * jnp.einsum("gpd,nd->gpn", queries.astype(dt), cache.keys.astype(dt),
                           precision=HIGHEST) + cache.logw.astype(dt)
    visible = jnp.arange(n)[None, :] <= query_positions(n, p)[:, None]
    s = jnp.where(visible[None], s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1)
