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


def test_I4_block_bounds_dominate_logits(rng):
    """I4 (a): the centroid + radius bound of each block is >= every logit of the block (float64),
    with atoms of weight zero ignored and -inf for a block of weight-zero atoms only."""
    from minimaxkv.attention import block_bounds

    nb, c, d = 6, 16, 8
    keys = rng.normal(size=(nb, c, d)) * rng.uniform(0.1, 10, size=(nb, 1, 1)) + rng.normal(size=d)
    logw = rng.normal(size=(nb, c))
    logw[1, :5] = -np.inf  # dead atoms far from the rest must not enter the radius
    keys[1, :5] += 1e3
    logw[4] = -np.inf
    qs = 3 * rng.normal(size=(10, d))
    beta = np.asarray(block_bounds(jnp.asarray(qs), jnp.asarray(keys), jnp.asarray(logw)))
    s = np.einsum("pd,tcd->tpc", qs, keys) + logw[:, None, :]
    mx = s.max(axis=2)
    live = np.isfinite(mx)
    assert np.all(beta[live] >= mx[live] - 1e-9 * np.abs(mx[live]))
    assert np.all(np.isneginf(beta[4])) and not live[4].any()
    # the bound follows the live atoms only: block 1's is as tight as the same block without them
    sub = block_bounds(jnp.asarray(qs), jnp.asarray(keys[1:2, 5:]), jnp.asarray(logw[1:2, 5:]))
    np.testing.assert_allclose(beta[1], np.asarray(sub)[0], rtol=1e-12)


def _gap_cache(rng, gap, n=64, d=8, dv=3):
    """float32 keys = small part + (+-R) along a direction orthogonal to the query, so the I4 bound
    exceeds every logit by about ``gap`` while the logits themselves stay O(1)."""
    q = np.zeros((1, d))
    q[0, 0] = 8.0
    k = 0.3 * rng.normal(size=(n, d))
    k[:, 1] = 0.0
    k[:, 1] = np.where(np.arange(n) % 2, 1.0, -1.0) * gap / (8.0 * d ** -0.5)
    v = rng.normal(size=(n, dv))
    b = np.where(np.arange(n) % 3 == 0, -60.0, 0.0)  # atoms whose exponentials flush at gap 95
    return q, k, v, b


@pytest.mark.parametrize("gap,accepted", [(10.0, True), (95.0, True), (150.0, False)])
def test_I4_bounded_stabiliser_and_its_guard(rng, gap, accepted):
    """I4 (b, c): with the bound above every logit by ``gap`` and the shift S of float32
    (44.4 here), the largest exponent is about -(gap - S); the guard's floor at n = 64 is
    e^-65.8, so it accepts up to gap ~ 110, where the atoms of weight e^-60 already flush to zero,
    and the result is float64-exact to float32 rounding; beyond it the guard refuses (the
    running-max path then gives the same exact answer)."""
    from minimaxkv import attention

    q, k, v, b = _gap_cache(rng, gap)
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, b)]
    chunk = 16
    blocks = (f32[1].reshape(4, chunk, -1), f32[2].reshape(4, chunk, -1),
              f32[3].reshape(4, chunk), None)
    qs = f32[0] * attention.default_scale(q.shape[1])
    beta = attention.block_bounds(qs, blocks[0], blocks[2])
    s64 = (q * q.shape[1] ** -0.5) @ np.asarray(f32[1], np.float64).T + b
    assert float(beta.max()) - s64.max() == pytest.approx(gap, abs=2.0)  # the construction
    (a, lz), ok = attention._online_bounded(qs, blocks)
    assert bool(ok) is accepted
    ra, rlz, _ = np_attention(*(np.asarray(x, np.float64) for x in f32))
    if accepted:
        np.testing.assert_allclose(a, ra, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(lz, rlz, rtol=1e-5)
    a2, lz2 = mkv.attend_and_mass(f32[0], mkv.Cache(*f32[1:]), chunk=chunk)
    np.testing.assert_allclose(a2, ra, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(lz2, rlz, rtol=1e-5)
