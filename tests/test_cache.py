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
def test_impossible_budget(budget, msg):
    c = cache()
    with pytest.raises(ValueError, match=msg):
        mkv.bounds.width_lower(jnp.ones((3, 4)), c, budget)


def test_not_a_cache():
    with pytest.raises(ValueError, match=r"expected a minimaxkv.Cache, got tuple"):
        mkv.attend(jnp.ones((1, 4)), (jnp.ones((5, 4)), jnp.ones((5, 3))))


def test_summary_dimension_mismatch():
    c = cache()
    s = mkv.Cache(jnp.ones((2, 4)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"value dimension 2 differs"):
        mkv.risk(jnp.ones((2, 4)), c, s)


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
