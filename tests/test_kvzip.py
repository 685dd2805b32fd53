"""KVzip (mkv.kvzip): reconstruction scores against a float64 NumPy forward of the tiny model,
the global allocation against a brute-force top-k, and the evaluator's use of it (kvpress's own
KVzipPress: tests/test_kvpress.py)."""

import numpy as np
import pytest
import tiny_llama

import minimaxkv as mkv
from minimaxkv import evaluate as E
from minimaxkv import kvzip
from minimaxkv import model as M

RULE = kvzip.KVzip(chunk=40)  # three passes over the test context: sinks, tail and chunks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens))
    stored = tiny_llama.write_gguf(folder / "tiny.gguf", cfg, tiny_llama.weights(cfg, seed=5))
    model = M.load(folder / "tiny.gguf")
    tok = model.tokenizer
    words = np.random.default_rng(7).integers(3, cfg["vocab"], 100).astype(np.int32)
    # a chat-formatted context starts with the template's user-turn prefix (kvpress skips it)
    chat = np.concatenate([tok.encode("<|im_start|>user\n"), words]).astype(np.int32)
    return dict(cfg=cfg, w=stored, model=model, plain=words, chat=chat,
                past={k: E.prefill(model, c).past for k, c in (("plain", words), ("chat", chat))})


def reference_scores(cfg, w, tokenizer, context, rule):
    """KVzip's scores from the definition, for the tiny model's ChatML template: the context
    after the user-turn prefix (if it starts with it) in chunks; for each pass, one float64
    forward over context + pass (the pass reads the whole context), then the softmax of the
    pass's queries over the sinks, the chunk and the pass's own keys (causally), maximised over
    queries and group; the first four tokens at 1 (never evicted), the rest of the prefix at
    0."""
    H, K, hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    n = len(context)
    prefix = tokenizer.encode("<|im_start|>user\n")
    start = len(prefix) if list(context[:len(prefix)]) == prefix else 0
    first = tokenizer.encode("\n\nRepeat the previous context exactly.")
    later = tokenizer.encode("\n\nRepeat the part of the previous context exactly, starting with")
    suffix = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n")
    out = np.zeros((cfg["layers"], K, n))
    for lo in range(start, n, rule.chunk):
        hi = min(lo + rule.chunk, n)
        ask = first if lo == start else later + list(context[lo - rule.tail:lo])
        ids = list(context) + ask + suffix + list(context[lo:hi])
        _, layers = tiny_llama.reference_forward(cfg, w, ids)
        s = min(rule.sinks, lo)
        R = len(ids) - n
        for layer, (q, k) in enumerate(layers):
            for h in range(K):
                keys = np.concatenate([k[:s, h], k[lo:hi, h], k[n:, h]])
                best = np.zeros(hi - lo)
                for head in range(h * (H // K), (h + 1) * (H // K)):
                    for i in range(R):
                        logit = keys @ q[n + i, head] / np.sqrt(hd)
                        logit[s + hi - lo + i + 1:] = -np.inf  # the pass's later tokens
                        p = np.exp(logit - logit.max())
                        p /= p.sum()
                        best = np.maximum(best, p[s:s + hi - lo])
                out[layer, h, lo:hi] = best
    out[:, :, :rule.sinks] = 1.0
    return out


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_scores_match_a_float64_reconstruction(tiny, kind):
    """Three passes; with the chat prefix its tokens after the sinks score 0 (never repeated),
    without it the first pass scores every token but the sinks."""
    context, past = tiny[kind], tiny["past"][kind]
    got = kvzip.scores(tiny["model"], past, context, RULE)
    ref = reference_scores(tiny["cfg"], tiny["w"], tiny["model"].tokenizer, context, RULE)
    assert got.shape == ref.shape == (2, 2, len(context))
    assert len(kvzip.passes(tiny["model"].tokenizer, context, RULE)) == 3
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-6)
    start = len(context) - 100
    assert ref[:, :, start:].min() < 0.05 < ref[:, :, start:].max()  # the scores discriminate
    assert (got[:, :, :4] == 1).all()
    assert (got[:, :, 4:start] == 0).all() and (start > 4) == (kind == "chat")


def test_global_allocation_keeps_the_highest_scores_of_every_head(tiny):
    """The L Hkv m highest scores over all heads, each head its own count, positions in order;
    the compressed cache holds exactly those pairs, padded with empty atoms."""
    context, past = tiny["chat"], tiny["past"]["chat"]
    ref = reference_scores(tiny["cfg"], tiny["w"], tiny["model"].tokenizer, context, RULE)
    score = kvzip.scores(tiny["model"], past, context, RULE)
    flat = np.sort(ref.reshape(-1))[::-1]
    gap = flat[4 * np.arange(1, 100) - 1] - flat[4 * np.arange(1, 100)]  # at the cut of m atoms
    # in each third of the budgets, the one whose cut is farthest from a tie (float32 vs float64)
    for m in (1 + lo + int(np.argmax(gap[lo:lo + 30])) for lo in (5, 35, 65)):
        assert gap[m - 1] > 1e-3  # no near-tie at the cut: the kept sets are defined
        want = ref >= flat[4 * m - 1]
        got = kvzip.compress(tiny["model"], past, context, m, RULE, score)
        ok = np.isfinite(np.asarray(got.logw))
        assert ok.sum() == 4 * m and got.keys.shape[2] == want.sum(-1).max()
        assert len(set(want.sum(-1).ravel())) > 1  # heads keep different numbers
        for layer in range(2):
            for h in range(2):
                pos = np.flatnonzero(want[layer, h])
                np.testing.assert_array_equal(
                    np.asarray(got.keys[layer, h])[ok[layer, h]],
                    np.asarray(past.keys[layer, h])[pos])
                assert ok[layer, h, :len(pos)].all() and not ok[layer, h, len(pos):].any()
                assert want[layer, h, :4].all()  # the sinks


def test_the_evaluator_runs_kvzip_once_per_prompt(smollm2, monkeypatch):
    """``resolve("kvzip")`` in a sweep: the reconstruction once for all budgets, bytes of
    exactly L Hkv m atoms, the whole cache at a budget that keeps every token, and allocations
    refused."""
    tok = smollm2.tokenizer
    task = mkv.tasks.make("niah_single_1", 300, lambda t: len(tok.encode(t)), chat=tok.chat)
    rules = {"kvzip": E.resolve("kvzip")}
    calls = []
    scores = kvzip.scores
    monkeypatch.setattr(kvzip, "scores", lambda *a, **k: calls.append(1) or scores(*a, **k))
    rows = E.sweep(smollm2, [task], rules, [0.5, 0.25, 1.0], max_new=4, progress=False)
    assert len(calls) == 1
    n = rows[0]["prefix_tokens"]
    half, _, whole = rows
    assert half["atoms"] == 90 * half["budget"] and half["budget"] == int(0.5 * n)
    assert half["bytes"] == smollm2.config.cache_bytes(half["budget"])
    assert whole["kl"] == 0.0 and whole["atoms"] == 90 * n
    with pytest.raises(ValueError, match="kvzip"):
        E.resolve("kvzip@adakv")
    with pytest.raises(ValueError, match="one-shot"):
        E.sweep(smollm2, [task], rules, [0.5], block=64, progress=False)
