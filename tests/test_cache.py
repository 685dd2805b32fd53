"""Bad input of every kind gets a ValueError naming the problem."""

import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv


def cache(n=5, d=4, dv=3):
    rng = np.random.default_rng(0)
    return mkv.Cache(jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(rng.normal(size=(n, dv))))


def test_default_logw_is_zero():
    c = cache()
    assert c.logw.shape == (5,) and float(jnp.abs(c.logw).max()) == 0.0


def test_wrong_rank_keys():
    with pytest.raises(ValueError, match=r"keys: expected 2 axes"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.ones((5, 4, 1)), jnp.ones((5, 3))))


def test_mismatched_atoms():
    with pytest.raises(ValueError, match=r"keys have 5 atoms but values have 6"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.ones((5, 4)), jnp.ones((6, 3))))


def test_query_dimension_mismatch():
    with pytest.raises(ValueError, match=r"queries: expected shape \[\*, 4\], got \(2, 3\)"):
        mkv.attend(jnp.ones((2, 3)), cache())


def test_logw_shape():
    with pytest.raises(ValueError, match=r"logw: expected shape \[5\], got \(4,\)"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.ones((5, 4)), jnp.ones((5, 3)), jnp.zeros(4)))


def test_integer_dtype_rejected():
    with pytest.raises(ValueError, match=r"expected a floating-point array.*int"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.ones((5, 4), jnp.int32), jnp.ones((5, 3))))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_keys(bad):
    k = np.ones((5, 4))
    k[2, 1] = bad
    with pytest.raises(ValueError, match=r"keys: contains 1 non-finite"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.asarray(k), jnp.ones((5, 3))))


def test_nan_values():
    v = np.ones((5, 3))
    v[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"values: contains 1 non-finite entries \(NaN\)"):
        mkv.attend(jnp.ones((2, 4)), mkv.Cache(jnp.ones((5, 4)), jnp.asarray(v)))


def test_nan_queries():
    q = np.ones((2, 4))
    q[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"queries: contains 1 non-finite"):
        mkv.attend(jnp.asarray(q), cache())


def test_logw_minus_inf_allowed_plus_inf_not():
    c = cache()
    ok = mkv.Cache(c.keys, c.values, jnp.array([0.0, -jnp.inf, 0.0, 0.0, 0.0]))
    out = mkv.attend(jnp.ones((1, 4)), ok)
    assert np.isfinite(np.asarray(out)).all()
    with pytest.raises(ValueError, match=r"logw: contains 1 non-finite entries \(\+Inf\)"):
        mkv.attend(jnp.ones((1, 4)), mkv.Cache(c.keys, c.values, c.logw.at[1].set(jnp.inf)))


def test_empty_cache():
    with pytest.raises(ValueError, match=r"the cache is empty \(0 atoms\)"):
        mkv.attend(jnp.ones((1, 4)), mkv.Cache(jnp.ones((0, 4)), jnp.ones((0, 3))))


def test_all_zero_weight_cache_is_empty():
    c = cache()
    with pytest.raises(ValueError, match=r"every atom has log-weight -inf"):
        mkv.attend(jnp.ones((1, 4)), mkv.Cache(c.keys, c.values, jnp.full(5, -jnp.inf)))


def test_no_queries():
    with pytest.raises(ValueError, match=r"at least one query"):
        mkv.attend(jnp.ones((0, 4)), cache())


@pytest.mark.parametrize("budget,msg", [(0, "at least 1"), (-2, "at least 1"),
                                        (6, "only n = 5"), (2.0, "Python int")])
@pytest.mark.unchecked  # users get the library's message (the annotation `budget: int` answers first)
def test_impossible_budget(budget, msg):
    c = cache()
    with pytest.raises(ValueError, match=msg):
        mkv.bounds.width_lower(jnp.ones((3, 4)), c, budget)


@pytest.mark.unchecked
def test_not_a_cache():
    with pytest.raises(ValueError, match=r"expected a minimaxkv.Cache, got tuple"):
        mkv.attend(jnp.ones((1, 4)), (jnp.ones((5, 4)), jnp.ones((5, 3))))


