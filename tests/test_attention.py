"""Attention against a float64 NumPy reference; chunked == dense; stability; jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_attention

import minimaxkv as mkv


def rand_cache(rng, n=37, d=8, dv=5, logw=True):
    b = rng.normal(size=n) if logw else np.zeros(n)
    return rng.normal(size=(n, d)), rng.normal(size=(n, dv)), b


def test_dense_matches_numpy(rng):
    k, v, b = rand_cache(rng)
    q = 2 * rng.normal(size=(11, 8))
    a, lz = mkv.attend_and_mass(q, mkv.Cache(k, v, b))
    ra, rlz, _ = np_attention(q, k, v, b)
    np.testing.assert_allclose(a, ra, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lz, rlz, rtol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 10, 36, 37, 100])
@pytest.mark.parametrize("causal", [False, True])
def test_chunked_equals_dense(rng, chunk, causal):
    k, v, b = rand_cache(rng)
    q = 3 * rng.normal(size=(9, 8))
    kw = dict(query_pos=jnp.asarray(rng.integers(0, 37, 9))) if causal else {}
    a, lz = mkv.attend_and_mass(q, mkv.Cache(k, v, b), chunk=chunk, **kw)
    ra, rlz, _ = np_attention(q, k, v, b, qpos=kw.get("query_pos"))
    np.testing.assert_allclose(a, ra, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(lz, rlz, rtol=1e-11)


def test_causal_matches_numpy_with_key_positions(rng):
    k, v, b = rand_cache(rng, n=20)
    kpos = rng.permutation(20)
    qpos = np.array([0, 5, 19, 30])
    a = mkv.attend(rng.normal(size=(4, 8)) * 0 + 1, mkv.Cache(k, v, b), query_pos=qpos,
                   key_pos=kpos)
    ra, _, _ = np_attention(np.ones((4, 8)), k, v, b, qpos=qpos, kpos=kpos)
    np.testing.assert_allclose(a, ra, rtol=1e-12, atol=1e-13)


def test_query_seeing_nothing(rng):
    k, v, b = rand_cache(rng, n=6)
    for chunk in (None, 2):
        a, lz = mkv.attend_and_mass(np.ones((2, 8)), mkv.Cache(k, v, b),
                                    query_pos=np.array([-1, 2]), chunk=chunk)
        assert float(jnp.abs(a[0]).max()) == 0.0 and float(lz[0]) == -np.inf
        ra, rlz, _ = np_attention(np.ones((1, 8)), k[:3], v[:3], b[:3])
        np.testing.assert_allclose(a[1], ra[0], rtol=1e-12)


@pytest.mark.parametrize("chunk", [None, 8])
def test_huge_logits_stable(rng, chunk):
    """Logits of magnitude 1e4 in float32: max-stabilised, so no overflow and exact weights."""
    n, d = 30, 4
    k = rng.normal(size=(n, d))
    q = rng.normal(size=(5, d))
    c32 = mkv.Cache(jnp.asarray(k, jnp.float32), jnp.asarray(rng.normal(size=(n, 3)), jnp.float32))
    big = jnp.asarray(q * 1e4, jnp.float32)  # logits of magnitude ~1e4
    a, lz = mkv.attend_and_mass(big, c32, chunk=chunk)
    ra, rlz, _ = np_attention(np.asarray(big, np.float64), np.asarray(c32.keys, np.float64),
                              np.asarray(c32.values, np.float64))
    assert np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(lz)).all()
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, ra, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(lz, rlz, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(rng, dtype):
    n, d, dv = 3000, 64, 64
    k = jnp.asarray(rng.normal(size=(n, d)), dtype)
    v = jnp.asarray(rng.normal(size=(n, dv)), dtype)
    q = jnp.asarray(3 * rng.normal(size=(4, d)), dtype)
    a = mkv.attend(q, mkv.Cache(k, v), chunk=512)
    assert a.dtype == jnp.float32
    ra, _, _ = np_attention(*(np.asarray(x, np.float64) for x in (q, k, v)))
    # the inputs are exactly representable; only float32 accumulation error remains
    np.testing.assert_allclose(a, ra, rtol=1e-4, atol=1e-5)


def test_combine_is_I1_for_disjoint_blocks(rng):
    k, v, b = rand_cache(rng, n=30)
    q = rng.normal(size=(7, 8))
    parts = [slice(0, 4), slice(4, 17), slice(17, 30)]
    outs, lzs = zip(*(mkv.attend_and_mass(q, mkv.Cache(k[s], v[s], b[s])) for s in parts))
    a, lz = mkv.combine(jnp.stack(outs), jnp.stack(lzs))
    ra, rlz, _ = np_attention(q, k, v, b)
    np.testing.assert_allclose(a, ra, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lz, rlz, rtol=1e-12)


def test_attention_weights_rows(rng):
    k, v, b = rand_cache(rng)
    q = rng.normal(size=(6, 8))
    pm = mkv.attention_weights(q, mkv.Cache(k, v, b))
    np.testing.assert_allclose(pm, np_attention(q, k, v, b)[2], rtol=1e-12, atol=1e-15)


def test_vmap_over_heads_equals_loop(rng):
    H, n, d, dv = 3, 12, 4, 2
    k = jnp.asarray(rng.normal(size=(H, n, d)))
    v = jnp.asarray(rng.normal(size=(H, n, dv)))
    q = jnp.asarray(rng.normal(size=(H, 5, d)))
    batched = jax.vmap(lambda q, k, v: mkv.attend(q, mkv.Cache(k, v)))(q, k, v)
    for h in range(H):
        np.testing.assert_allclose(batched[h], np_attention(q[h], k[h], v[h])[0], rtol=1e-12)


def test_jit_equals_eager(rng):
    k, v, b = rand_cache(rng)
    q = rng.normal(size=(6, 8))
    c = mkv.Cache(jnp.asarray(k), jnp.asarray(v), jnp.asarray(b))
    f = jax.jit(lambda q, c: mkv.attend(q, c, chunk=5))
    np.testing.assert_allclose(f(q, c), mkv.attend(q, c), rtol=1e-12, atol=1e-13)


def test_custom_scale(rng):
    k, v, b = rand_cache(rng)
    q = rng.normal(size=(3, 8))
    a = mkv.attend(q, mkv.Cache(k, v, b), scale=0.7)
    np.testing.assert_allclose(a, np_attention(q, k, v, b, scale=0.7)[0], rtol=1e-12)
