r"""A Llama-family decoder in JAX: pure functions of (params, config, tokens, past cache).

One layer (Touvron et al. 2023; Qwen2 adds biases to the Q/K/V projections):

.. math::
    h &= x + W_o\,\mathrm{Attn}(\mathrm{RoPE}(W_q\bar x), \mathrm{RoPE}(W_k\bar x), W_v\bar x),
    \quad \bar x = \mathrm{RMSNorm}(x)\\
    x' &= h + W_{down}\big(\mathrm{silu}(W_{gate}\bar h)\odot W_{up}\bar h\big),
    \quad \bar h = \mathrm{RMSNorm}(h)

with grouped-query attention (``heads / kv_heads`` query heads share a key/value head),
attention logits :math:`\tau\langle q, k\rangle` (:math:`\tau` = ``Config.scale``,
:math:`d^{-1/2}` in every supported family) and
:math:`\mathrm{RMSNorm}(x) = x / \sqrt{\overline{x^2} + \epsilon}\odot w`. The variants: Qwen3
normalizes each head's query and key (an RMSNorm over the head dimension, its own weights) before
RoPE; Llama 3.x scales RoPE's frequencies (:class:`minimaxkv.rope.Llama3`); Mistral attends over a
sliding window (a token sees the ``window`` positions up to its own).

The attention of a chunk of new tokens reads a **past cache** per layer and KV head -- keys
``[L, Hkv, S, hd]`` (post-RoPE), values and log-weights ``[L, Hkv, S]`` -- with the log-weights added
to the logits (docs/theory.md §1.1), so a compressed summary (or a buffer whose empty slots carry
``-inf``) plugs in directly; every past atom is visible to every new token. Within the chunk the
attention is causal and computed block by block over queries, each block reading the keys up to
its own end tile by tile (an online softmax): fully masked tiles are skipped, not computed and
thrown away.

Weights are stored ``[in, out]`` (``y = x @ W``) and stacked over layers, so the layers run under
one ``lax.scan``; activations and softmax accumulate in float32 whatever the storage dtype.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import rope
from ..attention import fold
from ..cache import Cache, atom_bytes
from ..shapes import Arr, Float, Int

QUERY_BLOCK = 256  # queries per causal block of the prefill attention
KEY_TILE = 256  # chunk keys per online-softmax step of the prefill attention


class Config(NamedTuple):
    """Static shape and hyper-parameters of a Llama-family model (hashable: a ``jit`` static)."""

    name: str
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int  # feed-forward width
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tied: bool = True
    qkv_bias: bool = False
    context: int = 8192
    rope_scaling: Optional[tuple] = None  # Llama 3.x: (factor, low, high, original context)
    qk_norm: bool = False  # Qwen3: RMSNorm of each head's query and key before RoPE
    window: Optional[int] = None  # sliding-window attention (Mistral): positions seen per token
    attn_scale: Optional[float] = None  # tau of the attention logits; None: head_dim ** -0.5

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def rope(self) -> float | rope.Llama3:
        """The model's RoPE as the rules and :mod:`minimaxkv.rope` take it (``theta=``)."""
        return self.rope_theta if self.rope_scaling is None else rope.Llama3(
            self.rope_theta, *self.rope_scaling)

    @property
    def scale(self) -> float:
        """The attention temperature tau (the rules' ``scale=``)."""
        return self.head_dim ** -0.5 if self.attn_scale is None else self.attn_scale

    @property
    def rule_hyper(self) -> dict:
        """What the rules take from the model: ``rules.get(name, **cfg.rule_hyper)`` (its RoPE as
        ``theta``, its temperature as ``scale``)."""
        return {"theta": self.rope, "scale": self.scale}

    def cache_bytes(self, atoms: int, itemsize: int = 4) -> int:
        """Bytes of a cache with ``atoms`` atoms in every layer and KV head (keys, values, log-weights)."""
        return self.layers * self.kv_heads * atoms * atom_bytes(self.head_dim, self.head_dim,
                                                                itemsize)


class Layers(NamedTuple):
    """Per-layer weights stacked along a leading ``[L]`` axis; biases ``None`` unless Qwen2-style,
    per-head query/key norms ``None`` unless Qwen3-style."""

    attn_norm: Float[Arr, "L D"]
    wq: Float[Arr, "L D Hhd"]
    wk: Float[Arr, "L D Khd"]
    wv: Float[Arr, "L D Khd"]
    wo: Float[Arr, "L Hhd D"]
    mlp_norm: Float[Arr, "L D"]
    w_gate: Float[Arr, "L D F"]
    w_up: Float[Arr, "L D F"]
    w_down: Float[Arr, "L F D"]
    bq: Optional[Float[Arr, "L Hhd"]] = None
    bk: Optional[Float[Arr, "L Khd"]] = None
    bv: Optional[Float[Arr, "L Khd"]] = None
    q_norm: Optional[Float[Arr, "L hd"]] = None  # Qwen3
    k_norm: Optional[Float[Arr, "L hd"]] = None


