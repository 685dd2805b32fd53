"""Synthetic families: shapes, and the compressibility each family is built to have."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import compressibility as cm, synthetic


@pytest.mark.parametrize("family", sorted(synthetic.FAMILIES))
def test_shapes_and_positions(family):
    inst = synthetic.make(family, jax.random.PRNGKey(0), n=24, d=8, dv=3, p=5)
    assert inst.cache.keys.shape == (24, 8) and inst.cache.values.shape == (24, 3)
    assert inst.queries.shape == (5, 8)
    np.testing.assert_array_equal(inst.key_pos, np.arange(24))
    np.testing.assert_array_equal(inst.query_pos, np.arange(24, 29))
    mkv.validate(inst.cache)
    assert inst.theta == (100.0 if family == "recency" else 0.0)  # the base it was built with


def test_rope_base_zero_is_no_rotation(rng):
    """theta = 0 (a cache without RoPE) rotates by the identity at every position; the
    recency family built at a base reports it and its keys are that base's rotation."""
    x = jnp.asarray(rng.normal(size=(5, 8)))
    np.testing.assert_array_equal(np.asarray(mkv.rope.apply(x, jnp.arange(5) * 97, 0.0)),
                                  np.asarray(x))
    np.testing.assert_array_equal(np.asarray(mkv.rope.rotations(jnp.arange(3), 8, 0.0)),
                                  np.broadcast_to(np.eye(8), (3, 8, 8)))
    with pytest.raises(ValueError, match="RoPE base"):
        mkv.rope.apply(x, jnp.arange(5), 0.5)
    st = synthetic.stream(jax.random.PRNGKey(0), T=16, d=8, dv=2, theta=500.0)
    assert st.theta == 500.0 and st.convention == "half"


def _eps_rank(family, seed=0, **kw):
    inst = synthetic.make(family, jax.random.PRNGKey(seed), n=64, d=16, dv=8, p=64,
                          dtype=jnp.float64, **kw)
    return cm.eps_rank(cm.spectrum(inst.queries, inst.cache), 0.05)


def test_compressibility_ordering():
    """epsilon-rank (5%) averaged over 3 seeds: lookup > isotropic > clustered, low_rank."""
    r = {f: np.mean([_eps_rank(f, s) for s in range(3)])
         for f in ("lookup", "isotropic", "clustered", "low_rank")}
    assert r["lookup"] > r["isotropic"] > max(r["clustered"], r["low_rank"]), r


def test_power_law_alpha_controls_decay():
    ranks = [np.mean([_eps_rank("power_law", s, alpha=a) for s in range(3)])
             for a in (0.0, 1.5, 4.0)]
    assert ranks[0] > ranks[1] > ranks[2], ranks


def test_heavy_hitters_collect_mass():
    inst = synthetic.heavy(jax.random.PRNGKey(1), n=64, d=16, dv=4, p=32, sinks=2, hitters=4)
    top = cm.top_mass(inst.queries, inst.cache, 6)
    pm = np.asarray(mkv.attention_weights(inst.queries, inst.cache))
    special = pm[:, :2].sum(1)
    assert float(jnp.median(top)) > 0.8 and np.median(special) > 2 / 64 * 5


def test_recency_attention_decays_with_distance():
    inst = synthetic.recency(jax.random.PRNGKey(2), n=256, d=32, dv=4, p=16, theta=10000.0)
    pm = np.asarray(mkv.attention_weights(inst.queries, inst.cache))
    recent, old = pm[:, -32:].sum(1).mean(), pm[:, :32].sum(1).mean()
    assert recent > 2 * old, (recent, old)


def test_lookup_each_query_finds_its_key():
    inst = synthetic.lookup(jax.random.PRNGKey(3), n=16, d=16, dv=2, gap=8.0)
    pm = np.asarray(mkv.attention_weights(inst.queries, inst.cache))
    np.testing.assert_array_equal(pm.argmax(1), np.arange(16))
    a = np.exp(8.0) / (np.exp(8.0) + 15)
    np.testing.assert_allclose(np.diag(pm), a, rtol=1e-4)


def test_bad_family_arguments():
    with pytest.raises(ValueError, match="family"):
        synthetic.make("nope", jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="n: expected a positive int"):
        synthetic.isotropic(jax.random.PRNGKey(0), n=0)
    with pytest.raises(ValueError, match="clusters"):
        synthetic.clustered(jax.random.PRNGKey(0), n=4, clusters=9)
