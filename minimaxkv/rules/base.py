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
* Budgets that differ from head to head (per-head allocations) need not compile one program per
  budget: :meth:`Rule.padded` runs the rule at a *traced* budget inside a static ``capacity``
  (one program per capacity) when the rule provides ``upto`` -- every scored rule does, and so
  does ``minimax`` without sinks, window or blocks -- and equals the rule at that budget followed
  by empty atoms.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _check
from ..attention import HIGHEST, default_scale
from ..cache import Cache, Summary, validate
from ..shapes import Arr, Float, Int, Scalar, Shaped


class Rule(NamedTuple):
    """A compression rule: ``rule(cache, budget, queries=None, key=None) -> Summary``.

    A ``randomized`` rule draws random numbers from ``key`` and refuses to run without one; the
    others never read it (no key is ever made up for a caller)."""

    name: str
    compress: Callable
    needs_queries: bool = False
    score: Callable | None = None  # (cache, queries [g, p, d], key) -> [n], for scored rules
    # (cache, capacity, budget, queries, key) -> Summary of ``capacity`` atoms, ``budget`` traced
    upto: Callable | None = None
    # scores [n] -> every atom in the order the rule keeps them (protected atoms first)
    order: Callable | None = None
    # one selection for every KV head of a layer, from ``score`` averaged over the layer's heads
    # (:func:`layer_summaries`; a direct call on one KV head averages over its group only)
    layer_shared: bool = False
    # the rule's published form reads every query of the prefix, not the last few: the evaluator
    # passes it the queries of all the cache's tokens in one-shot compression
    whole_prefix: bool = False
    # the rule draws random numbers from ``key`` (a call without one is an error)
    randomized: bool = False

    def checked_key(self, key):
        """``key``, or a one-line error if the rule draws random numbers and ``key`` is None."""
        if key is None and self.randomized:
            raise ValueError(f"rule {self.name!r} draws random numbers: pass key= (a "
                             "jax.random.PRNGKey)")
        return key

    def padded(self, cache: Cache | Summary, capacity: int, budget,
               queries: Float[Arr, "*g p d"] | None = None, key=None) -> Summary:
        """The rule at ``budget`` atoms followed by ``capacity - budget`` empty atoms (log-weight
        ``-inf``; their ``kept`` entries point at any atom): a summary of ``capacity`` atoms.

        With ``upto`` the budget is a traced value, so every budget up to ``capacity`` shares one
        compiled program; otherwise the rule is compiled for each budget and padded afterwards.
        """
        cache = validate(cache)
        capacity = _check.budget(capacity, cache.n, "capacity")
        budget = _check.budget(int(budget), capacity)
        if self.upto is None or budget == cache.n:
            return pad(self(cache, budget, queries, key), capacity)
        q = None if queries is None else group_queries(queries, cache.keys.shape[1])
        if self.needs_queries and q is None:
            raise ValueError(f"rule {self.name!r} is query-aware: pass the observed queries= "
                             "([p, d] or [g, p, d] for a GQA group)")
        out = _jitted(self.upto)(cache, capacity, jnp.asarray(budget, jnp.int32), q,
                                 self.checked_key(key))
        return _check.finite_outputs(out, f"rule {self.name!r}: summary")

    def __call__(self, cache: Cache | Summary, budget,
                 queries: Float[Arr, "*g p d"] | None = None, key=None) -> Summary:
        cache = validate(cache)
        budget = _check.budget(budget, cache.n)
        q = None if queries is None else group_queries(queries, cache.keys.shape[1])
        if self.needs_queries and q is None:
            raise ValueError(f"rule {self.name!r} is query-aware: pass the observed queries= "
                             "([p, d] or [g, p, d] for a GQA group)")
        if budget == cache.n:  # nothing to compress: the exact cache
            kept = jnp.arange(cache.n, dtype=jnp.int32)
            return Summary(cache, kept)
        out = _jitted(self.compress)(cache, budget, q, self.checked_key(key))
        return _check.finite_outputs(out, f"rule {self.name!r}: summary")


