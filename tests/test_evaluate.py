"""End-to-end evaluation: exactness at full budget, a hand-built window cache as second
implementation, monotone degradation with the budget on SmolLM2, and the results table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import evaluate as E
from minimaxkv import model as M
from minimaxkv import tasks


def _task(m, family="passkey", length=300, seed=0):
    tok = m.tokenizer
    return tasks.make(family, length, lambda t: len(tok.encode(t)), seed=seed, chat=tok.chat)


@pytest.fixture(scope="module")
def passkey(smollm2):
    prep = E.prepare(smollm2, _task(smollm2))
    full = E.read(smollm2, prep, E.prefill(smollm2, prep.prefix), max_new=8)
    return prep, full


@pytest.mark.parametrize("name", ["snapkv", "attention_matching", "minimax"])
@pytest.mark.parametrize("block", [None, 128])
def test_full_budget_equals_full_cache_exactly(smollm2, passkey, name, block):
    prep, full = passkey
    n = len(prep.prefix)
    state = E.prefill(smollm2, prep.prefix, mkv.rules.get(name), n, block=block,
                      key=jax.random.PRNGKey(0))
    got = E.read(smollm2, prep, state, max_new=8)
    met = E.metrics(prep, full, got, state.past, state.seconds)
    if block is None:
        np.testing.assert_array_equal(got.logits, full.logits)
        assert met["kl"] == 0.0
    else:  # block-wise prefill of the same tokens: the same numbers up to float32 round-off
        assert met["kl"] < 1e-6
    assert met["top1"] == 1.0 and met["score"] == met["score_full"]
    assert abs(met["ppl"] - met["ppl_full"]) < 1e-4 * met["ppl_full"]
    assert met["atoms"] == n * 90 and met["bytes"] == n * smollm2.config.cache_bytes(1)


def test_window_rule_equals_a_hand_built_recent_cache(smollm2, passkey):
    """Second implementation: keep the last m keys/values of the full prefill by slicing."""
    prep, full = passkey
    m = 40
    state = E.prefill(smollm2, prep.prefix, mkv.rules.get("window"), m)
    got = E.read(smollm2, prep, state, max_new=8)
    out = M.forward(smollm2.params, smollm2.config, jnp.asarray(prep.prefix), all_logits=False)
    past = mkv.Cache(out.keys[:, :, -m:], out.values[:, :, -m:])
    cont = M.forward(smollm2.params, smollm2.config, jnp.asarray(prep.cont), len(prep.prefix), past)
    np.testing.assert_allclose(got.logits[1:], np.asarray(cont.logits[:-1]), atol=1e-4)
    assert E.metrics(prep, full, got, state.past, 0.0)["kl"] > 0


def test_metrics_refuse_non_number_logits(smollm2, passkey):
    """A compressed cache that made the compiled model produce NaN is reported, not scored."""
    prep, full = passkey
    state = E.prefill(smollm2, prep.prefix, mkv.rules.get("window"), 40)
    got = E.read(smollm2, prep, state, max_new=2)
    bad = got._replace(logits=got.logits.copy())
    bad.logits[1, 7] = np.nan
    with pytest.raises(ValueError, match="logits with the compressed cache holds NaN"):
        E.metrics(prep, full, bad, state.past, 0.0)
    assert np.isfinite(E.metrics(prep, full, got, state.past, 0.0)["kl"])


def test_kl_grows_as_the_budget_shrinks(smollm2, passkey):
    prep, full = passkey
    kls = []
    for m in (len(prep.prefix), 160, 40, 8):
        st = E.prefill(smollm2, prep.prefix, mkv.rules.get("streaming_llm"), m)
        kls.append(E.metrics(prep, full, E.read(smollm2, prep, st, 4), st.past, 0.0)["kl"])
    assert kls[0] == 0.0 and kls[0] < kls[1] < kls[2] < kls[3], kls


def test_query_aware_protocol_moves_the_question_into_the_prefix(smollm2):
    task = _task(smollm2, "niah_single", 200, 1)
    agn, aware = E.prepare(smollm2, task), E.prepare(smollm2, task, query_aware=True)
    assert len(aware.prefix) == len(agn.prefix) + len(agn.cont) - agn.answer
    np.testing.assert_array_equal(aware.cont, agn.cont[-agn.answer:])


def test_sweep_table_and_resume(smollm2):
    task = _task(smollm2, "passkey", 200, 2)
    rules = {"window": mkv.rules.get("window"), "snapkv": mkv.rules.get("snapkv")}
    saved = []
    rows = E.sweep(smollm2, [task], rules, [0.25, 16], max_new=4, on_row=saved.append,
                   progress=False)
    assert saved == rows and len(rows) == 4
    n = rows[0]["prefix_tokens"]
    assert {r["budget"] for r in rows} == {round(0.25 * n), 16}
    again = E.sweep(smollm2, [task], rules, [0.25, 16], done=rows, progress=False)
    assert again == rows  # nothing recomputed
    table = E.summarize_rows(rows)
    assert [r["budget"] for r in table] == sorted(r["budget"] for r in table)


def test_sweep_refuses_what_it_would_silently_ignore(smollm2):
    """More observed queries than context tokens, or more atoms than the context holds, are
    errors before any prefill (they used to be capped silently, the row claiming atoms it did not
    keep)."""
    task = _task(smollm2, "passkey", 120, 3)
    n = len(E.prepare(smollm2, task).prefix)
    rules = {"snapkv": mkv.rules.get("snapkv")}
    with pytest.raises(ValueError, match=f"only {n} context tokens"):
        E.sweep(smollm2, [task], rules, [0.25], observed=n + 1, progress=False)
    with pytest.raises(ValueError, match=f"{n + 1} atoms, but the context has only {n} tokens"):
        E.sweep(smollm2, [task], rules, [n + 1], progress=False)


def test_compression_during_decoding(smollm2, passkey):
    """Decode-time compression: with room for everything it is the full run (up to round-off);
    with a small budget the state never exceeds budget + block atoms per head."""
    prep, full = passkey
    n = len(prep.prefix)
    rule = mkv.rules.get("snapkv")
    state = E.prefill(smollm2, prep.prefix)
    got, past, _ = E._read_running(smollm2, prep, state, E.Recompression(rule, n + 100, 8), 8)
    assert E.metrics(prep, full, got, past, 0.0)["kl"] < 1e-6 and got.generated == full.generated
    small = E.prefill(smollm2, prep.prefix, rule, 48)
    how = E.Recompression(rule, 48, 8)
    dec = E.start_decoding(small.past, n, how)
    sizes = []
    for t in prep.cont:
        _, after = E.feed(smollm2, how, dec, int(t))
        assert dec.slot + 1 == after.slot or after.slot == 48  # the state is a value: dec is kept
        dec = after
        sizes.append(dec.past.keys.shape[2])
    assert max(sizes) <= 48 + 8 and min(sizes) >= 48 and 48 in sizes  # it did compress
    assert dec.seconds > 0 and dec.pos == n + len(prep.cont)


def test_one_full_prefill_serves_every_rule(smollm2, passkey):
    prep, _ = passkey
    rule = mkv.rules.get("snapkv")
    a = E.prefill(smollm2, prep.prefix, rule, 50)
    b = E.compress_state(E.prefill(smollm2, prep.prefix), rule, 50)
    for x, y in zip(a.past, b.past):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.last, b.last)


def test_summary_table_intervals_over_prompts():
    """Scores and KL are averaged per (rule, budget) over prompts, with bootstrap intervals that
    stay inside the scores' range (all 16 right: [1, 1]) and NaN for a single prompt."""
    def row(rule, seed, score, kl):
        return {"rule": rule, "budget_spec": 0.25, "budget": 10, "bytes": 2048, "kl": kl,
                "top1": 1.0, "ppl": 1.0, "ppl_full": 1.0, "score": score, "score_full": 1.0,
                "compress_seconds": 0.0, "seed": seed}

    rows = [row("a", s, 1.0, 0.01 * s) for s in range(16)] + \
        [row("b", s, float(s % 4 == 0), 0.5) for s in range(16)] + [row("c", 0, 1.0, 0.1)]
    table = {r["rule"]: r for r in E.summarize_rows(rows)}
    assert table["a"]["score"] == 1.0 and (table["a"]["score_low"], table["a"]["score_high"]) == (1, 1)
    assert table["a"]["kl"] == pytest.approx(0.075) and table["a"]["tasks"] == 16
    assert table["a"]["kl_low"] < 0.075 < table["a"]["kl_high"]
    b = table["b"]  # 4 of 16: the interval of a bootstrap Binomial(16, 1/4) / 16 mean
    assert b["score"] == 0.25 and 0 <= b["score_low"] < 0.25 < b["score_high"] <= 0.5
    assert np.isnan(table["c"]["score_low"]) and table["c"]["tasks"] == 1


