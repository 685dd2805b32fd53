"""Predictors of a head's risk from what a rule sees (docs/theory.md §10, P1-P3), and the
statistics that judge them.

References: float64 NumPy (the blind map built from an eigendecomposition, not an SVD, and applied
as a summary's outputs; Gamma summed query by query), RoPE rotations written out, least-squares
partial correlation, scipy's bootstrap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from conftest import np_attention

import minimaxkv as mkv
from minimaxkv import analyze, predict, rope


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _mean_value(v, b):
    w = np.exp(b - b.max())
    return (w / w.sum()) @ v


def _head(seed=0, n=40, d=8, dv=5, g=2, p=8, logw=True):
    r = np.random.default_rng(seed)
    k = r.standard_normal((n, d))
    v = r.standard_normal((n, dv)) + 0.5
    b = 0.3 * r.standard_normal(n) if logw else np.zeros(n)
    obs = 1.4 * r.standard_normal((g, p, d))
    return mkv.Cache(jnp.asarray(k), jnp.asarray(v), jnp.asarray(b)), jnp.asarray(obs)


def _blind_numpy(qf, wf, qj, wj, cache, m, tau):
    """Relative risk under (qj, wj) of the summary answering vbar + p(q)^T Pi_m V_c, Pi_m from
    the eigenvectors of X_F^T X_F, as outputs against the exact attention."""
    k, v, b = (np.asarray(x, np.float64) for x in cache)
    pf = np_attention(qf, k, v, b, tau)[2]
    pj = np_attention(qj, k, v, b, tau)[2]
    xf = np.sqrt(np.asarray(wf))[:, None] * pf
    ev, vec = np.linalg.eigh(xf.T @ xf)
    top = vec[:, np.argsort(ev)[::-1][:m]]
    vbar = _mean_value(v, b)
    vc = v - vbar
    exact = pj @ v
    approx = vbar + pj @ (top @ (top.T @ vc))
    wj = np.asarray(wj)
    num = (wj * ((approx - exact) ** 2).sum(1)).sum()
    den = (wj * ((exact - vbar) ** 2).sum(1)).sum()
    return num / den


@pytest.mark.parametrize("m", [1, 4, 11])
def test_P1_blind_map_risk_is_the_maps_relative_risk(m):
    """P1: the blind risk is the relative risk of the map v -> vbar + p^T Pi_m V_c judged on
    another law, against float64 NumPy (projector from an eigendecomposition); under its own law
    it is the singular-value tail weighted by the centred values (P1's identity)."""
    cache, _ = _head()
    r = np.random.default_rng(1)
    qf, qj = r.standard_normal((30, 8)) * 1.3, r.standard_normal((12, 8)) * 1.3
    wf = r.random(30)
    wf /= wf.sum()
    fit, judge = mkv.queries.QuerySet(jnp.asarray(qf), jnp.asarray(wf)), mkv.queries.empirical(qj)
    tau = 8 ** -0.5
    got = predict.blind_map_risk(fit, judge, cache, [m])
    ref = _blind_numpy(qf, wf, qj, np.full(12, 1 / 12), cache, m, tau)
    assert float(got[0]) == pytest.approx(ref, rel=1e-9)
    # under its own law: sum_{i>m} s_i^2 |r_i^T V_c|^2 / sum_i s_i^2 |r_i^T V_c|^2
    own = predict.blind_map_risk(fit, fit, cache, [m])
    k, v, b = (np.asarray(x) for x in cache)
    x = np.sqrt(wf)[:, None] * np_attention(qf, k, v, b, tau)[2]
    _, s, rt = np.linalg.svd(x, full_matrices=False)
    vc = v - _mean_value(v, b)
    e = s ** 2 * ((rt @ vc) ** 2).sum(1)
    assert float(own[0]) == pytest.approx(e[m:].sum() / e.sum(), rel=1e-9)
    assert float(own[0]) == pytest.approx(_blind_numpy(qf, wf, qf, wf, cache, m, tau), rel=1e-9)


def test_P2prime_gamma_tail_against_query_by_query_sum():
    cache, _ = _head(2, logw=False)
    r = np.random.default_rng(3)
    q = r.standard_normal((9, 8))
    w = r.random(9)
    w /= w.sum()
    law = mkv.queries.QuerySet(jnp.asarray(q), jnp.asarray(w))
    k, v = np.asarray(cache.keys), np.asarray(cache.values)
    gam = np.zeros((40, 40))
    for qi, wi in zip(q, w):
        p = np_attention(qi[None], k, v)[2][0]
        phi = p[:, None] * (v - p @ v)
        gam += wi * phi @ phi.T
    ev = np.sort(np.linalg.eigvalsh(gam))[::-1]
    got = predict.gamma_tail(law, cache, [1, 5, 30])
    np.testing.assert_allclose(np.asarray(got), [ev[m:].sum() / ev.sum() for m in (1, 5, 30)],
                               rtol=1e-8)


@pytest.mark.parametrize("a, c", [(3.0, 10.0), (-0.2, -4.0)])
def test_P2_every_predictor_invariant_under_value_shift_and_scale(a, c):
    """P2: v -> a v + c (a != 0, c a vector) leaves every predictor unchanged (float64)."""
    cache, obs = _head(4)
    shift = c * np.linspace(-1, 1, cache.values.shape[1])
    moved = cache._replace(values=a * cache.values + jnp.asarray(shift))
    key = jax.random.PRNGKey(5)
    base = predict.predictors(cache, obs, [3, 10], key, theta=100.0)
    again = predict.predictors(moved, obs, [3, 10], key, theta=100.0)
    for name in predict.PREDICTORS:
        np.testing.assert_allclose(again[name], base[name], rtol=1e-7, atol=1e-12,
                                   err_msg=name)
    assert base["heldout"][0] > base["heldout"][1] > 0  # a real, moving quantity


def test_P3_predictors_read_no_probe():
    """P3: analyze_head's predictors are the same when the probes are replaced by other queries
    (and the measured risks are not)."""
    cache, obs = _head(6)
    r = np.random.default_rng(7)
    probes = jnp.asarray(r.standard_normal((20, 8)))
    case = analyze.HeadCase(cache, obs, probes, None, 100.0)
    other = case._replace(probes=jnp.asarray(3 * r.standard_normal((20, 8))))
    chosen = {"snapkv": mkv.rules.get("snapkv")}
    key = jax.random.PRNGKey(0)
    one = analyze.analyze_head(case, [4, 12], chosen, key=key, diagnostics=False)
    two = analyze.analyze_head(other, [4, 12], chosen, key=key, diagnostics=False)
    assert one["predicted"] == two["predicted"]
    assert one["relative"] != two["relative"]
    assert one["blind_on_probes"] != two["blind_on_probes"]  # the ceiling does read them
    k_pred = jax.random.fold_in(key, 1)
    law = predict.fitted_law(cache, obs, jax.random.split(k_pred)[0], theta=100.0, draws=256)
    ceiling = predict.blind_map_risk(law, mkv.queries.empirical(probes), cache, [4, 12])
    np.testing.assert_allclose(one["blind_on_probes"], np.asarray(ceiling), rtol=1e-12)
    np.testing.assert_allclose(one["predicted"]["blind"],
                               np.asarray(predict.blind_map_risk(law, law, cache, [4, 12])),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="pass key="):
        analyze.analyze_head(case, [4], chosen)
    with pytest.raises(ValueError, match="RoPE"):
        analyze.analyze_head(case._replace(theta=None), [4], chosen, key=key)


def test_fitted_law_places_the_observed_window_where_it_ends():
    """The law's draws are future rotations R_s x (s in [n, n + horizon)) of the one pre-RoPE
    query x behind queries observed at positions end - p .. end - 1; told a wrong end, the draws
    are rotations of another vector."""
    n, d, p, end, theta = 30, 8, 6, 24, 50.0
    cache, _ = _head(8, n=n, d=d)
    x = np.random.default_rng(9).standard_normal(d)
    seen = np.stack([np.asarray(rope.apply(jnp.asarray(x)[None], jnp.asarray([t]), theta,
                                           "half"))[0] for t in range(end - p, end)])
    obs = jnp.asarray(seen)[None]
    future = np.stack([np.asarray(rope.apply(jnp.asarray(x)[None], jnp.asarray([s]), theta,
                                             "half"))[0] for s in range(n, n + 16)])

    def gap(law):
        drawn = np.asarray(law.queries)[p:]
        return max(np.min(np.linalg.norm(future - q, axis=1)) for q in drawn)

    key = jax.random.PRNGKey(1)
    right = predict.fitted_law(cache, obs, key, theta=theta, draws=40, horizon=16,
                               observed_end=end)
    wrong = predict.fitted_law(cache, obs, key, theta=theta, draws=40, horizon=16)
    assert gap(right) < 1e-4 * np.linalg.norm(x)
    assert gap(wrong) > 1e-2 * np.linalg.norm(x)
    np.testing.assert_allclose(float(jnp.sum(right.weights)), 1.0, rtol=1e-12)


def test_predictors_refuse_bad_input():
    cache, obs = _head()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="two halves"):
        predict.predictors(cache, obs[:, :3], [2], key, theta=100.0)
    with pytest.raises(ValueError, match="pass key="):
        predict.predictors(cache, obs, [2], None, theta=100.0)
    with pytest.raises(ValueError, match="budgets"):
        predict.predictors(cache, obs, [40], key, theta=100.0)