def compress_heads(rule: Rule, caches: Cache, budgets,
                   queries: Float[Arr, "B g p d"] | None = None, keys=None, *,
                   capacity: int | None = None, vectorize: bool = False) -> Summary:
    """Many KV heads in one call: ``caches`` with a leading head axis (keys ``[B, n, d]``, values
    ``[B, n, dv]``, log-weights ``[B, n]``), each compressed by ``rule`` to its budget with its
    own query group (``queries [B, g, p, d]``) and key (``keys [B, 2]``): a :class:`Summary` with
    the same leading axis, equal to calling the rule on each head.

    ``budgets``: one budget for every head, or one per head (``[B]``) inside ``capacity`` atoms
    (the rest empty, as :meth:`Rule.padded`; the rule must provide ``upto``). One compiled program
    runs every head: a ``lax.map`` (heads one after another, the memory of one) or, with
    ``vectorize``, a ``vmap`` (every head at once: wider products, B times the memory).
    """
    keys_ = _check.array(caches.keys, "caches.keys", (None, None, None))
    B, n, d = keys_.shape
    values = _check.array(caches.values, "caches.values", (B, n, None))
    logw = _check.array(caches.logw, "caches.logw", (B, n), allow_neg_inf=True)
    if B == 0 or n == 0 or d == 0:
        raise ValueError(f"caches: expected at least one head of one atom, got keys {(B, n, d)}")
    if _check.is_concrete(logw) and bool(jnp.any(jnp.all(jnp.isneginf(logw), axis=1))):
        raise ValueError("caches: a head is empty (every atom has log-weight -inf)")
    q = None
    if queries is not None:
        q = _check.array(jnp.asarray(queries), "queries", (B, None, None, d))
        if q.shape[2] == 0:
            raise ValueError("queries: need at least one observed query")
    if rule.needs_queries and q is None:
        raise ValueError(f"rule {rule.name!r} is query-aware: pass the observed queries= "
                         "([B, g, p, d])")
    keys = rule.checked_key(None if keys is None else jnp.asarray(keys))
    caches = Cache(keys_, values, logw)
    if capacity is None:
        budget = _check.budget(int(budgets), n)
        if budget == n:
            return Summary(caches, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (B, n)))
        out = _heads_jitted(rule.compress, vectorize, False)(caches, budget, q, keys)
    else:
        capacity = _check.budget(capacity, n, "capacity")
        sizes = np.asarray(budgets, np.int64)
        if sizes.shape != (B,):
            raise ValueError(f"budgets: expected one per head ({B}), got shape {sizes.shape}")
        for m in sizes:
            _check.budget(int(m), capacity)
        if rule.upto is None:
            raise ValueError(f"rule {rule.name!r} has no traced-budget form (upto): compress "
                             "heads of different budgets one at a time")
        out = _heads_jitted(rule.upto, vectorize, True)(caches, capacity, q, keys,
                                                        jnp.asarray(sizes, jnp.int32))
    return _check.finite_outputs(out, f"rule {rule.name!r}: summary")


@lru_cache(maxsize=None)
def _heads_jitted(compress, vectorize: bool, traced_budget: bool):
    """One program for a batch of heads (see :func:`compress_heads`)."""

    def one(size, cache, q, key, budget=None):
        args = (cache, size, budget, q, key) if traced_budget else (cache, size, q, key)
        return _stored(compress(*args), cache)

    def run(caches, size, q, keys, budgets=None):
        xs = (caches, q, keys) + ((budgets,) if traced_budget else ())
        body = lambda x: one(size, *x)  # noqa: E731
        return jax.vmap(body)(xs) if vectorize else lax.map(body, xs)

    return jax.jit(run, static_argnums=1)


@lru_cache(maxsize=None)
def _jitted(compress):
    """One compiled version per rule function (and per shape, by jit's own cache). The summary
    is stored at the cache's dtypes (a rule may compute in float32 or wider): equal atoms are
    equal bytes."""

    return jax.jit(lambda cache, size, *rest: _stored(compress(cache, size, *rest), cache),
                   static_argnums=1)


def _stored(summary: Summary, cache: Cache) -> Summary:
    """``summary`` at the dtypes of the ``cache`` it summarises."""
    return summary._replace(cache=Cache(*(x.astype(c.dtype) for x, c in zip(summary.cache,
                                                                            cache))))


def pad(summary: Summary, capacity: int) -> Summary:
    """``summary`` followed by empty atoms (zero keys and values, log-weight ``-inf``, ``kept``
    pointing at atom 0) up to ``capacity`` atoms."""
    c = summary.cache
    extra = capacity - c.keys.shape[0]
    if extra <= 0:
        return summary
    rows = ((0, extra), (0, 0))
    cache = Cache(jnp.pad(c.keys, rows), jnp.pad(c.values, rows),
                  jnp.pad(c.logw, (0, extra), constant_values=-jnp.inf))
    kept = None if summary.kept is None else jnp.pad(summary.kept, (0, extra))
    return Summary(cache, kept, summary.mass_gap)


def group_queries(queries: Float[Arr, "*g p d"], d: int) -> Float[Arr, "g p d"]:
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


def select(scores: Shaped[Arr, " n"], budget: int, sinks: int = 0,
           window: int = 0) -> Int[Arr, " m"]:
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


