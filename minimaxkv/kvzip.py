r"""KVzip (Kim et al. 2025, arXiv:2505.23416): query-agnostic scores from context reconstruction.

A rule of the whole model, not of one head: after the prefill, the model is asked to repeat its
context, and every cached pair is scored by the attention the repetition pays to it. As kvpress
(``KVzipPress``) runs it:

1. **The turn's frame.** With a chat template, its text before a user message's content is the
   *prefix* (ChatML: the system turn and ``<|im_start|>user\n``) and its text after the content,
   generation prompt included, the *suffix* (``<|im_end|>\n<|im_start|>assistant\n``); without
   one, no prefix and the suffix ``"\n"``. A context that starts with the prefix's tokens is
   reconstructed after them (they are not repeated); any other from its first token.
2. **Passes.** The reconstructed tokens are cut into chunks of ``chunk`` = 2,048. Chunk c is
   repeated by one forward pass over the full cache of the context (positions n, n+1, ...) of
   the ids of ``"\n\nRepeat the previous context exactly."`` (first chunk) or of
   ``"\n\nRepeat the part of the previous context exactly, starting with"`` followed by the
   last ``tail`` = 8 tokens of the previous chunk (later chunks), then the suffix and the chunk's
   own tokens. Each pass is separate: the cache holds the context alone when the next one starts.
3. **Scores.** In every layer, the queries of all the pass's tokens (every query head, after
   RoPE) attend, with the model's scale :math:`\tau` (:math:`d^{-1/2}`), to a subset of keys: the first
   ``min(sinks, start)`` keys of the sequence (``start``: the chunk's first position), the
   chunk's keys, and causally the pass's own keys. A chunk key's score is the largest of these
   softmax weights over the queries and the query heads of its KV head's group. The first
   ``sinks`` = 4 tokens score 1, above any other score, whatever a pass gave them (they are
   never evicted); the prefix's other tokens, never repeated, score 0.
4. **Allocation.** The scores of every layer and KV head compete for one total (kvpress's
   default, not layer-wise): the ``L Hkv m`` highest are kept, so heads and layers get
   different numbers of atoms with mean m per head. Kept pairs stay exact (eviction).

Positions past the model's context are read by the reconstruction when n + chunk exceeds it
(SmolLM2 at 8,192 tokens); kvpress runs the same positions (RoPE extrapolated).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .cache import Cache, compact
from .model import Model, bucket, buffer, forward, pad_tokens

FIRST = "\n\nRepeat the previous context exactly."
LATER = "\n\nRepeat the part of the previous context exactly, starting with"


class KVzip(NamedTuple):
    """KVzip's hyperparameters (kvpress's defaults): ``sinks`` always-kept first tokens,
    ``chunk`` tokens repeated per reconstruction pass, ``tail`` tokens of the previous chunk
    quoted in the later prompts."""

    sinks: int = 4
    chunk: int = 2048
    tail: int = 8

    @property
    def name(self) -> str:
        return "kvzip"


class Pass(NamedTuple):
    """One reconstruction pass: it scores the context's tokens ``lo:hi`` and reads ``ids``."""

    lo: int
    hi: int
    ids: np.ndarray


def frame(tokenizer) -> tuple[str, str]:
    """Step 1: the chat template's prefix and suffix around a user message (kvpress's way: a
    dummy message with a separator, split), or an empty prefix and a newline without a
    template."""
    dummy = "dummy context"
    sep = "\n" + "#" * len(dummy)
    text = tokenizer.chat(dummy + sep)
    if text == dummy + sep:
        return "", "\n"
    before, suffix = text.split(sep)
    return before.split(dummy)[0], suffix


def passes(tokenizer, context, rule: KVzip = KVzip()) -> list[Pass]:
    """The reconstruction passes of ``context`` (token ids): steps 1-2 of the module's
    docstring."""
    context = np.asarray(context, np.int32)
    prefix, suffix = frame(tokenizer)
    pre = tokenizer.encode(prefix)
    start = len(pre) if pre and list(context[:len(pre)]) == pre else 0
    first, later, end = (np.asarray(tokenizer.encode(t), np.int32) for t in (FIRST, LATER, suffix))
    out = []
    for lo in range(start, len(context), rule.chunk):
        hi = min(lo + rule.chunk, len(context))
        ask = first if lo == start else np.concatenate(
            [later, context[max(lo - rule.chunk, lo - rule.tail):lo]])
        out.append(Pass(lo, hi, np.concatenate([ask, end, context[lo:hi]])))
    return out


