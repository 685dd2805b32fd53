"""Second implementations from the field's reference library: kvpress's own presses on the same
SmolLM2 weights (``transformers`` reads the GGUF) and the same prompt as ours. Optional: these run
where torch, transformers, accelerate and kvpress are installed (``pip install torch==2.13.0
'transformers<5.3' accelerate kvpress``), and are skipped elsewhere."""

import importlib.util

import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import evaluate as E
from minimaxkv import kvzip
from minimaxkv import model as M

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("torch", "transformers", "accelerate", "kvpress")),
    reason="torch, transformers, accelerate and kvpress are optional")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """SmolLM2 in ``transformers``, saved as a folder with its tokenizer (KVzipPress loads the
    tokenizer from the model's ``name_or_path``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, folder = M.smollm2_path(), tmp_path_factory.mktemp("hf")
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                         dtype=torch.float32).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


def prompt(smollm2, family: str, tokens: int) -> np.ndarray:
    tok = smollm2.tokenizer
    task = mkv.tasks.make(family, tokens, lambda t: len(tok.encode(t)), chat=tok.chat)
    return np.asarray(tok.encode(task.context), np.int32)


def run_press(hf, press, ids):
    """Prefill ``ids`` under ``press`` as kvpress's pipeline does."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode(), press(hf):
        hf(input_ids=torch.tensor(ids[None], dtype=torch.long), past_key_values=DynamicCache())


def test_kvzip_scores_match_kvzippress(smollm2, hf):
    """kvpress's ``KVzipPress`` on a chat-formatted prompt of two passes; its scores are read
    where it computes them (``score_val``, as it compresses: after it has raised the four sinks
    above every other score)."""
    from kvpress import KVzipPress

    ids = prompt(smollm2, "niah_single_2", 2600)
    press = KVzipPress(compression_ratio=0.5)
    seen = {}
    post = press.compress_post
    press.compress_post = lambda model: (post(model), seen.setdefault(
        "score", press.score_val.clone()))
    run_press(hf, press, ids)
    theirs = seen["score"][:, 0].float().numpy()
    ours = kvzip.scores(smollm2, E.prefill(smollm2, ids).past, ids)
    assert len(kvzip.passes(smollm2.tokenizer, ids)) == 2 and ours.shape == theirs.shape
    assert (theirs[:, :, :4] > theirs[:, :, 4:].max()).all()  # kvpress's sinks: max + 1
    np.testing.assert_allclose(ours[:, :, 4:], theirs[:, :, 4:], atol=2e-3)
    for m in (len(ids) // 2, len(ids) // 8):
        mine, kvp = (kvzip.keep(s, m) for s in (ours, theirs))
        assert mine.sum() == kvp.sum() == 90 * m
        assert (mine & kvp).sum() >= 0.99 * 90 * m


def test_expected_attention_scores_match_kvpress(smollm2, hf):
    """kvpress's ``ExpectedAttentionPress`` scores every layer's cache from the statistics of
    the whole prefill's queries (after the sinks): ours, given every query
    (``Rule.whole_prefix``), agrees, and so does AdaKV's allocation on them
    (``AdaKVPress``'s masked pairs against ``expected_attention@adakv``'s kept ones)."""
    from kvpress import AdaKVPress, ExpectedAttentionPress

    ids = prompt(smollm2, "niah_single_1", 1500)
    n = len(ids)
    press = ExpectedAttentionPress(compression_ratio=0.5)
    scores = []
    score = press.score

    def record(*args, **kwargs):
        out = score(*args, **kwargs)
        scores.append(out[0].float().numpy())
        return out

    press.score = record
    run_press(hf, press, ids)
    theirs = np.stack(scores)  # [L, Hkv, n]
    state = E.prefill(smollm2, ids, every_query=True)
    rule = E.resolve("expected_attention", theta=smollm2.config.rope_theta)
    q = E.rule_queries(state, rule)
    L, K = theirs.shape[:2]
    g = q.shape[1] // K
    ours = np.stack([[np.asarray(rule.score(
        mkv.Cache(state.past.keys[i, h], state.past.values[i, h], state.past.logw[i, h]),
        q[i, h * g:(h + 1) * g], None)) for h in range(K)] for i in range(L)])
    np.testing.assert_allclose(ours[:, :, 4:], theirs[:, :, 4:], rtol=2e-2,
                               atol=1e-3 * theirs[:, :, 4:].max())
    # AdaKV: kvpress masks the pairs it prunes; we keep the others
    ada = AdaKVPress(ExpectedAttentionPress(compression_ratio=0.75))
    run_press(hf, ada, ids)
    m = mkv.budgets.from_compression_ratio(0.75, n)
    got = E.compress(E.resolve("expected_attention@adakv", theta=smollm2.config.rope_theta),
                     state.past, m, q)
    same = total = 0
    for i, layer in enumerate(hf.model.layers):
        _, heads, pos = (x.numpy() for x in layer.self_attn.masked_key_indices)
        kvp = np.ones((K, n), bool)
        kvp[heads, pos] = False
        for h in range(K):
            keys = np.asarray(got.keys[i, h])[np.isfinite(np.asarray(got.logw[i, h]))]
            mine = np.isin(np.asarray(state.past.keys[i, h, :, 0]), keys[:, 0])
            same += (mine & kvp[h]).sum()
            total += kvp[h].sum()
    assert total == L * K * m and same >= 0.98 * total