def test_per_head_budgets_pad_with_empty_atoms(tmp_path):
    """An allocated rule compresses each head with its own budget; the padding atoms (up to the
    bucket of the largest budget) have log-weight -inf, and attention over the padded summary equals attention over the unpadded one."""
    r = np.random.default_rng(2)
    L, K, g, T, hd = 3, 2, 2, 40, 8
    past = mkv.Cache(jnp.asarray(r.standard_normal((L, K, T, hd)), jnp.float32),
                     jnp.asarray(r.standard_normal((L, K, T, hd)), jnp.float32),
                     jnp.zeros((L, K, T), jnp.float32))
    all_queries = (1.5 * r.standard_normal((L, K * g, T, hd))).astype(np.float32)
    queries = jnp.asarray(all_queries[:, :, -8:])
    for alloc in ("pyramid", "adakv", "spectral"):
        rule = E.resolve(f"snapkv@{alloc}")
        sizes = E.head_budgets(rule, past, queries, 10)
        assert sizes.shape == (3, 2) and sizes.sum() <= 60
        if alloc == "pyramid":
            assert np.all(sizes[:, 0] == sizes[:, 1]) and sizes[0, 0] > sizes[-1, 0]
        out = E.compress(rule, past, 10, queries)
        # padded to one capacity: the bucket of the largest head budget (at most n = 40)
        assert out.keys.shape[2] == min(mkv.model.bucket(int(sizes.max())), 40)
        for i in range(3):
            for h in range(2):
                finite = np.isfinite(np.asarray(out.logw[i, h]))
                assert finite.sum() == sizes[i, h]
                ref = mkv.rules.get("snapkv")(mkv.Cache(past.keys[i, h], past.values[i, h]),
                                          int(sizes[i, h]), queries[i, 2 * h:2 * h + 2])
                np.testing.assert_array_equal(out.keys[i, h][finite], ref.cache.keys)
                q = jnp.asarray(all_queries[i, 2 * h], jnp.float64)
                f64 = lambda c: mkv.Cache(*(jnp.asarray(a, jnp.float64) for a in c))  # noqa: E731
                np.testing.assert_allclose(
                    mkv.attend(q, f64((out.keys[i, h], out.values[i, h], out.logw[i, h]))),
                    mkv.attend(q, f64(ref.cache)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="scored rule"):
        E.resolve("minimax@adakv")
    with pytest.raises(ValueError, match="unknown allocation"):
        E.resolve("snapkv@magic")


def test_tova_keeps_one_set_per_layer_from_every_query_head():
    """The evaluator compresses a model's cache with TOVA as the paper defines it: the last query's
    attention averaged over every query head of the layer (all KV groups), one kept set for all the
    layer's KV heads, the most recent token always kept; float64 NumPy reference."""
    r = np.random.default_rng(5)
    L, K, g, T, hd, m = 2, 3, 2, 30, 8, 7
    past = mkv.Cache(jnp.asarray(r.standard_normal((L, K, T, hd))),
                     jnp.asarray(r.standard_normal((L, K, T, hd))), jnp.zeros((L, K, T)))
    queries = jnp.asarray(1.5 * r.standard_normal((L, K * g, 4, hd)))
    out = E.compress(E.resolve("tova"), past, m, queries)
    for i in range(L):
        score = np.zeros(T)
        for h in range(K * g):  # query head h reads KV head h // g
            s = np.asarray(past.keys[i, h // g]) @ np.asarray(queries[i, h, -1]) / np.sqrt(hd)
            e = np.exp(s - s.max())
            score += e / e.sum() / (K * g)
        order = [T - 1] + [j for j in np.argsort(-score, kind="stable") if j != T - 1]
        want = np.sort(order[:m])
        for h in range(K):
            got = [int(np.flatnonzero((np.asarray(past.keys[i, h]) == row).all(1))[0])
                   for row in np.asarray(out.keys[i, h])[np.isfinite(np.asarray(out.logw[i, h]))]]
            assert got == want.tolist()
    per_group = [sorted(np.asarray(mkv.rules.get("tova")(
        mkv.Cache(past.keys[0, h], past.values[0, h]), m, queries[0, g * h:g * h + g]).kept).tolist())
        for h in range(K)]
    assert len({tuple(x) for x in per_group}) > 1  # the layer's set is not each group's own



def test_generation_stops_once_the_answer_is_complete(smollm2, passkey):
    """``generate(until=...)`` returns the uninterrupted greedy tokens up to the first prefix that
    satisfies it; ``read`` stops there once the answer is in the text, with the score of the
    whole greedy answer (RULER's metrics only grow as text is appended)."""
    prep, full = passkey
    ids = list(prep.prefix[-40:])
    whole = M.generate(smollm2, ids, 10, stop=-1)
    cut = M.generate(smollm2, ids, 10, stop=-1, until=lambda toks: len(toks) >= 4)
    assert cut == whole[:4] and len(whole) == 10
    assert full.score == 1.0 and prep.task.answers[0] in full.generated
    longer = E.read(smollm2, prep, E.prefill(smollm2, prep.prefix), max_new=16)
    assert longer.generated == full.generated  # solved before 8 tokens: nothing more is read
    text = smollm2.tokenizer.decode(M.generate(smollm2, prep.cont[:len(prep.cont) - prep.answer],
                                               16, past=E.prefill(smollm2, prep.prefix).past,
                                               start=len(prep.prefix)), skip_special=True)
    assert text.startswith(full.generated) and tasks.score(prep.task, text) == full.score


def test_rules_that_read_the_whole_prefix_get_every_query(smollm2, passkey):
    """``prefill(every_query=True)`` keeps the queries of every prompt token (equal to a forward
    pass's), Expected Attention (``Rule.whole_prefix``) is given them all, SnapKV the observed
    ones, and the one-shot summary equals the rule called on those queries directly."""
    prep, _ = passkey
    n = len(prep.prefix)
    every = E.prefill(smollm2, prep.prefix, observed=16, every_query=True)
    few = E.prefill(smollm2, prep.prefix, observed=16)
    out = M.forward(smollm2.params, smollm2.config, jnp.asarray(prep.prefix), n_queries=n)
    np.testing.assert_allclose(np.asarray(every.queries), np.asarray(out.queries), atol=1e-4)
    ea = E.resolve("expected_attention", theta=smollm2.config.rope_theta)
    snap = E.resolve("snapkv")
    assert E.rule_queries(every, ea).shape[2] == n
    np.testing.assert_array_equal(np.asarray(E.rule_queries(every, snap)),
                                  np.asarray(every.queries[:, :, -16:]))
    np.testing.assert_allclose(np.asarray(E.rule_queries(few, snap)),
                               np.asarray(E.rule_queries(every, snap)), atol=1e-5)
    key = jax.random.split(jax.random.PRNGKey(0))[1]
    got = E.compress_state(every, ea, 40).past
    want = E.compress(ea, every.past, 40, every.queries, key)
    np.testing.assert_array_equal(np.asarray(got.keys), np.asarray(want.keys))
    observed_only = E.compress(ea, every.past, 40, every.queries[:, :, -16:], key)
    assert not np.array_equal(np.asarray(got.keys), np.asarray(observed_only.keys))
