"""Every KV head in one program (rules.base.compress_heads) against the rule on each head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import rules


@pytest.mark.parametrize("name", ["snapkv", "expected_attention", "knorm", "h2o", "snapkv+fit",
                                  "kmeans_merge", "minimax"])
def test_compress_heads_equals_the_rule_on_each_head(name):
    """One program for a batch of heads (lax.map, and vmap) gives each head the summary the rule
    gives it alone (float64: the same kept atoms, the same numbers to 1e-9); per-head budgets
    through the traced-budget form equal the padded rule."""
    with jax.enable_x64(True):
        _compress_heads_vs_each_head(name)


def _compress_heads_vs_each_head(name):
    from minimaxkv.rules.base import compress_heads

    r = np.random.default_rng(4)
    B, n, d, g, p, m = 5, 40, 8, 2, 6, 12
    caches = mkv.Cache(jnp.asarray(r.standard_normal((B, n, d))),
                       jnp.asarray(r.standard_normal((B, n, d))),
                       jnp.asarray(0.3 * r.standard_normal((B, n))))
    q = jnp.asarray(1.5 * r.standard_normal((B, g, p, d)))
    keys = jax.random.split(jax.random.PRNGKey(3), B)
    rule = rules.get(name, theta=1e4)
    one = [rule(mkv.Cache(*(x[b] for x in caches)), m, q[b], keys[b]) for b in range(B)]
    for vectorize in (False, True) if name != "minimax" else (False,):  # (its vmap: not used)
        got = compress_heads(rule, caches, m, q, keys, vectorize=vectorize)
        for b in range(B):
            if one[b].kept is not None:
                np.testing.assert_array_equal(got.kept[b], one[b].kept)
            for a, want in zip(got.cache, one[b].cache):
                np.testing.assert_allclose(a[b], want, rtol=1e-9, atol=1e-9)
    if rule.upto is None:
        with pytest.raises(ValueError, match="traced-budget"):
            compress_heads(rule, caches, np.full(B, m), q, keys, capacity=16)
        return
    sizes = np.array([4, 16, 9, 12, 1])
    got = compress_heads(rule, caches, sizes, q, keys, capacity=16)
    for b in range(B):
        want = rule.padded(mkv.Cache(*(x[b] for x in caches)), 16, int(sizes[b]), q[b], keys[b])
        finite = np.isfinite(np.asarray(want.cache.logw))
        np.testing.assert_array_equal(np.isfinite(np.asarray(got.cache.logw[b])), finite)
        np.testing.assert_allclose(got.cache.keys[b][finite], want.cache.keys[finite], atol=1e-9)


def test_compress_heads_checks_its_inputs():
    from minimaxkv.rules.base import compress_heads

    c = mkv.Cache(jnp.ones((2, 5, 4)), jnp.ones((2, 5, 4)), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="caches.keys: contains 1 non-finite"):
        compress_heads(rules.get("knorm"), c._replace(keys=c.keys.at[1, 2, 0].set(jnp.nan)), 2)
    with pytest.raises(ValueError, match="a head is empty"):
        compress_heads(rules.get("knorm"), c._replace(logw=c.logw.at[1].set(-jnp.inf)), 2)
    with pytest.raises(ValueError, match="query-aware"):
        compress_heads(rules.get("snapkv"), c, 2)
    with pytest.raises(ValueError, match="one per head"):
        compress_heads(rules.get("knorm"), c, [1, 2, 3], capacity=3)
    with pytest.raises(ValueError, match="budget"):
        compress_heads(rules.get("knorm"), c, 9)
