r"""Synthetic caches with controllable compressibility, each with a matching query set.

Every family returns an :class:`Instance`: a raw cache, queries ``[p, d]`` that probe it, and
token positions (keys at ``0..n-1``, queries after them) for causal use. Logits are
:math:`\tau\langle q,k\rangle` with :math:`\tau=1/\sqrt d`. Families, from compressible to not:

============== ==========================================================================
``low_rank``    keys in a random ``rank``-dim subspace
``clustered``   keys within ``radius`` of ``clusters`` centres (merging is nearly exact)
``power_law``   key covariance spectrum :math:`\propto i^{-\alpha}` (response spectrum decays
                with it; the exponent of G's spectrum is measured, not prescribed exactly)
``heavy``       attention sinks and heavy hitters: a few atoms aligned with the mean query
``recency``     RoPE-rotated keys/queries sharing a direction: attention decays with distance
``isotropic``   i.i.d. Gaussian keys, queries and values
``lookup``      (near-)orthogonal keys, query i aligned with key i: incompressible (L3)
============== ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from . import rope
from .cache import Cache
from .shapes import Arr, Float, Int


@partial(jax.tree_util.register_dataclass, data_fields=["cache", "queries", "key_pos",
                                                          "query_pos"],
         meta_fields=["theta", "convention"])
@dataclass(frozen=True)
class Instance:
    """A cache with the queries that probe it and causal positions, and the RoPE base and
    pairing of its keys and queries (``theta = 0``: no RoPE) for the rules that model RoPE:
    ``rules.get(name, theta=inst.theta, convention=inst.convention)``. A pytree whose leaves
    are the arrays (the base is static: instances ``vmap`` and ``jit``)."""

    cache: Cache
    queries: Float[Arr, "*batch p d"]  # leading axes: instances batched by vmap
    key_pos: Int[Arr, "*batch n"]
    query_pos: Int[Arr, "*batch p"]
    theta: float = 0.0
    convention: str = "half"


def _sizes(n, d, dv, p):
    for name, v in (("n", n), ("d", d), ("dv", dv), ("p", p)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")


def _instance(keys, values, queries, dtype, theta=0.0, convention="half"):
    n, p = keys.shape[0], queries.shape[0]
    return Instance(Cache(keys.astype(dtype), values.astype(dtype)), queries.astype(dtype),
                    jnp.arange(n), jnp.arange(n, n + p), float(theta), convention)


def isotropic(key, n=64, d=16, dv=16, p=32, *, logit_std=2.0, dtype=jnp.float32) -> Instance:
    """i.i.d. N(0, I) keys and values; queries N(0, s^2 I) so logits have std ``logit_std``."""
    _sizes(n, d, dv, p)
    kk, kv, kq = jax.random.split(key, 3)
    keys = jax.random.normal(kk, (n, d))
    q = logit_std * jax.random.normal(kq, (p, d))
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


def clustered(key, n=64, d=16, dv=16, p=32, *, clusters=8, radius=0.1, logit_std=2.0,
              dtype=jnp.float32) -> Instance:
    """Keys = one of ``clusters`` N(0, I) centres + a uniform direction times ``radius``."""
    _sizes(n, d, dv, p)
    if not 1 <= clusters <= n:
        raise ValueError(f"clusters: expected 1 <= clusters <= n = {n}, got {clusters}")
    if radius < 0:
        raise ValueError(f"radius: expected >= 0, got {radius}")
    kc, ka, ku, kv, kq = jax.random.split(key, 5)
    centres = jax.random.normal(kc, (clusters, d))
    lab = jnp.concatenate([jnp.arange(clusters), jax.random.randint(ka, (n - clusters,), 0,
                                                                       clusters)])
    u = jax.random.normal(ku, (n, d))
    keys = centres[lab] + radius * u / jnp.linalg.norm(u, axis=1, keepdims=True)
    q = logit_std * jax.random.normal(kq, (p, d))
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


def low_rank(key, n=64, d=16, dv=16, p=32, *, rank=2, logit_std=2.0,
             dtype=jnp.float32) -> Instance:
    """Keys ``Z B`` with ``Z [n, rank]``, ``B [rank, d]`` Gaussian (scaled to unit entry variance)."""
    _sizes(n, d, dv, p)
    if not 1 <= rank <= d:
        raise ValueError(f"rank: expected 1 <= rank <= d = {d}, got {rank}")
    kz, kb, kv, kq = jax.random.split(key, 4)
    keys = jax.random.normal(kz, (n, rank)) @ jax.random.normal(kb, (rank, d)) / jnp.sqrt(rank)
    q = logit_std * jax.random.normal(kq, (p, d))
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


def power_law(key, n=64, d=16, dv=16, p=32, *, alpha=1.5, logit_std=2.0,
              dtype=jnp.float32) -> Instance:
    r"""Keys with covariance :math:`U\,\mathrm{diag}(c\,i^{-\alpha})U^T` (random rotation U,
    trace d); larger α = faster decay of the response spectrum."""
    _sizes(n, d, dv, p)
    if alpha < 0:
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    kz, ku, kv, kq = jax.random.split(key, 4)
    spec = jnp.arange(1, d + 1, dtype=jnp.float32) ** (-alpha)
    spec = spec * d / jnp.sum(spec)
    rot, _ = jnp.linalg.qr(jax.random.normal(ku, (d, d)))
    keys = (jax.random.normal(kz, (n, d)) * jnp.sqrt(spec)) @ rot.T
    q = logit_std * jax.random.normal(kq, (p, d))
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


def heavy(key, n=64, d=16, dv=16, p=32, *, sinks=2, hitters=4, strength=3.0, logit_std=2.0,
          dtype=jnp.float32) -> Instance:
    """Sinks (the first ``sinks`` atoms) and ``hitters`` random atoms whose keys point along the
    mean query direction with norm ``strength * sqrt(d)``: they collect most of the attention."""
    _sizes(n, d, dv, p)
    if sinks + hitters > n:
        raise ValueError(f"sinks + hitters = {sinks + hitters} exceeds n = {n}")
    kk, kh, kv, kq, km = jax.random.split(key, 5)
    keys = jax.random.normal(kk, (n, d))
    mu = jax.random.normal(km, (d,))
    mu = mu / jnp.linalg.norm(mu)
    others = jax.random.permutation(kh, jnp.arange(sinks, n))[:hitters]
    special = jnp.concatenate([jnp.arange(sinks), others])
    keys = keys.at[special].set(strength * jnp.sqrt(d) * mu + 0.1 * keys[special])
    q = logit_std * (jax.random.normal(kq, (p, d)) / jnp.sqrt(2.0) + mu * jnp.sqrt(d / 2.0))
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


def recency(key, n=64, d=16, dv=16, p=32, *, theta=100.0, shared=2.0, logit_std=2.0,
            convention="half", dtype=jnp.float32) -> Instance:
    """Pre-RoPE keys and queries share a direction (weight ``shared``); after RoPE at their
    positions (keys 0..n-1, queries n..n+p-1) their logits fall with the distance."""
    _sizes(n, d, dv, p)
    kk, ks, kv, kq = jax.random.split(key, 4)
    u = jax.random.normal(ks, (d,))
    u = u / jnp.linalg.norm(u) * jnp.sqrt(d)
    keys = rope.apply(shared * u + jax.random.normal(kk, (n, d)), jnp.arange(n), theta,
                      convention)
    qpre = logit_std * (u + jax.random.normal(kq, (p, d))) / jnp.sqrt(2.0)
    q = rope.apply(qpre, jnp.arange(n, n + p), theta, convention)
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype, theta, convention)


def lookup(key, n=16, d=16, dv=16, p=None, *, gap=8.0, dtype=jnp.float32) -> Instance:
    r"""The lookup family (L3): keys :math:`\alpha u_j` with :math:`u_j` orthonormal (random
    orthonormal frame; near-orthogonal random unit vectors when n > d), query i :math:`= \alpha
    u_{i \bmod n}`, :math:`\tau\alpha^2 =` ``gap``; i.i.d. N(0, 1) values. Every atom is the answer
    to its own query, so no small summary serves all queries. ``p`` defaults to n."""
    p = n if p is None else p
    _sizes(n, d, dv, p)
    kr, kv = jax.random.split(key)
    alpha = jnp.sqrt(gap * jnp.sqrt(d))
    if n <= d:
        frame, _ = jnp.linalg.qr(jax.random.normal(kr, (d, n)))
        u = frame.T
    else:
        u = jax.random.normal(kr, (n, d))
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    keys = alpha * u
    q = keys[jnp.arange(p) % n]
    return _instance(keys, jax.random.normal(kv, (n, dv)), q, dtype)


FAMILIES = {
    "isotropic": isotropic,
    "clustered": clustered,
    "low_rank": low_rank,
    "power_law": power_law,
    "heavy": heavy,
    "recency": recency,
    "lookup": lookup,
}


def make(family: str, key, **kw) -> Instance:
    """Build an instance of a named family (see :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family](key, **kw)


