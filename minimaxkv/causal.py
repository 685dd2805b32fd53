r"""Causal compression: any rule applied block by block during prefill and decoding.

Tokens arrive one at a time (key, value, query at position t). The compressed state is a summary
of the closed past (at most ``budget`` atoms) plus an exact buffer of the open block (at most
``block`` atoms). When the buffer fills, the rule compresses *summary + buffer* back to ``budget``
atoms, once (merge-reduce: summaries of summaries, docs/theory.md C2); prefill and decoding run
the same mechanics, prefill with block-sized steps, decoding token by token. The query at
position t attends to the summary and to the buffer up to t (causal), and its error against the
exact causal attention over tokens 0..t is recorded. Query-aware rules see the queries of the
tokens in the buffer being closed (the "observed" queries at compression time).

Reported: causal risk over prefill and decode positions, the memory of the state after every
token (keys + values + log-weights of atoms with positive weight, in bytes), and the time spent
compressing.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from . import _check
from .attention import attend_and_mass
from .cache import Cache, atom_bytes, live_bytes
from .rules.base import Rule


class CausalResult(NamedTuple):
    """Per-position squared errors and memory, with their summaries."""

    errors: np.ndarray  # [T] squared output error of each position's query
    nbytes: np.ndarray  # [T] bytes of the compressed state when token t is read
    prefill_risk: float
    decode_risk: float
    compress_seconds: float
    compressions: int


def run(rule: Rule, keys, values, queries, budget: int, *, prefill: int, block: int = 64,
        key=None, progress: bool = False) -> CausalResult:
    """Compress a token stream causally with ``rule`` and measure the error of every query.

    Args:
        keys, values, queries: ``[T, d]``, ``[T, dv]``, ``[T, d]`` for tokens at positions 0..T-1.
        budget: atoms of the summary of the closed past.
        prefill: the first ``prefill`` tokens are the prompt; the rest are decoded.
        block: size of the exact buffer; it is compressed into the summary when full.
        key: the random draws of a rule that makes them (``Rule.randomized``), folded with each
            compression's first position; such a rule refuses ``None``.
    """
    k = _check.array(keys, "keys", (None, None))
    T, d = k.shape
    v = _check.array(values, "values", (T, None))
    q = _check.array(queries, "queries", (T, d))
    _check.budget(budget, T)
    if not 0 < prefill <= T:
        raise ValueError(f"prefill: expected 1 <= prefill <= T = {T}, got {prefill}")
    if block < 1:
        raise ValueError(f"block: expected a positive int, got {block}")
    dt = _check.compute_dtype(k, v)
    itemsize = np.dtype(k.dtype).itemsize
    exact, _ = attend_and_mass(q, Cache(k, v), query_pos=jnp.arange(T))
    summary = Cache(jnp.zeros((0, d), k.dtype), jnp.zeros((0, v.shape[1]), v.dtype),
                    jnp.zeros((0,), dt))
    err = np.zeros(T)
    nbytes = np.zeros(T, np.int64)
    spent, count = 0.0, 0
    start = 0
    steps = tqdm(total=T, desc=f"causal {rule.name}", disable=not progress, leave=False)
    while start < T:
        stop = min(start + block, T)
        pos = jnp.arange(start, stop)
        buf = Cache(k[start:stop], v[start:stop], jnp.zeros((stop - start,), dt))
        state = Cache(*(jnp.concatenate([a.astype(b.dtype), b]) for a, b in zip(summary, buf)))
        kpos = jnp.concatenate([jnp.full((summary.keys.shape[0],), -1), pos])
        out, _ = attend_and_mass(q[start:stop], state, query_pos=pos, key_pos=kpos)
        err[start:stop] = np.asarray(jnp.sum((out - exact[start:stop]) ** 2, axis=1))
        base = live_bytes(summary, itemsize)
        nbytes[start:stop] = base + np.arange(1, stop - start + 1) * atom_bytes(d, v.shape[1],
                                                                                itemsize)
        if state.keys.shape[0] > budget and stop < T:
            t0 = time.perf_counter()
            s = rule(state, budget, q[start:stop],
                     None if key is None else jax.random.fold_in(key, start))
            jax.block_until_ready(s.cache)
            spent += time.perf_counter() - t0
            count += 1
            summary = s.cache
        else:
            summary = state
        steps.update(stop - start)
        start = stop
    steps.close()
    pre = float(err[:prefill].mean())
    dec = float(err[prefill:].mean()) if prefill < T else float("nan")
    return CausalResult(err, nbytes, pre, dec, spent, count)