@partial(jax.jit, static_argnames=("sinks",))
def _pass_scores(queries, sink_keys, chunk_keys, chunk_ok, own_keys, n_own, scale, sinks: int):
    """Step 3 for every layer and KV head: ``queries [L, H, R, hd]`` and ``own_keys
    [L, Hkv, R, hd]`` of the pass (its first ``n_own`` tokens real), ``sink_keys [L, Hkv, s, hd]``,
    ``chunk_keys [L, Hkv, C, hd]`` (``chunk_ok [C]``: real, not padding). Returns ``[L, Hkv, C]``."""
    L, H, R, hd = queries.shape
    K, C = chunk_keys.shape[1], chunk_keys.shape[2]
    q = queries.reshape(L * K, H // K, R, hd)
    keys = jnp.concatenate([sink_keys, chunk_keys, own_keys], 2).reshape(L * K, -1, hd)
    rows = jnp.arange(R)
    seen = jnp.concatenate([jnp.ones((R, sinks), bool), jnp.broadcast_to(chunk_ok, (R, C)),
                            rows[None, :] <= rows[:, None]], 1)  # [R, s + C + R]

    def head(args):
        qh, kh = args
        logits = jnp.einsum("grd,nd->grn", qh, kh, preferred_element_type=jnp.float32) * scale
        p = jax.nn.softmax(jnp.where(seen, logits, -jnp.inf), -1)[..., sinks:sinks + C]
        return jnp.max(jnp.where((rows < n_own)[None, :, None], p, 0.0), (0, 1))

    return lax.map(head, (q, keys)).reshape(L, K, C)


def scores(model: Model, past: Cache, context, rule: KVzip = KVzip()) -> np.ndarray:
    """KVzip's score of every pair of ``past`` (the full cache of ``context``, ``[L, Hkv, n, hd]``):
    ``[L, Hkv, n]`` float32 (steps 1-3)."""
    cfg = model.config
    n = past.keys.shape[2]
    if model.tokenizer is None:
        raise ValueError("kvzip: the model has no tokenizer (tokenizer.json) to write the "
                         "reconstruction prompt with")
    if len(context) != n:
        raise ValueError(f"context: {len(context)} tokens, but the cache holds {n}")
    # the cache padded to its bucket: contexts of nearby lengths share the model's program
    padded = buffer(past, bucket(n) - n)
    out = np.zeros(past.keys.shape[:3], np.float32)
    for p in passes(model.tokenizer, context, rule):
        ids = pad_tokens(p.ids)  # the padding reads after every real token: it changes nothing
        got = forward(model.params, cfg, ids, n, padded, n_queries=len(ids), all_logits=False,
                      beyond_context=True)
        s = min(rule.sinks, p.lo)
        width = bucket(p.hi - p.lo)
        chunk = jnp.pad(past.keys[:, :, p.lo:p.hi], ((0, 0), (0, 0), (0, width - p.hi + p.lo),
                                                     (0, 0)))
        got_s = _pass_scores(got.queries, past.keys[:, :, :s], chunk,
                             jnp.arange(width) < p.hi - p.lo, got.keys, len(p.ids),
                             cfg.scale, s)
        out[:, :, p.lo:p.hi] = np.asarray(got_s)[:, :, :p.hi - p.lo]
    out[:, :, :rule.sinks] = 1.0  # softmax weights are at most 1: the sinks come first
    return out


def keep(score: np.ndarray, budget: int) -> np.ndarray:
    """Step 4: a mask ``[L, Hkv, n]`` of the ``L Hkv budget`` highest of ``score`` over every
    head (ties to the earlier head and position)."""
    flat = score.reshape(-1)
    chosen = np.zeros(flat.shape, bool)
    chosen[np.argsort(-flat, kind="stable")[:score.shape[0] * score.shape[1] * budget]] = True
    return chosen.reshape(score.shape)


def compress(model: Model, past: Cache, context, budget: int, rule: KVzip = KVzip(),
             score: np.ndarray | None = None) -> Cache:
    """``past`` with the pairs KVzip keeps at a mean of ``budget`` atoms per head (heads that
    keep fewer than the widest are padded with empty atoms: log-weight -inf); ``score``: the
    scores if already computed (they do not depend on the budget)."""
    n = past.keys.shape[2]
    if budget < 1:
        raise ValueError(f"budget: expected at least 1 atom per head, got {budget}")
    if budget >= n:
        return past
    score = scores(model, past, context, rule) if score is None else score
    chosen = jnp.asarray(keep(score, budget))
    return compact(Cache(past.keys, past.values, jnp.where(chosen, past.logw, -jnp.inf)))