@partial(jax.tree_util.register_dataclass, data_fields=["keys", "values", "queries"],
         meta_fields=["theta", "convention"])
@dataclass(frozen=True)
class Stream:
    """Per-token keys, values and queries of one head, token t at position t, with the RoPE
    base and pairing as in :class:`Instance`."""

    keys: Float[Arr, "*batch T d"]
    values: Float[Arr, "*batch T dv"]
    queries: Float[Arr, "*batch T d"]
    theta: float = 0.0
    convention: str = "half"


def stream(key, T=512, d=32, dv=16, *, theta=10000.0, shared=1.5, logit_std=2.0, topics=8,
           convention="half", dtype=jnp.float32) -> Stream:
    """A token stream for causal experiments: pre-RoPE keys and queries share a direction (attention
    leans to the recent past) and each token belongs to one of ``topics`` slowly switching
    topics (key and value directions), so old context stays relevant; RoPE at positions 0..T-1."""
    for name, v in (("T", T), ("d", d), ("dv", dv), ("topics", topics)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    ks, kt, kk, kq, kv, ktv, kswitch = jax.random.split(key, 7)
    u = jax.random.normal(ks, (d,))
    u = u / jnp.linalg.norm(u) * jnp.sqrt(d)
    tk = jax.random.normal(kt, (topics, d))
    tv = jax.random.normal(ktv, (topics, dv))
    switch = jax.random.uniform(kswitch, (T,)) < 0.05  # a new topic every ~20 tokens
    topic = jnp.cumsum(switch) * 7 % topics
    pos = jnp.arange(T)
    keys = rope.apply(shared * u / 2 + tk[topic] + 0.5 * jax.random.normal(kk, (T, d)), pos,
                      theta, convention)
    qpre = logit_std * (u / 2 + tk[(topic + 3) % topics] + jax.random.normal(kq, (T, d))) / 2
    queries = rope.apply(qpre, pos, theta, convention)
    values = tv[topic] + 0.5 * jax.random.normal(kv, (T, dv))
    return Stream(keys.astype(dtype), values.astype(dtype), queries.astype(dtype), float(theta),
                  convention)
