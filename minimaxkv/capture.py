"""Captured caches: the post-RoPE keys, values and queries of every layer and head of a real model.

For a token sequence of length ``T`` a capture holds, per layer ``l`` and KV head ``h``, the cache
``Cache(keys[l, h], values[l, h])`` (``[T, hd]`` each, Hugging Face half-split RoPE layout) and the
queries of the query heads that share it (``queries[l, h*g:(h+1)*g]``, ``[g, T, hd]``), with the
token positions. :func:`head` returns one head in the form every function of the package takes.

Files are safetensors with JSON metadata (model, config, text hash, dtype, RoPE layout), written
atomically and validated on load (:mod:`minimaxkv.io`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import __version__, io, rope
from .cache import Cache


class Captured(NamedTuple):
    """Keys/values ``[L, Hkv, T, hd]``, queries ``[L, H, T, hd]``, positions ``[T]``, metadata."""

    keys: np.ndarray
    values: np.ndarray
    queries: np.ndarray
    positions: np.ndarray
    meta: dict

    @property
    def layers(self) -> int:
        return self.keys.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def group(self) -> int:
        return self.queries.shape[1] // self.keys.shape[1]

    def head(self, layer: int, kv_head: int) -> tuple[Cache, jnp.ndarray]:
        """``(Cache [T, hd], queries [g, T, hd])`` of one KV head and its query heads."""
        if not (0 <= layer < self.layers and 0 <= kv_head < self.kv_heads):
            raise ValueError(f"head ({layer}, {kv_head}) out of range: the capture has "
                             f"{self.layers} layers x {self.kv_heads} KV heads")
        g = self.group
        return (Cache(jnp.asarray(self.keys[layer, kv_head]), jnp.asarray(self.values[layer, kv_head])),
                jnp.asarray(self.queries[layer, kv_head * g:(kv_head + 1) * g]))


def prompt_ids(model, *, text=None, task: str = "passkey", length: int | None = None,
               seed: int = 0) -> tuple[list[int], str]:
    """Token ids of the text file ``text`` (its first ``length`` tokens; all with ``None``), or
    else of a generated ``task`` prompt of about ``length`` tokens (context, then question), and
    the source's description."""
    from . import tasks

    tok = model.tokenizer
    if text is not None:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--text {path}: no such file")
        content = path.read_text()
        if not content.strip():
            raise ValueError(f"--text {path} is empty")
        ids = tok.encode(content)
        return (ids[:length] if length else ids), f"text:{path.name}"
    prompt = tasks.make(task, length, lambda t: len(tok.encode(t)), seed=seed, chat=tok.chat)
    return tok.encode(prompt.context) + tok.encode(prompt.question), f"task:{task}:{seed}"


def text_hash(ids) -> str:
    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def rope_theta(cap: Captured):
    """The RoPE of the model a capture was taken from (its recorded configuration's
    ``rope_theta``, with ``rope_scaling`` as a :class:`minimaxkv.rope.Llama3` where the model
    scales its frequencies), which the rules that model RoPE need
    (:data:`minimaxkv.rules.ROPE_AWARE`)."""
    config = cap.meta.get("config") or {}
    theta = config.get("rope_theta")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        raise ValueError(f"capture of {cap.meta.get('model')!r}: its metadata records no RoPE "
                         "base (config.rope_theta); capture it again with minimaxkv capture")
    scaling = config.get("rope_scaling")
    return float(theta) if scaling is None else rope.Llama3(float(theta), *scaling)


def attn_scale(cap: Captured) -> float | None:
    """The attention temperature the capture's model recorded (``config.attn_scale``), or
    ``None``: the default ``head_dim ** -0.5``."""
    scale = (cap.meta.get("config") or {}).get("attn_scale")
    return None if scale is None else float(scale)


def rule_hyper(cap: Captured) -> dict:
    """What the rules take from the capture's model (see ``Config.rule_hyper``): its RoPE as
    ``theta`` and its attention temperature as ``scale`` (:func:`attn_scale`, else
    ``head_dim ** -0.5``)."""
    scale = attn_scale(cap)
    return {"theta": rope_theta(cap), "scale": cap.keys.shape[-1] ** -0.5 if scale is None else scale}


def capture(model, ids, *, source: str = "") -> Captured:
    """Run ``model`` over token ``ids`` with the full cache and keep every layer's keys, values
    and queries (post-RoPE, float32)."""
    from .model import _ids, forward

    ids = _ids(model, ids)
    T = int(ids.shape[0])
    out = forward(model.params, model.config, ids, n_queries=T, all_logits=False)
    cfg = model.config
    meta = {"model": cfg.name, "config": cfg._asdict(), "tokens": T, "text_sha256": text_hash(ids),
            "source": source, "rope": "half", "dtype": "float32",
            "minimaxkv": __version__}
    return Captured(np.asarray(out.keys, np.float32), np.asarray(out.values, np.float32),
                    np.asarray(out.queries, np.float32), np.arange(T, dtype=np.int32), meta)


def save(path, cap: Captured) -> Path:
    """Write a capture atomically (safetensors + JSON metadata)."""
    return io.save_tensors(path, {"keys": cap.keys, "values": cap.values, "queries": cap.queries,
                                  "positions": cap.positions}, cap.meta)


def load(path) -> Captured:
    """Read and validate a capture file; refuses corrupt, truncated or inconsistent files."""
    t, meta = io.load_tensors(path, ("keys", "values", "queries", "positions"))
    k, v, q, pos = t["keys"], t["values"], t["queries"], t["positions"]
    if k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"{path}: keys {k.shape} and values {v.shape} must both be [L, Hkv, T, hd]")
    if q.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{path}: queries {q.shape} do not fit keys {k.shape} "
                         f"(expected [L, H, T, hd] with H a multiple of Hkv)")
    if pos.shape != (k.shape[2],):
        raise ValueError(f"{path}: positions {pos.shape}, expected ({k.shape[2]},)")
    _check_meta(path, meta, k, v, q, pos)
    return Captured(k, v, q, pos, meta)


def _check_meta(path, meta: dict, k, v, q, pos) -> None:
    """The metadata fields a capture must carry, and the tensors' dtypes agreeing with them."""
    want = {"model": str, "tokens": int, "rope": str, "dtype": str}
    bad = [f for f, t in want.items() if not isinstance(meta.get(f), t) or isinstance(meta[f], bool)]
    if bad:
        raise ValueError(f"{path}: capture metadata lacks or mistypes {bad} (model, rope, dtype "
                         "are strings, tokens an integer)")
    if meta["rope"] != "half":
        raise ValueError(f"{path}: RoPE layout {meta['rope']!r}; captures hold post-RoPE keys in "
                         "the half-split layout ('half')")
    if meta["tokens"] != k.shape[2]:
        raise ValueError(f"{path}: the metadata records {meta['tokens']} tokens, the tensors "
                         f"hold {k.shape[2]}")
    dtypes = {name: str(a.dtype) for name, a in (("keys", k), ("values", v), ("queries", q))}
    wrong = {name: dt for name, dt in dtypes.items() if dt != meta["dtype"]}
    if wrong or not np.issubdtype(np.dtype(k.dtype), np.floating):
        raise ValueError(f"{path}: keys, values and queries must be floats of the recorded dtype "
                         f"{meta['dtype']!r}, got {dtypes}")
    if not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"{path}: positions must be integers, got {pos.dtype}")
    if pos.size and (pos[0] < 0 or np.any(np.diff(pos) <= 0)):
        raise ValueError(f"{path}: positions must be non-negative and increasing")