class Params(NamedTuple):
    """All weights; ``head`` is ``None`` when the output projection is tied to the embedding."""

    embed: Float[Arr, "V D"]
    layers: Layers
    norm: Float[Arr, " D"]
    head: Optional[Float[Arr, "D V"]] = None


class Output(NamedTuple):
    """What :func:`forward` returns for a chunk of ``T`` tokens."""

    logits: Float[Arr, "T V"]  # float32; only the last row when ``all_logits=False``
    keys: Float[Arr, "L Hkv T hd"]  # post-RoPE keys of the chunk
    values: Float[Arr, "L Hkv T hd"]
    queries: Optional[Float[Arr, "L H w hd"]] = None  # post-RoPE queries of the last w tokens


def rms_norm(x, w, eps):
    x = x.astype(jnp.float32)
    return x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(jnp.float32)


def _mm(x, w):
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def empty_past(cfg: Config, dtype=jnp.float32) -> Cache:
    """A past cache with no atom: shapes ``[L, Hkv, 0, hd]``."""
    shape = (cfg.layers, cfg.kv_heads, 0, cfg.head_dim)
    return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros(shape[:-1], jnp.float32))


def attention(q, k, v, past_k, past_v, past_b, block: int = QUERY_BLOCK, *,
              scale: float | None = None, window: int | None = None):
    r"""Grouped-query attention of a chunk over its past cache and, causally, over itself.

    Args:
        q: ``[T, H, hd]`` chunk queries; k, v: ``[T, Hkv, hd]`` chunk keys / values.
        past_k, past_v: ``[Hkv, S, hd]``; past_b: ``[Hkv, S]`` log-weights (``-inf`` = empty).
        scale: tau (default ``hd ** -0.5``).
        window: if given, a chunk token sees only the chunk tokens less than ``window`` positions
            before it (sliding-window attention; the past is seen whole: the caller checks that
            every past atom lies within every window).

    Returns:
        ``[T, H, hd]``: :math:`\sum_j e^{s_j}v_j/\sum_j e^{s_j}`, :math:`s_j = \tau\langle q,k_j
        \rangle + b_j` over the past atoms and the chunk tokens at or before the query.

    Queries go in blocks of ``block`` tokens (a ``lax.scan``, so the program does not grow with
    ``T``); the ``g`` query heads of a KV head are rows of one matrix. A block folds in the past
    (one product), then the chunk's keys in tiles of ``KEY_TILE`` by an online softmax: the tiles
    before the block's first token unmasked (a loop whose length depends on the block), the tiles
    on the block's diagonal with the causal mask. Tiles after the block are never computed, and
    each tile's logits stay small enough to be read back from cache.
    """
    T, H, hd = q.shape
    kvh = k.shape[1]
    g = H // kvh
    f32 = jnp.float32
    tq = min(block, T)
    tk = KEY_TILE if tq % KEY_TILE == 0 else tq  # tiles divide the block: diagonal tiles align
    nq = -(-T // tq)
    pad = nq * tq - T  # padded queries are dropped; padded keys sit after every real query
    qg = jnp.pad(q.astype(f32) * (hd ** -0.5 if scale is None else scale),
                 ((0, pad), (0, 0), (0, 0)))
    # [nq, Hkv, tq * g, hd], rows ordered (token, head of the group)
    qg = jnp.swapaxes(qg.reshape(nq, tq, kvh, g, hd), 1, 2).reshape(nq, kvh, tq * g, hd)
    kc = jnp.pad(jnp.swapaxes(k, 0, 1).astype(f32), ((0, 0), (0, pad), (0, 0)))  # [Hkv, T', hd]
    vc = jnp.pad(jnp.swapaxes(v, 0, 1).astype(f32), ((0, 0), (0, pad), (0, 0)))
    pk, pv = past_k.astype(f32), past_v.astype(f32)
    row_pos = jnp.repeat(jnp.arange(tq), g)  # token offset of each row within its block

    def tile(qb, qpos, j, state, masked):
        kt = lax.dynamic_slice_in_dim(kc, j * tk, tk, 1)
        vt = lax.dynamic_slice_in_dim(vc, j * tk, tk, 1)
        s = jnp.einsum("kmd,ksd->kms", qb, kt)
        kpos = j * tk + jnp.arange(tk)[None, :]
        if masked:
            s = jnp.where(kpos <= qpos[:, None], s, -jnp.inf)
        if window is not None:
            s = jnp.where(kpos > qpos[:, None] - window, s, -jnp.inf)
        return fold(state, s, vt, precision=None)

    def run(_, xs):
        i, qb = xs
        first = i * tq
        qpos = first + row_pos
        state = (jnp.full((kvh, tq * g), -jnp.inf, f32), jnp.zeros((kvh, tq * g), f32),
                 jnp.zeros((kvh, tq * g, hd), f32))
        if pk.shape[1]:
            state = fold(state, jnp.einsum("kmd,ksd->kms", qb, pk) + past_b[:, None, :], pv,
                         precision=None)
        state = lax.fori_loop(0, first // tk, lambda j, st: tile(qb, qpos, j, st, False), state)
        for d in range(tq // tk):
            state = tile(qb, qpos, first // tk + d, state, True)
        _, z, num = state  # a token always sees itself: z > 0
        return None, num / z[..., None]

    _, out = lax.scan(run, None, (jnp.arange(nq), qg))  # [nq, Hkv, tq * g, hd]
    out = jnp.swapaxes(out.reshape(nq, kvh, tq, g, hd), 1, 2).reshape(nq * tq, H, hd)
    return out[:T]


def _layer(cfg: Config, positions, n_queries: int, block: int, length):
    def run(x, xs):
        lp, pk, pv, pb = xs
        T = x.shape[0]
        h = rms_norm(x, lp.attn_norm, cfg.norm_eps)
        q, k, v = _mm(h, lp.wq), _mm(h, lp.wk), _mm(h, lp.wv)
        if cfg.qkv_bias:
            q, k, v = q + lp.bq, k + lp.bk, v + lp.bv
        q = q.reshape(T, cfg.heads, cfg.head_dim)
        k = k.reshape(T, cfg.kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = rms_norm(q, lp.q_norm, cfg.norm_eps), rms_norm(k, lp.k_norm, cfg.norm_eps)
        q = rope.apply(q, positions[:, None], cfg.rope)
        k = rope.apply(k, positions[:, None], cfg.rope)
        v = v.reshape(T, cfg.kv_heads, cfg.head_dim)
        a = attention(q, k, v, pk, pv, pb, block, scale=cfg.scale, window=cfg.window)
        x = x + _mm(a.reshape(T, -1), lp.wo)
        h = rms_norm(x, lp.mlp_norm, cfg.norm_eps)
        x = x + _mm(jax.nn.silu(_mm(h, lp.w_gate)) * _mm(h, lp.w_up), lp.w_down)
        kv_dtype = pk.dtype
        out = (jnp.swapaxes(k, 0, 1).astype(kv_dtype), jnp.swapaxes(v, 0, 1).astype(kv_dtype),
               jnp.swapaxes(lax.dynamic_slice_in_dim(q, length - n_queries, n_queries), 0, 1)
               if n_queries else None)
        return x, out
    return run


def _forward_impl(params: Params, cfg: Config, ids, start, past: Cache, n_queries: int,
                  all_logits: bool, block: int, per_layer=None, length=None) -> Output:
    T = ids.shape[0]
    length = T if length is None else length  # tokens after ``length`` are padding
    positions = start + jnp.arange(T)
    x = params.embed[ids].astype(jnp.float32)
    run = _layer(cfg, positions, n_queries, block, length)
    if per_layer is None:
        x, (k, v, q) = lax.scan(run, x, (params.layers, past.keys, past.values, past.logw))
    else:
        # one branch per layer, each reading its own weight buffers in place (see _per_layer)
        branches = [partial(lambda lp, x, kv: run(x, (lp, *kv)), lp) for lp in per_layer]
        x, (k, v, q) = lax.scan(lambda x, xs: lax.switch(xs[0], branches, x, xs[1:]), x,
                                (jnp.arange(cfg.layers), past.keys, past.values, past.logw))
    x = rms_norm(x if all_logits else lax.dynamic_slice_in_dim(x, length - 1, 1), params.norm,
                 cfg.norm_eps)
    if params.head is None:  # tied: contract the embedding's rows, no transposed copy
        logits = jnp.einsum("td,vd->tv", x.astype(params.embed.dtype), params.embed,
                            preferred_element_type=jnp.float32)
    else:
        logits = _mm(x, params.head)
    return Output(logits, k, v, q)


_PER_LAYER: dict = {}


def _per_layer(params: Params):
    """The layers' weights as one set of buffers per layer, made once per model and kept while
    the model lives; ``None`` where not worth it (off the CPU, or under tracing).

    In a ``lax.scan`` over stacked ``[L, ...]`` weights, XLA:CPU copies each layer's slice before
    its matrix-vector products, which doubles the memory traffic of a decoding step (the step
    is bound by reading the weights). Separate buffers are read in place; they cost one more copy
    of the layer weights in memory.
    """
    wq = params.layers.wq
    if isinstance(wq, jax.core.Tracer) or any(d.platform != "cpu" for d in wq.devices()):
        return None
    key = id(wq)
    hit = _PER_LAYER.get(key)
    if hit is not None and hit[0]() is wq:
        return hit[1]
    split = tuple(Layers(*(None if a is None else a[i] for a in params.layers))
                  for i in range(wq.shape[0]))
    _PER_LAYER[key] = (weakref.ref(wq), split)
    weakref.finalize(wq, _PER_LAYER.pop, key, None)
    return split


_forward = jax.jit(_forward_impl, static_argnames=("cfg", "n_queries", "all_logits", "block"))


def bucket(n: int) -> int:
    """The length ``n`` rounds up to so that nearby lengths share one compiled program: the next
    multiple of ``max(8, 2^(floor(log2 n) - 3))`` -- eight lengths per octave, at most 1/8 (or 7
    slots) more than ``n``; powers of two from 8 on are their own bucket."""
    if n <= 0:
        return 0
    step = max(8, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


def pad_tokens(ids) -> np.ndarray:
    """Token ids followed by zeros up to their :func:`bucket` length (pass ``length=len(ids)``
    to :func:`forward`)."""
    ids = np.asarray(ids)
    return np.pad(ids, (0, bucket(ids.shape[0]) - ids.shape[0]))


def forward(params: Params, cfg: Config, ids: Int[Arr, " T"], start: int = 0,
            past: Cache | None = None, *, n_queries: int = 0, all_logits: bool = True,
            block: int = QUERY_BLOCK, length: int | None = None,
            beyond_context: bool = False) -> Output:
    r"""Run a chunk of tokens at positions ``start .. start+T-1`` over a past cache.

    Args:
        params, cfg: the model.
        ids: ``[T]`` token ids (T >= 1).
        start: position of the first token (RoPE angle); past atoms carry their own rotation.
        past: a :class:`~minimaxkv.Cache` with leading ``[L, Hkv]`` axes (keys/values
            ``[L, Hkv, S, hd]``, log-weights ``[L, Hkv, S]``), e.g. a full prefix, a compressed
            summary or a fixed-capacity buffer; ``None`` for no past.
        n_queries: also return the post-RoPE queries of the last ``n_queries`` tokens (of the
            real ones; ``len(ids)``: of every position, padding included, so that one program
            serves every ``length`` of a bucket).
        all_logits: logits of every token (``[T, V]``) or of the last one only (``[1, V]``).
        length: the first ``length`` tokens are the chunk, the rest padding (so chunks of
            nearby lengths share a program, see :func:`bucket`): the last logits and the
            queries are those of the real tokens. Padding comes after every real token, so
            causal attention keeps it out of their outputs; its keys and values are returned
            (append them with :func:`concat`'s ``length``).
        beyond_context: allow positions past the model's context (RoPE extrapolated; KVzip's
            reconstruction, :mod:`minimaxkv.kvzip`); otherwise they are an error.

    Returns:
        :class:`Output` with the chunk's keys and values, ready to be appended to ``past``.
    """
    ids = jnp.asarray(ids, jnp.int32)
    if ids.ndim != 1 or ids.shape[0] == 0:
        raise ValueError(f"ids: expected a non-empty 1-D array of token ids, got shape {ids.shape}")
    length = int(ids.shape[0]) if length is None else int(length)
    if not 1 <= length <= ids.shape[0]:
        raise ValueError(f"length: expected 1..{ids.shape[0]} real tokens, got {length}")
    if not (0 <= n_queries <= length or n_queries == ids.shape[0]):
        raise ValueError(f"n_queries: expected 0..{length} or {ids.shape[0]}, got {n_queries}")
    if not beyond_context and isinstance(start, (int, np.integer)) and \
            int(start) + length > cfg.context:
        raise ValueError(f"positions {int(start)}..{int(start) + length - 1}: beyond the model's "
                         f"context of {cfg.context} tokens ({cfg.name})")
    if past is None:
        past = empty_past(cfg, params.embed.dtype if params.embed.dtype != jnp.bfloat16
                          else jnp.float32)
    want = (cfg.layers, cfg.kv_heads, None, cfg.head_dim)
    if past.keys.ndim != 4 or any(w is not None and w != s for w, s in zip(want, past.keys.shape)):
        raise ValueError(f"past.keys: expected shape (L={cfg.layers}, Hkv={cfg.kv_heads}, S, "
                         f"hd={cfg.head_dim}), got {tuple(past.keys.shape)}")
    if past.values.shape != past.keys.shape or past.logw.shape != past.keys.shape[:-1]:
        raise ValueError(f"past: values {tuple(past.values.shape)} and logw "
                         f"{tuple(past.logw.shape)} do not match keys {tuple(past.keys.shape)}")
    if past.keys.shape[2] and isinstance(start, (int, np.integer)):
        _check_window(cfg, int(start) + length - 1)
    return _forward(params, cfg, ids, jnp.asarray(start, jnp.int32), past, n_queries,
                    all_logits, block, length=jnp.asarray(length, jnp.int32))


def _check_window(cfg: Config, last: int):
    """A past cache does not say where its atoms sit, so with sliding-window attention every one
    must lie within every window: the last position may be at most ``window - 1``."""
    if cfg.window is not None and last >= cfg.window:
        raise ValueError(f"position {last}: past the sliding window of {cfg.window} tokens of "
                         f"{cfg.name}, where a past cache (whose atoms carry no positions) cannot "
                         f"be windowed; run prompts of at most {cfg.window} tokens, or one "
                         "forward without a past")


def concat(past: Cache, keys, values, length: int | None = None) -> Cache:
    """Append a chunk's keys/values ``[L, Hkv, T, hd]`` (weight 1) to a past cache; with
    ``length``, the atoms after the first ``length`` are padding (empty: log-weight ``-inf``)."""
    logw = jnp.zeros(keys.shape[:-1], past.logw.dtype)
    if length is not None:
        logw = jnp.where(jnp.arange(keys.shape[2]) < jnp.asarray(length), logw, -jnp.inf)
    return Cache(jnp.concatenate([past.keys, keys.astype(past.keys.dtype)], 2),
                 jnp.concatenate([past.values, values.astype(past.values.dtype)], 2),
                 jnp.concatenate([past.logw, logw], 2))


def buffer(past: Cache, extra: int) -> Cache:
    """``past`` followed by ``extra`` empty slots (log-weight ``-inf``): a fixed-capacity decode buffer."""
    pad = ((0, 0), (0, 0), (0, extra))
    return Cache(jnp.pad(past.keys, pad + ((0, 0),)), jnp.pad(past.values, pad + ((0, 0),)),
                 jnp.pad(past.logw, pad, constant_values=-jnp.inf))


@partial(jax.jit, static_argnames=("cfg", "queries"), donate_argnames=("buf",))
def _decode(params: Params, cfg: Config, token, pos, buf: Cache, slot, queries: bool,
            per_layer=None):
    out = _forward_impl(params, cfg, token[None], pos, buf, int(queries), False, QUERY_BLOCK,
                        per_layer)
    zero = jnp.zeros((), slot.dtype)
    at = (zero, zero, slot, zero)
    buf = Cache(lax.dynamic_update_slice(buf.keys, out.keys, at),
                lax.dynamic_update_slice(buf.values, out.values, at),
                lax.dynamic_update_slice(buf.logw, jnp.zeros(out.keys.shape[:-1], buf.logw.dtype),
                                         at[:3]))
    return out.logits[0], buf, out.queries


def decode(params: Params, cfg: Config, token: int, pos: int, buf: Cache, slot: int, *,
           queries: bool = False):
    """One decoding step: logits ``[V]`` of the token at position ``pos`` and the buffer with its
    key/value written at ``slot`` (the buffer is donated: use the returned one); with
    ``queries=True`` also the token's post-RoPE queries ``[L, H, 1, hd]``."""
    if not 0 <= slot < buf.keys.shape[2]:
        raise ValueError(f"slot: the buffer holds {buf.keys.shape[2]} atoms, got slot {slot}")
    _check_window(cfg, int(pos))
    row, buf, q = _decode(params, cfg, jnp.asarray(token, jnp.int32), jnp.asarray(pos, jnp.int32),
                          buf, jnp.asarray(slot, jnp.int32), queries, _per_layer(params))
    return (row, buf, q) if queries else (row, buf)
