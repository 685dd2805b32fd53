"""The causal driver against a direct NumPy simulation, and its memory bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention

import minimaxkv as mkv
from minimaxkv import causal, rules


def small_stream(T=40, seed=0):
    st = mkv.synthetic.stream(jax.random.PRNGKey(seed), T=T, d=8, dv=3, dtype=jnp.float64)
    return np.asarray(st.keys), np.asarray(st.values), np.asarray(st.queries)


def test_window_rule_matches_direct_simulation():
    k, v, q = small_stream()
    T, budget, block = 40, 12, 8
    res = causal.run(rules.get("window"), k, v, q, budget, prefill=24, block=block)
    ref = np.zeros(T)
    for t in range(T):
        start = (t // block) * block  # the open block starts here
        first = max(0, start - budget) if start > budget else 0  # summary = last `budget` closed
        exact = np_attention(q[t:t + 1], k[: t + 1], v[: t + 1])[0]
        comp = np_attention(q[t:t + 1], k[first: t + 1], v[first: t + 1])[0]
        ref[t] = ((exact - comp) ** 2).sum()
    np.testing.assert_allclose(res.errors, ref, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res.prefill_risk, ref[:24].mean(), rtol=1e-9)
    np.testing.assert_allclose(res.decode_risk, ref[24:].mean(), rtol=1e-9)
    atoms = np.array([min((t // block) * block, budget) + t % block + 1 for t in range(T)])
    np.testing.assert_array_equal(res.nbytes, atoms * (8 + 3 + 1) * 8)


def test_no_compression_when_everything_fits():
    k, v, q = small_stream()
    res = causal.run(rules.get("snapkv"), k, v, q, 40, prefill=40, block=8)
    assert res.compressions == 0 and float(np.abs(res.errors).max()) < 1e-24


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "attention_matching", "gvote",
                                  "minimax", "kmeans_merge"])
def test_memory_stays_within_budget_plus_block(name):
    k, v, q = small_stream(T=96, seed=1)
    rule = rules.get(name, **({"block": 16} if name == "minimax" else {}))
    res = causal.run(rule, k, v, q, 24, prefill=64, block=16, key=jax.random.PRNGKey(0))
    assert res.nbytes.max() <= (24 + 16) * (8 + 3 + 1) * 8
    assert res.compressions == 96 // 16 - 2  # every closed block beyond the first fits
    assert np.isfinite(res.errors).all() and res.decode_risk >= 0


def test_bad_arguments():
    k, v, q = small_stream()
    with pytest.raises(ValueError, match="prefill"):
        causal.run(rules.get("window"), k, v, q, 8, prefill=0)
    with pytest.raises(ValueError, match="queries: expected shape"):
        causal.run(rules.get("window"), k, v, q[:, :4], 8, prefill=8)