def test_within_layer_spearman_is_the_partial_rank_correlation():
    """Against the correlation of the residuals of both rank vectors regressed on layer
    indicators (least squares)."""
    r = np.random.default_rng(0)
    layers = np.repeat(np.arange(5), 6)
    x = r.standard_normal(30) + layers
    y = x + r.standard_normal(30) + 2 * layers
    rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    dummies = (layers[:, None] == np.arange(5)[None]).astype(float)
    res = [z - dummies @ np.linalg.lstsq(dummies, z, rcond=None)[0] for z in (rx, ry)]
    ref = np.corrcoef(*res)[0, 1]
    assert analyze.within_group_spearman(x, y, layers) == pytest.approx(ref, abs=1e-12)


def test_spearman_interval_matches_scipys_bootstrap():
    """Percentile bootstrap over pairs: the bounds agree with scipy.stats.bootstrap (paired,
    percentile) to the Monte-Carlo error of 4,000 resamples (0.03 here), and contain rho."""
    r = np.random.default_rng(2)
    x = r.standard_normal(60)
    y = x + 1.2 * r.standard_normal(60)
    rho, lo, hi = analyze.spearman_interval(x, y, reps=4000, seed=3)
    ref = scipy.stats.bootstrap((x, y), lambda a, b: scipy.stats.spearmanr(a, b).statistic,
                                paired=True, vectorized=False, n_resamples=4000,
                                method="percentile", random_state=4).confidence_interval
    assert rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert lo < rho < hi
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_calibration_by_hand():
    measured = [1.0, 2.0, 0.3, 5.0, np.nan]
    predicted = [1.0, 1.0, 1.0, 1.0, 1.0]
    share, median = analyze.calibration(measured, predicted)
    assert share == pytest.approx(2 / 5)  # 1 and 2 inside [0.5, 2]; 0.3, 5 and nan outside
    assert median == pytest.approx(1.5)


