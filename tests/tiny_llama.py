"""A tiny random Llama written to disk in both formats, and a float64 NumPy reference forward.

The GGUF copy is written the way llama.cpp's converter writes it (Q/K rows permuted for
interleaved RoPE, one matrix quantized to Q8_0); the Hugging Face copy holds the same
(dequantized) numbers in the Hugging Face layout. The reference forward below uses the GGUF
layout with interleaved-pair RoPE, so agreeing with it checks the loaders' un-permutation and the
model's half-split RoPE independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 byte-level base tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def vocabulary():
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = SPECIALS + byte_chars() + [m.replace(" ", "") for m in merges]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, merges, types


def config(vocab: int, qwen: bool = False, *, kind: str | None = None, head_dim: int = 8,
           scaling: tuple | None = None, window: int | None = None) -> dict:
    """The tiny model's hyper-parameters. ``kind``: ``llama`` (default; ``scaling`` = Llama 3's
    RoPE ``(factor, low_freq_factor, high_freq_factor, original_context)``), ``qwen2`` (Q/K/V
    biases; ``qwen=True`` says the same), ``qwen3`` (per-head query/key RMSNorm; ``head_dim``
    need not be dim / heads) or ``mistral`` (``window``: sliding-window attention)."""
    kind = kind or ("qwen2" if qwen else "llama")
    return dict(vocab=vocab, dim=32, layers=2, heads=4, kv_heads=2, head_dim=head_dim, hidden=48,
                theta=10000.0, eps=1e-5, qwen=kind == "qwen2", kind=kind, scaling=scaling,
                window=window)


def weights(cfg: dict, seed: int = 0) -> dict:
    """Random weights in the Hugging Face layout (``[out, in]``), float32."""
    rng = np.random.default_rng(seed)
    D, H, K, hd, F = cfg["dim"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["hidden"]

    def mat(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    w = {"embed": mat(cfg["vocab"], D) * 4, "norm": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32),
         "head": mat(cfg["vocab"], D)}
    for layer in range(cfg["layers"]):
        p = f"{layer}."
        w[p + "attn_norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        w[p + "mlp_norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        w[p + "q"], w[p + "k"], w[p + "v"] = mat(H * hd, D) * 3, mat(K * hd, D) * 3, mat(K * hd, D)
        w[p + "o"] = mat(D, H * hd)
        w[p + "gate"], w[p + "up"], w[p + "down"] = mat(F, D), mat(F, D), mat(D, F)
        if cfg["qwen"]:
            for b, n in (("bq", H * hd), ("bk", K * hd), ("bv", K * hd)):
                w[p + b] = (0.3 * rng.standard_normal(n)).astype(np.float32)
        if cfg.get("kind") == "qwen3":
            for b in ("q_norm", "k_norm"):
                w[p + b] = (1 + 0.5 * rng.standard_normal(hd)).astype(np.float32)
    return w


def permute(w, heads):
    out = w.shape[0]
    hd = out // heads
    return w.reshape(heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_file(folder: Path, seed: int = 0) -> Path:
    """``folder/tiny.gguf``: the tiny model with the test vocabulary and random weights."""
    tokens, _, _ = vocabulary()
    cfg = config(len(tokens))
    write_gguf(Path(folder) / "tiny.gguf", cfg, weights(cfg, seed))
    return Path(folder) / "tiny.gguf"


def write_gguf(path: Path, cfg: dict, w: dict, *, quantize: bool = True) -> dict:
    """Write ``w`` as a llama.cpp GGUF; returns the weights as stored (dequantized)."""
    import gguf

    tokens, merges, types = vocabulary()
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("tiny-llama")
    wr.add_block_count(cfg["layers"])
    wr.add_context_length(512)
    wr.add_embedding_length(cfg["dim"])
    wr.add_feed_forward_length(cfg["hidden"])
    wr.add_head_count(cfg["heads"])
    wr.add_head_count_kv(cfg["kv_heads"])
    wr.add_rope_freq_base(cfg["theta"])
    wr.add_layer_norm_rms_eps(cfg["eps"])
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_eos_token_id(2)
    wr.add_chat_template(CHAT)
    stored = dict(w)
    names = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm", "q": "attn_q", "k": "attn_k",
             "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
             "down": "ffn_down"}
    q8 = gguf.GGMLQuantizationType.Q8_0
    emb = w["embed"]
    if quantize:  # the embedding in Q8_0, as in SmolLM2's file
        raw = gguf.quants.quantize(emb, q8)
        stored["embed"] = gguf.quants.dequantize(raw, q8).astype(np.float32)
        wr.add_tensor("token_embd.weight", raw, raw_shape=raw.shape, raw_dtype=q8)
    else:
        wr.add_tensor("token_embd.weight", emb)
    wr.add_tensor("output_norm.weight", w["norm"])
    wr.add_tensor("output.weight", w["head"])
    for layer in range(cfg["layers"]):
        for key, name in names.items():
            a = w[f"{layer}.{key}"]
            if key == "q":
                a = permute(a, cfg["heads"])
            elif key == "k":
                a = permute(a, cfg["kv_heads"])
            wr.add_tensor(f"blk.{layer}.{name}.weight", np.ascontiguousarray(a))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return stored


def hf_config(cfg: dict, dialect: str = "hub") -> dict:
    """config.json of the tiny model: ``hub`` puts the RoPE in top-level ``rope_theta`` /
    ``rope_scaling`` (as the model hub's checkpoints do), ``v5`` in ``rope_parameters`` (as
    transformers 5 writes it)."""
    hf = {"model_type": cfg.get("kind", "qwen2" if cfg["qwen"] else "llama"),
          "vocab_size": cfg["vocab"], "hidden_size": cfg["dim"], "num_hidden_layers": cfg["layers"],
          "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
          "head_dim": cfg["head_dim"], "intermediate_size": cfg["hidden"],
          "rms_norm_eps": cfg["eps"], "tie_word_embeddings": False,
          "max_position_embeddings": 512, "hidden_act": "silu", "torch_dtype": "float32"}
    rope = {"rope_type": "default", "rope_theta": cfg["theta"]}
    if cfg.get("scaling"):
        factor, low, high, original = cfg["scaling"]
        rope = {"rope_type": "llama3", "rope_theta": cfg["theta"], "factor": factor,
                "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": original}
    if cfg.get("window"):
        hf["sliding_window"] = cfg["window"]
    if dialect == "v5":
        hf["rope_parameters"] = rope
    else:
        hf["rope_theta"] = rope.pop("rope_theta")
        if rope["rope_type"] != "default":
            hf["rope_scaling"] = rope
    return hf


def write_hf(folder: Path, cfg: dict, w: dict, dialect: str = "hub", dtype=np.float32):
    """Write ``w`` as a Hugging Face directory (config.json + model.safetensors + tokenizer),
    its tensors stored in ``dtype`` (e.g. ``ml_dtypes.bfloat16``, as checkpoints ship)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(cfg, dialect)))
    names = {"attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
             "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight",
             "v": "self_attn.v_proj.weight", "o": "self_attn.o_proj.weight",
             "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
             "down": "mlp.down_proj.weight", "bq": "self_attn.q_proj.bias",
             "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
             "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
    t = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["norm"],
         "lm_head.weight": w["head"]}
    for key, a in w.items():
        if "." in key:
            layer, name = key.split(".")
            t[f"model.layers.{layer}.{names[name]}"] = a
    save_file({k: np.ascontiguousarray(v, dtype) for k, v in t.items()},
              str(folder / "model.safetensors"))