def priority(scores: Shaped[Arr, " n"], sinks: int = 0, window: int = 0) -> Int[Arr, " n"]:
    """All atoms ``[n]`` in the order :func:`select` takes them: the sinks (first atoms), the
    window from the most recent atom back, then the other atoms by decreasing score. For every
    budget m, ``select(scores, m, sinks, window)`` is the first m entries, sorted."""
    n = scores.shape[0]
    sink_idx, win_idx, free = protected_split(n, n, sinks, window)
    prot = jnp.asarray(sink_idx + win_idx[::-1], jnp.int32)
    if free == 0:
        return prot
    cand = jnp.ones((n,), bool)
    if prot.shape[0]:
        cand = cand.at[prot].set(False)
    top = lax.top_k(jnp.where(cand, scores, -jnp.inf), free)[1].astype(jnp.int32)
    return jnp.concatenate([prot, top])


def evict_upto(cache: Cache, order: Int[Arr, " n"], capacity: int, budget) -> Summary:
    """Keep the first ``budget`` (traced) atoms of ``order`` in position order, then
    ``capacity - budget`` empty atoms: the eviction summary at that budget, padded."""
    slot = jnp.arange(capacity)
    first = order[:capacity]
    kept = first[jnp.argsort(jnp.where(slot < budget, first, cache.n + slot))]
    summ = evict(cache, kept)
    logw = jnp.where(slot < budget, summ.cache.logw, -jnp.inf)
    return summ._replace(cache=summ.cache._replace(logw=logw))


def evict(cache: Cache, kept: Int[Arr, " m"]) -> Summary:
    """The summary that keeps ``kept`` unchanged (no validation: used inside rules)."""
    return Summary(Cache(cache.keys[kept], cache.values[kept], cache.logw[kept]), kept)


def scored(name: str, score: Callable, *, sinks: int = 0, window: int = 0,
           needs_queries: bool = False, layer_shared: bool = False,
           whole_prefix: bool = False, randomized: bool = False) -> Rule:
    """A rule that keeps protected atoms and the top-scored others; ``score(cache, q, key) -> [n]``.
    ``layer_shared``: the layer's KV heads keep one set, chosen on their mean score (see
    :func:`layer_summaries`); ``whole_prefix``: see :class:`Rule`."""

    def compress(cache, budget, queries, key):
        return evict(cache, select(score(cache, queries, key), budget, sinks, window))

    def upto(cache, capacity, budget, queries, key):
        return evict_upto(cache, priority(score(cache, queries, key), sinks, window), capacity,
                          budget)

    return Rule(name, compress, needs_queries, score, upto,
                lambda scores: priority(scores, sinks, window), layer_shared, whole_prefix,
                randomized)


def layer_summaries(rule: Rule, heads: list[Cache], queries: list, budgets, capacity: int,
                    keys: list) -> list[Summary]:
    """The summaries of a ``layer_shared`` rule for the KV heads of one layer: each head keeps the
    first ``budgets[h]`` atoms of one order, the rule's order of the heads' mean score. With equal
    GQA groups this mean is the mean over every query head of the layer (TOVA's definition).
    Each summary has ``capacity`` atoms (empty ones after the budget, as :meth:`Rule.padded`)."""
    if not rule.layer_shared or rule.order is None:
        raise ValueError(f"rule {rule.name!r} does not select one set per layer")
    heads = [validate(h) for h in heads]
    n = heads[0].n
    if any(h.n != n for h in heads) or len(queries) != len(heads) or len(budgets) != len(heads):
        raise ValueError("layer_summaries: one cache of the same length, one query group and one "
                         "budget per KV head")
    for m in budgets:
        _check.budget(int(m), capacity)
    q = [group_queries(x, h.keys.shape[1]) for x, h in zip(queries, heads)]
    return _layer_jitted(rule.score, rule.order)(heads, q, list(keys), capacity,
                                                  jnp.asarray(budgets, jnp.int32))


@lru_cache(maxsize=None)
def _layer_jitted(score, order):
    def run(heads, queries, keys, capacity, budgets):
        mean = sum(score(h, q, k).astype(jnp.float32) for h, q, k in zip(heads, queries, keys))
        first = order(mean / len(heads))
        return [_stored(evict_upto(h, first, capacity, budgets[i]), h)
                for i, h in enumerate(heads)]

    return jax.jit(run, static_argnums=3)


# ------------------------------------------------------------------------------ attention helpers


def query_positions(n: int, p: int):
    """Positions of p observed queries: the last p tokens of a cache of n."""
    return jnp.arange(n - p, n)


def head_attention(cache: Cache, queries: Float[Arr, "g p d"],
                   scale: Scalar | None = None) -> Float[Arr, "g p n"]:
    """Causal attention weights of each observed query ``[g, p, n]`` (float32 at least)."""
    g, p, d = queries.shape
    n = cache.n
    dt = _check.compute_dtype(queries, cache.keys)
    scale = default_scale(d) if scale is None else scale
    s = scale * jnp.einsum("gpd,nd->gpn", queries.astype(dt), cache.keys.astype(dt),
                           precision=HIGHEST) + cache.logw.astype(dt)
    visible = jnp.arange(n)[None, :] <= query_positions(n, p)[:, None]
    s = jnp.where(visible[None], s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1)