def test_heldout_is_P1_of_the_first_half_judged_on_the_second():
    """The held-out predictor composes P1 as docs/theory.md §10 defines it: the law of the first
    half of the window, placed where that half ends (``n - p/2``), judged on the second half's
    queries; ``shift`` subtracts the first half's risk under its own law."""
    cache, obs = _head(10, p=8)
    key = jax.random.PRNGKey(11)
    got = predict.predictors(cache, obs, [3, 9], key, theta=100.0, draws=64)
    _, k_half = jax.random.split(key)
    first = predict.fitted_law(cache, obs[:, :4], k_half, theta=100.0, draws=64, observed_end=36)
    second = mkv.queries.empirical(obs[:, 4:].reshape(-1, 8))
    held = predict.blind_map_risk(first, second, cache, [3, 9])
    own = predict.blind_map_risk(first, first, cache, [3, 9])
    np.testing.assert_allclose(got["heldout"], np.asarray(held), rtol=1e-12)
    np.testing.assert_allclose(got["shift"], np.asarray(held - own), rtol=1e-12, atol=1e-15)


def test_prediction_summary_cells():
    """Each cell against its definition on made-up rows: scipy's rho inside its interval, the
    within-layer rho, the calibration of the predictors in units of relative risk only, and the
    mass gap only for a rule whose every row reports one."""
    r = np.random.default_rng(5)
    rows = []
    for i in range(24):
        pred = {p: list(r.random(2)) for p in predict.PREDICTORS}
        rows.append({"layer": i % 4, "kv_head": i // 4, "budgets": [3, 6], "predicted": pred,
                     "relative": {"a": list(r.random(2)), "b": list(r.random(2))},
                     "mass_gap": {"a": list(r.random(2))}, "blind_on_probes": list(r.random(2))})
    got = analyze.prediction_summary(rows, "a", reps=300)
    assert set(got) == set(predict.PREDICTORS) | {"mass_gap", "blind_on_probes"}
    assert set(analyze.prediction_summary(rows, "b", reps=50)) == \
        set(predict.PREDICTORS) | {"blind_on_probes"}
    for p, cells in got.items():
        for i, c in enumerate(cells):
            x = [row["mass_gap"]["a"][i] if p == "mass_gap" else row["blind_on_probes"][i]
                 if p == "blind_on_probes" else row["predicted"][p][i] for row in rows]
            y = [row["relative"]["a"][i] for row in rows]
            assert c["rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
            assert c["low"] <= c["rho"] <= c["high"]
            assert c["within_layer"] == pytest.approx(
                analyze.within_group_spearman(x, y, [row["layer"] for row in rows]), abs=1e-12)
            assert ("calibrated" in c) == (p in ("heldout", "blind", "blind_on_probes"))
            if "calibrated" in c:
                assert (c["calibrated"], c["ratio"]) == analyze.calibration(y, x)
