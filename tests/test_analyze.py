"""Per-head analysis of captured caches, `analyze` / `compare --cache`.

References: float64 NumPy recomputations of the response covariance, the attention operator and
the risk; scipy's Spearman; the U4 inequality of docs/theory.md for the probe-fitted refit.
"""

import json

import jax
import numpy as np
import pytest
import scipy.stats
import tiny_llama
from conftest import assert_drawn

import minimaxkv as mkv
from minimaxkv import analyze, capture, rules
from minimaxkv.cli import main


def _capture(seed=0, L=2, K=2, g=2, T=48, hd=8):
    """A random capture (what `capture.capture` returns, without a model)."""
    r = np.random.default_rng(seed)
    k = r.standard_normal((L, K, T, hd)).astype(np.float32)
    v = r.standard_normal((L, K, T, hd)).astype(np.float32)
    q = (1.5 * r.standard_normal((L, K * g, T, hd))).astype(np.float32)
    meta = {"model": "random", "tokens": T, "rope": "half", "dtype": "float32",
            "config": {"rope_theta": 10000.0}}
    return capture.Captured(k, v, q, np.arange(T, dtype=np.int32), meta)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _softmax(s):
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("recorded", [None, 0.2])
def test_split_and_every_field_against_numpy(recorded):
    """Every field of a head's row against float64 NumPy, at the attention scale the capture's
    model recorded (``config.attn_scale``; none recorded: 1/sqrt(hd))."""
    cap = _capture()
    if recorded is not None:
        cap = cap._replace(meta={**cap.meta, "config": {"rope_theta": 10000.0,
                                                        "attn_scale": recorded}})
    tau = 8 ** -0.5 if recorded is None else recorded
    n, fut, obs = 48 - 16, 16, 6
    case = analyze.head_case(cap, 1, 0, future=fut, observed=obs)
    assert case.scale == recorded and case.theta == 10000.0
    np.testing.assert_array_equal(case.cache.keys, cap.keys[1, 0, :n])
    np.testing.assert_array_equal(case.observed, cap.queries[1, 0:2, n - obs:n])
    np.testing.assert_array_equal(case.probes, cap.queries[1, 0:2, n:].reshape(-1, 8))
    budgets = [3, 8]
    chosen = {"snapkv": rules.get("snapkv", scale=tau),
              "streaming_llm": rules.get("streaming_llm")}
    row = analyze.analyze_head(case, budgets, chosen, eps=0.05, spectrum=True,
                               key=jax.random.PRNGKey(0))
    # float64 references
    k, v = np.asarray(case.cache.keys, np.float64), np.asarray(case.cache.values, np.float64)
    q = np.asarray(case.probes, np.float64)
    P = _softmax(q @ k.T * tau)
    w = 1.0 / len(q)
    G = (P.T @ P * w) * (1 + v @ v.T)
    e = np.sort(np.linalg.eigvalsh(G))[::-1]
    np.testing.assert_allclose(np.asarray(row["eigs"]) * e[0], e, atol=1e-10 * e[0])
    sv = np.linalg.svd(np.sqrt(w) * P, compute_uv=False)
    ent = -(P * np.log(P)).sum(1).mean()
    assert row["entropy"] == pytest.approx(ent, rel=1e-9)
    tails = np.cumsum(e[::-1])[::-1] / e.sum()
    assert row["eps_rank"] == int(np.argmax(np.append(tails, 0)[1:] <= 0.05)) + 1
    for i, m in enumerate(budgets):
        assert row["tail"][i] == pytest.approx(e[m:].sum() / e.sum(), rel=1e-8)
        assert row["lower"][i] == pytest.approx(sv[m] ** 2, rel=1e-8)
        # U4 is the refit's worst case over unit-norm value columns, so on these values its risk
        # ||(I - Pi) X V||_F^2 is at most U4 * ||V||_F^2; and U4 >= L2 (docs/theory.md U4)
        assert row["refit"][i] <= row["upper"][i] * np.sum(v * v) * (1 + 1e-9)
        assert row["upper"][i] >= row["lower"][i] * (1 - 1e-9)
        for name, rule in chosen.items():
            s = rule(case.cache, m, case.observed)
            kept = np.asarray(s.kept)
            Ph = _softmax(q @ k[kept].T * tau)
            err = ((P @ v - Ph @ v[kept]) ** 2).sum(1).mean()
            assert row["risk"][name][i] == pytest.approx(err, rel=1e-8)
            spread = ((P @ v - v.mean(0)) ** 2).sum(1).mean()
            assert row["relative"][name][i] == pytest.approx(err / spread, rel=1e-8)