def reference_logits(cfg: dict, w: dict, ids) -> np.ndarray:
    """Float64 forward in the GGUF layout: permuted Q/K rows, RoPE on interleaved pairs."""
    return reference_forward(cfg, w, ids)[0]


def reference_forward(cfg: dict, w: dict, ids):
    """:func:`reference_logits` and every layer's post-RoPE queries ``[T, H, hd]`` and keys
    ``[T, Hkv, hd]`` (in the GGUF layout: their dot products are the model's)."""
    H, K, hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    f = {k: np.asarray(v, np.float64) for k, v in w.items()}
    T = len(ids)
    x = f["embed"][np.asarray(ids)]
    pos = np.arange(T)
    omega = cfg["theta"] ** (-np.arange(0, hd, 2) / hd)
    if cfg.get("scaling"):  # Llama 3: each frequency by its wavelength against the old context
        factor, low, high, original = cfg["scaling"]
        for i, w_i in enumerate(omega):
            turns = original * w_i / (2 * np.pi)  # old context / wavelength
            if turns < low:  # long wavelength: interpolated
                omega[i] = w_i / factor
            elif turns <= high:  # between: a blend
                mix = (turns - low) / (high - low)
                omega[i] = (1 - mix) * w_i / factor + mix * w_i
    ang = pos[:, None] * omega[None, :]  # [T, hd/2]
    window = cfg.get("window") or T + 1

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg["eps"]) * g

    def rope_interleaved(x):  # [T, heads, hd], pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out

    seen = []
    for layer in range(cfg["layers"]):
        p = f"{layer}."
        h = rms(x, f[p + "attn_norm"])
        q = h @ permute(f[p + "q"], H).T + (permute(f[p + "bq"], H) if cfg["qwen"] else 0)
        k = h @ permute(f[p + "k"], K).T + (permute(f[p + "bk"], K) if cfg["qwen"] else 0)
        v = h @ f[p + "v"].T + (f[p + "bv"] if cfg["qwen"] else 0)
        q, k = q.reshape(T, H, hd), k.reshape(T, K, hd)
        if cfg.get("kind") == "qwen3":  # RMSNorm of each head's vector, weights in GGUF order
            q, k = rms(q, permute(f[p + "q_norm"], 1)), rms(k, permute(f[p + "k_norm"], 1))
        q = rope_interleaved(q)
        k = rope_interleaved(k)
        v = v.reshape(T, K, hd)
        seen.append((q, k))
        out = np.zeros((T, H, hd))
        for head in range(H):
            kv = head // (H // K)
            s = q[:, head] @ k[:, kv].T * cfg.get("scale", hd ** -0.5)
            seen_by = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
            s = np.where(seen_by, s, -np.inf)
            e = np.exp(s - s.max(1, keepdims=True))
            out[:, head] = (e / e.sum(1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, H * hd) @ f[p + "o"].T
        h = rms(x, f[p + "mlp_norm"])
        g = h @ f[p + "gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ f[p + "up"].T)) @ f[p + "down"].T
    return rms(x, f["norm"]) @ f["head"].T, seen