def test_summary_dimension_mismatch():
    c = cache()
    s = mkv.Cache(jnp.ones((2, 4)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"value dimension 2 differs"):
        mkv.risk(jnp.ones((2, 4)), c, s)


@pytest.mark.unchecked
def test_causal_positions_checked():
    c = cache()
    with pytest.raises(ValueError, match=r"query_pos: expected shape \(2,\)"):
        mkv.attend(jnp.ones((2, 4)), c, query_pos=jnp.arange(3))
    with pytest.raises(ValueError, match=r"integer token positions"):
        mkv.attend(jnp.ones((2, 4)), c, query_pos=jnp.ones(2))


def test_oracle_too_large():
    c = mkv.Cache(jnp.ones((17, 2)), jnp.ones((17, 1)))
    with pytest.raises(ValueError, match=r"n <= 16"):
        mkv.bounds.oracle(jnp.ones((2, 2)), c, 3)


def test_nbytes_counts_all_three_arrays():
    c = mkv.Cache(jnp.ones((5, 4), jnp.float32), jnp.ones((5, 3), jnp.float16))
    assert c.nbytes == 5 * 4 * 4 + 5 * 3 * 2 + 5 * 4


def test_checked_reports_nan_under_jit_where_plain_jit_returns_numbers():
    """Under a plain jax.jit a NaN key gives an attention output and a risk that look like
    numbers; mkv.checked reports the argument instead, allows -inf log-weights, and otherwise
    returns exactly what jax.jit returns."""
    import jax

    q = jnp.ones((2, 4))
    bad = mkv.Cache(jnp.ones((8, 4)).at[2, 1].set(jnp.nan), jnp.ones((8, 3)))
    summary = mkv.Cache(jnp.ones((2, 4)), jnp.ones((2, 3)))
    plain = jax.jit(lambda q, c: mkv.risk(q, c, summary))(q, bad)
    assert np.isfinite(plain)  # the silent case
    with pytest.raises(ValueError, match=r"argument 1\.keys holds NaN or Inf"):
        mkv.checked(lambda q, c: mkv.risk(q, c, summary))(q, bad)
    with pytest.raises(ValueError, match=r"argument 1\.values"):
        mkv.checked(mkv.attend)(q, bad._replace(keys=jnp.ones((8, 4)),
                                                values=jnp.ones((8, 3)).at[0, 0].set(jnp.inf)))
    with pytest.raises(ValueError, match=r"keyword \['scale'\]"):
        mkv.checked(mkv.attend)(q, summary, scale=jnp.asarray(jnp.nan))
    padded = mkv.Cache(jax.random.normal(jax.random.PRNGKey(0), (8, 4)), jnp.arange(24.0).reshape(8, 3),
                       jnp.zeros(8).at[3].set(-jnp.inf))
    np.testing.assert_array_equal(mkv.checked(mkv.attend)(q, padded), jax.jit(mkv.attend)(q, padded))
    with pytest.raises(ValueError, match="argument 1.logw"):
        mkv.checked(mkv.attend)(q, padded._replace(logw=padded.logw.at[0].set(jnp.inf)))
    with pytest.raises(ValueError, match="result holds NaN or Inf although the arguments"):
        mkv.checked(jnp.log)(-jnp.ones(3))


def test_non_numbers_from_finite_inputs_are_reported():
    """Overflow inside attention (float32 logits of 1e40) and a rule whose compiled function
    returns NaN: concrete calls raise instead of returning NaN outputs or summaries."""
    big = mkv.Cache(jnp.full((8, 4), 1e30, jnp.float32), jnp.ones((8, 3), jnp.float32))
    q = jnp.full((2, 4), 1e10, jnp.float32)
    small = mkv.Cache(jnp.ones((2, 4), jnp.float32), jnp.ones((2, 3), jnp.float32))
    with pytest.raises(ValueError, match="attend: the attention output holds NaN or Inf"):
        mkv.attend(q, big)
    with pytest.raises(ValueError, match="risk: the cache's attention output holds NaN"):
        mkv.risk(q, big, small)

    def compress(cache, budget, queries, key):
        c = mkv.Cache(cache.keys[:budget], cache.values[:budget] * jnp.nan, cache.logw[:budget])
        return mkv.Summary(c, jnp.arange(budget))

    rule = mkv.rules.Rule("nan_rule", compress)
    cache = mkv.Cache(jnp.ones((8, 4)), jnp.ones((8, 3)))
    with pytest.raises(ValueError, match=r"rule 'nan_rule': summary\.cache\.values holds NaN"):
        rule(cache, 4)


def test_live_bytes_count_keys_values_and_weights_of_real_atoms():
    """Bytes of a summary: (d + d_v + 1) numbers per atom of finite log-weight, over every head
    (d_v != d here; -inf padding costs nothing); by hand."""
    from minimaxkv.cache import live_atoms, live_bytes

    logw = np.zeros((2, 3, 5), np.float32)
    logw[0, 1, 3:] = -np.inf
    logw[1, 2, 0] = -np.inf
    c = mkv.Cache(np.zeros((2, 3, 5, 8), np.float32), np.zeros((2, 3, 5, 6), np.float32), logw)
    assert live_atoms(c) == 30 - 3
    assert live_bytes(c) == 27 * (8 + 6 + 1) * 4
    assert live_bytes(c, itemsize=2) == 27 * 15 * 2


def test_compact_drops_padding_and_keeps_every_output(rng):
    """Padding (-inf) in the middle and at the end of heads holding different numbers of atoms:
    the compacted cache holds each head's live atoms in order, is as wide as the fullest head,
    and gives every query the same attention output (float64 reference)."""
    from conftest import np_attention

    L, K, n, d = 2, 3, 9, 4
    keys, values, logw = (rng.standard_normal(s).astype(np.float32)
                          for s in ((L, K, n, d), (L, K, n, d), (L, K, n)))
    live = rng.random((L, K, n)) < 0.6
    live[0, 0] = True  # one full head: the width stays n
    live[1, 2] = False
    live[1, 2, [2, 7]] = True
    padded = mkv.Cache(jnp.asarray(keys), jnp.asarray(values),
                       jnp.asarray(np.where(live, logw, -np.inf)))
    got = mkv.cache.compact(padded)
    assert got.keys.shape == (L, K, n, d) and mkv.cache.live_atoms(got) == live.sum()
    cut = mkv.cache.compact(mkv.Cache(*(x[:, 1:] for x in padded)))
    assert cut.keys.shape[2] == live[:, 1:].sum(-1).max() < n
    q = rng.standard_normal((5, d))
    for i in range(L):
        for h in range(K):
            keep = np.flatnonzero(live[i, h])
            ok = np.isfinite(np.asarray(got.logw[i, h]))
            assert ok[:len(keep)].all() and not ok[len(keep):].any()
            np.testing.assert_array_equal(np.asarray(got.keys[i, h])[:len(keep)], keys[i, h, keep])
            want = np_attention(q, keys[i, h, keep], values[i, h, keep], logw[i, h, keep])[0]
            mine = np_attention(q, np.asarray(got.keys[i, h]), np.asarray(got.values[i, h]),
                                np.asarray(got.logw[i, h]))[0]
            np.testing.assert_allclose(mine, want, rtol=1e-12)