def test_analyze_rows_spearman_and_errors():
    cap = _capture(1)
    chosen = {"snapkv": rules.get("snapkv")}
    rows = analyze.analyze(cap, [0.25], chosen, future=16, observed=4, progress=False)
    assert [(r["layer"], r["kv_head"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert rows[0]["budgets"] == [8]  # 25% of a 32-token context
    rho = analyze.rank_correlation(rows, "snapkv")
    assert set(rho) == set(analyze.PREDICTORS)
    for p, vals in rho.items():
        x = [r["predicted"][p][0] for r in rows]
        y = [r["relative"]["snapkv"][0] for r in rows]
        assert vals[0] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="cannot hold"):
        analyze.analyze(cap, [0.25], chosen, future=46, observed=4)
    with pytest.raises(ValueError, match="positive"):
        analyze.analyze(cap, [0.25], chosen, future=0)
    with pytest.raises(ValueError, match="budgets"):
        analyze.analyze_head(analyze.head_case(cap, 0, 0, future=16, observed=4), [32], chosen,
                             key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="out of range"):
        analyze.analyze(cap, [0.25], chosen, future=16, observed=4, heads=[(5, 0)])


def test_rule_summary_by_hand():
    """Mean, geometric mean and wins per rule and budget, against a hand count."""
    rows = [{"budgets": [4, 8], "relative": {"a": [0.5, 0.1], "b": [0.2, 0.4]},
             "refit_relative": [0.1, 0.05]},
            {"budgets": [4, 8], "relative": {"a": [0.1, 0.3], "b": [0.4, 0.2]},
             "refit_relative": [0.2, 0.1]},
            {"budgets": [4, 8], "relative": {"a": [0.8, 0.2], "b": [0.9, 0.1]},
             "refit_relative": [0.3, 0.05]}]
    got = analyze.rule_summary(rows)
    assert list(got) == ["a", "b", analyze.REFIT_COLUMN]
    assert [w for _, _, w in got["a"]] == [2, 1] and [w for _, _, w in got["b"]] == [1, 2]
    assert [w for _, _, w in got[analyze.REFIT_COLUMN]] == [None, None]
    assert got["a"][0][0] == pytest.approx((0.5 + 0.1 + 0.8) / 3, rel=1e-12)
    assert got["b"][1][1] == pytest.approx((0.4 * 0.2 * 0.1) ** (1 / 3), rel=1e-12)
    assert got[analyze.REFIT_COLUMN][1][0] == pytest.approx(0.2 / 3, rel=1e-12)


def test_cli_analyze_and_compare_cache(tmp_path, capsys):
    m = mkv.model.load(tiny_llama.gguf_file(tmp_path, seed=3))
    ids = np.random.default_rng(0).integers(0, m.config.vocab, 56)
    path = capture.save(tmp_path / "c.safetensors", capture.capture(m, ids))
    out, plot = tmp_path / "rows.json", tmp_path / "heads.png"
    assert main(["analyze", str(path), "--budgets", "0.25", "--rules", "snapkv", "minimax",
                 "--future", "16", "--observed", "8", "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "Spearman" in text and "budget m = 10" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4
    assert_drawn(plot)
    cap = capture.load(path)
    ref = analyze.analyze(cap, [0.25], {"snapkv": rules.get("snapkv"),
                                        "minimax": rules.get("minimax")},
                          future=16, observed=8, progress=False)
    for a, b in zip(rows, ref):
        for name in ("snapkv", "minimax"):
            assert a["relative"][name] == pytest.approx(b["relative"][name], rel=1e-9)
        # the minimax summaries' certificate (scored rules report none), as printed
        assert list(a["mass_gap"]) == ["minimax"]
        assert a["mass_gap"]["minimax"] == pytest.approx(b["mass_gap"]["minimax"], rel=1e-9)
    gap = np.median([r["mass_gap"]["minimax"][0] for r in rows])
    assert f"m=10: {gap:.3g} " in text
    assert main(["compare", "--cache", str(path), "--budgets", "0.25", "--rules", "snapkv",
                 "streaming_llm", "--future", "16", "--observed", "8", "--layers", "1"]) == 0
    text = capsys.readouterr().out
    assert "2 KV heads" in text and "snapkv" in text and "refit" in text
    assert main(["analyze", str(path), "--layers", "7"]) == 2
    assert "error: --layers [7]" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    assert main(["analyze", str(bad)]) == 2
    assert "minimaxkv analyze: error:" in capsys.readouterr().err
