"""Experiments and paper figures: tiny configs run, results are cached, figures draw.

Every experiment runs once at its ``tiny`` config into a temporary results folder (module
fixture); the checks compare its numbers with independent computations where one exists.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minimaxkv as mkv
from minimaxkv import bounds, compressibility, rules, synthetic
from conftest import assert_drawn
from minimaxkv.cli import main
from minimaxkv.experiments import common
from minimaxkv.experiments.lookup_support import l3_support, support_needed
from minimaxkv.paper_figures import common as figs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(results folder, {name: record})`` of every experiment at its tiny config."""
    root = tmp_path_factory.mktemp("results")
    records = {}
    for name in common.EXPERIMENTS:
        rec, computed = common.ensure(name, "tiny", root=root)
        assert computed
        records[name] = rec
    return root, records


def test_records_carry_config_hash_seed_provenance(tiny):
    root, records = tiny
    for name, rec in records.items():
        assert rec["name"] == name and rec["scale"] == "tiny"
        assert rec["config"] == common.config(name, "tiny")
        assert rec["hash"] == common.key(name, "tiny")
        assert rec["hash"] != common.key(name, "quick")
        assert rec["seed"] == rec["config"].get("seed", rec["config"].get("seeds"))
        assert rec["versions"]["minimaxkv"] and "time" in rec
        assert (root / f"{name}-tiny.json").is_file()
        assert set(common.module(name).CONFIGS) == set(common.SCALES)


def test_structure(tiny):
    _, rec = tiny
    r = rec["risk_vs_budget"]["result"]
    assert set(r["families"]) == {"clustered", "lookup"}
    for row in r["families"].values():
        assert row["budgets"] == [8]
        assert set(row["risk"]) == {"snapkv", "minimax", "L2 lower (worst case)",
                                    "refit on eval queries"}
        assert all(len(v) == 1 and v[0] >= 0 for v in row["risk"].values())
    s = rec["spectra"]["result"]
    assert set(s["families"]) == set(synthetic.FAMILIES)
    for row in s["families"].values():
        e = np.asarray(row["eigs"])
        assert len(e) == s["n"] and e[0] == pytest.approx(1) and np.all(np.diff(e) <= 1e-12)
    a = rec["aware_vs_agnostic"]["result"]["families"]["clustered"]
    assert set(a["risk"]) == {"minimax", "minimax_agnostic", "snapkv", "expected_attention",
                              "refit on eval queries"}
    c = rec["causal"]["result"]
    assert set(c["rules"]) == {"minimax", "streaming_llm", "snapkv"}
    assert all(len(v["errors"]) == c["T"] == len(v["nbytes"]) for v in c["rules"].values())
    g = rec["lookup_support"]["result"]
    assert g["ns"] == [8, 16] and set(g["support"]) == {"minimax", "refit on eval queries", "L3"}


def test_cache_reused_then_forced_then_stale(tiny, monkeypatch):
    root, records = tiny
    path = common.result_path("spectra", "tiny", root)
    mtime = path.stat().st_mtime_ns
    mod = common.module("spectra")
    calls = []

    def fake_run(config):
        calls.append(config)
        return {"families": {}, "n": 0}

    monkeypatch.setattr(mod, "run", fake_run)
    rec, computed = common.ensure("spectra", "tiny", root=root)
    assert not computed and not calls and path.stat().st_mtime_ns == mtime
    assert rec["result"] == records["spectra"]["result"]
    rec, computed = common.ensure("spectra", "tiny", root=root, force=True)
    assert computed and len(calls) == 1 and rec["result"] == {"families": {}, "n": 0}
    monkeypatch.setitem(mod.CONFIGS, "tiny", {**mod.CONFIGS["tiny"], "seed": 1})
    assert common.cached("spectra", "tiny", root) is None  # stale: the config hash changed
    rec, computed = common.ensure("spectra", "tiny", root=root)
    assert computed and len(calls) == 2 and rec["seed"] == 1
    edited = root / "spectra_edited.py"  # an edited experiment script makes its results stale
    edited.write_bytes(Path(mod.__file__).read_bytes() + b"\n# edited\n")
    with monkeypatch.context() as mp:
        mp.setattr(mod, "__file__", str(edited))
        assert common.cached("spectra", "tiny", root) is None
    assert common.cached("spectra", "tiny", root) is not None
    path.write_text("{ truncated")  # a corrupt file is recomputed, not trusted
    assert common.cached("spectra", "tiny", root) is None


def test_bad_names_and_missing_results(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown experiment"):
        common.ensure("nope", "tiny", root=tmp_path)
    with pytest.raises(ValueError, match="unknown scale"):
        common.ensure("spectra", "huge", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="minimaxkv figures"):
        common.load("spectra", "tiny", tmp_path)
    assert main(["figures", "--scale", "tiny", "--only", "nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["figures", "--scale", "huge"])


def test_every_figure_draws(tiny, tmp_path):
    root, records = tiny
    for name in common.EXPERIMENTS:
        paths = figs.render(name, "tiny", out=tmp_path, record=records[name])
        assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
        for p in paths:
            assert_drawn(p)


def test_cli_figures_reuses_cached_results(tiny, tmp_path, monkeypatch, capsys):
    root, _ = tiny
    monkeypatch.setenv("MINIMAXKV_RESULTS", str(root))
    monkeypatch.setenv("MINIMAXKV_FIGURES", str(tmp_path))
    only = ["risk_vs_budget", "causal"]
    assert main(["figures", "--scale", "tiny", "--only", *only]) == 0
    out = capsys.readouterr().out
    assert out.count(": reused") == 2 and "computed" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{e}" for n in only for e in ("pdf", "png"))


# ---------------------------------------------------------------- independent references


def _clustered_split(cfg, seed=0):
    n, p = cfg["n"], cfg["p_obs"] + cfg["p_eval"]
    inst = synthetic.make("clustered", jax.random.PRNGKey(seed), n=n, d=cfg["d"], dv=cfg["dv"],
                          p=p, dtype=jnp.float64)
    return inst.cache, inst.queries[:cfg["p_obs"]], inst.queries[cfg["p_obs"]:]


def test_risk_vs_budget_cell_equals_direct_risk(tiny):
    _, rec = tiny
    cfg, r = rec["risk_vs_budget"]["config"], rec["risk_vs_budget"]["result"]
    c, q_obs, q_eval = _clustered_split(cfg)
    row = r["families"]["clustered"]
    m = row["budgets"][0]
    for name in ("snapkv", "minimax"):
        rule = rules.get(name, theta=0.0)  # the clustered family has no RoPE (Instance.theta)
        # compare_table's rules draw from PRNGKey(seed), as its instance does
        direct = float(mkv.risk(q_eval, c, rule(c, m, q_obs, jax.random.PRNGKey(cfg["seed"]))))
        assert row["risk"][name][0] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    expect = float(bounds.width_lower(q_eval, c, m)) * cfg["dv"]
    assert row["risk"]["L2 lower (worst case)"][0] == pytest.approx(expect, rel=1e-9)


def test_aware_vs_agnostic_matches_risk_vs_budget_and_gap(tiny):
    _, rec = tiny
    a = rec["aware_vs_agnostic"]["result"]["families"]["clustered"]
    r = rec["risk_vs_budget"]["result"]["families"]["clustered"]
    m = a["budgets"][0]
    j = r["budgets"].index(m)  # same instance (seed 0) and budget in both experiments
    for name in ("snapkv", "minimax"):
        assert a["risk"][name][0][0] == pytest.approx(r["risk"][name][j], rel=1e-9, abs=1e-12)
    ratio = a["risk"]["minimax_agnostic"][0][0] / a["risk"]["minimax"][0][0]
    assert a["gap"][0] == pytest.approx(ratio)


def test_spectra_match_dense_covariance(tiny):
    _, rec = tiny
    cfg, s = rec["spectra"]["config"], rec["spectra"]["result"]
    inst = synthetic.make("isotropic", jax.random.PRNGKey(cfg["seed"]), n=cfg["n"], d=cfg["d"],
                          dv=cfg["dv"], p=cfg["p"], dtype=jnp.float64)
    g = np.asarray(compressibility.response_covariance(inst.queries, inst.cache))
    e = np.linalg.eigvalsh(g)[::-1]
    np.testing.assert_allclose(s["families"]["isotropic"]["eigs"], e / e[0], atol=1e-9)
    ranks = {f: row["eps_rank"]["0.05"] for f, row in s["families"].items()}
    assert ranks["low_rank"] <= ranks["isotropic"] and ranks["lookup"] >= ranks["clustered"]


def test_causal_exact_until_first_compression(tiny):
    _, rec = tiny
    cfg, c = rec["causal"]["config"], rec["causal"]["result"]
    first = cfg["budget"] + cfg["block"]  # the state first exceeds the budget after this many
    cap = (cfg["budget"] + cfg["block"]) * (cfg["d"] + cfg["dv"] + 1) * 4
    for r in c["rules"].values():
        err = np.asarray(r["errors"])
        assert np.all(err[:first] < 1e-10)
        assert r["prefill_risk"] == pytest.approx(err[: cfg["prefill"]].mean())
        assert max(r["nbytes"]) <= cap < c["full_nbytes"][-1]


def test_lookup_support_grows_with_n(tiny):
    _, rec = tiny
    cfg, g = rec["lookup_support"]["config"], rec["lookup_support"]["result"]
    for name in ("minimax", "refit on eval queries", "L3"):
        sup = g["support"][name]["0.5"]
        assert sup[1] > sup[0] > 0
    n = g["ns"][0]
    inst = synthetic.make("lookup", jax.random.PRNGKey(cfg["seed"]), n=n, d=n, dv=cfg["dv"],
                          p=n, gap=cfg["gap"], dtype=jnp.float64)
    q, c = inst.queries, inst.cache
    m = g["curves"][str(n)]["m"][0]
    summary = rules.get("minimax")(c, m, q, jax.random.PRNGKey(cfg["seed"]))
    direct = float(mkv.relative_risk(q, c, summary))
    assert g["curves"][str(n)]["minimax"][0] == pytest.approx(direct, rel=1e-9)


def test_support_needed_and_l3_formula():
    assert support_needed([2, 4, 6], [0.8, 0.4, 0.1], 8, 0.5) == pytest.approx(2 + 2 * 0.3 / 0.4)
    assert support_needed([2, 4], [0.9, 0.8], 8, 0.1) == pytest.approx(4 + 4 * 0.7 / 0.8)
    assert support_needed([2], [0.05], 8, 0.1) == pytest.approx(2 * 0.9 / 0.95)
    n, gap, dv, spread, r = 32, 8.0, 16, 3.0, 0.2
    m = l3_support(n, gap, dv, spread, r)  # the L3 tail at m equals the target risk
    assert dv * bounds.lookup_tail(n, m, gap) == pytest.approx(r * spread)
    assert l3_support(n, gap, dv, spread, 1e6) == 0.0
    assert math.isclose(l3_support(n, gap, dv, spread, 0.0), n)


def test_real_heads_rows_match_a_direct_analysis(tiny):
    """A row of the real-model experiment equals `analyze` recomputed on the same capture, and its
    Spearman table equals scipy's on the stored columns."""
    import scipy.stats

    from minimaxkv import analyze

    _, rec = tiny
    cfg, r = rec["real_heads"]["config"], rec["real_heads"]["result"]
    assert [[x["layer"], x["kv_head"]] for x in r["rows"]] == cfg["heads"]
    cap = common.smollm2_capture(cfg["text"], cfg["tokens"])
    assert r["context"] == cfg["tokens"] - cfg["future"] and r["probes"] == cfg["future"] * cap.group
    with jax.enable_x64(True):
        again = analyze.analyze(cap, cfg["budgets"], {"snapkv": rules.get("snapkv")},
                                future=cfg["future"], observed=cfg["observed"],
                                heads=cfg["heads"][1:2], progress=False)[0]
    row = r["rows"][1]
    assert row["relative"]["snapkv"] == pytest.approx(again["relative"]["snapkv"], rel=1e-9)
    assert row["tail"] == pytest.approx(again["tail"], rel=1e-9)
    assert row["predicted"]["heldout"] == pytest.approx(again["predicted"]["heldout"], rel=1e-9)
    x = [h["predicted"]["heldout"][0] for h in r["rows"]]
    y = [h["relative"]["minimax"][0] for h in r["rows"]]
    rho = scipy.stats.spearmanr(x, y).statistic
    assert r["spearman"]["minimax"]["heldout"][0] == pytest.approx(rho, abs=1e-12)


def test_end_to_end_is_a_slice_of_the_bench(tiny):
    """Every (prompt, rule, ratio) row is there with kvpress's ``int(T (1 - r))`` atoms per head,
    bytes the kept atoms' bytes, KL >= 0; the averages are the mean over tasks of each task's mean
    over prompts, computed here by hand, inside their intervals."""
    _, rec = tiny
    cfg, r = rec["end_to_end"]["config"], rec["end_to_end"]["result"]
    rows = r["rows"]
    assert sorted((x["family"], x["seed"], x["rule"], x["budget_spec"]) for x in rows) == sorted(
        (t, s, name, x) for t in cfg["tasks"] for s in range(cfg["prompts"])
        for name in cfg["rules"] for x in cfg["ratios"])
    per_atom = common.smollm2().config.cache_bytes(1)
    for x in rows:
        assert x["budget"] == int(x["prefix_tokens"] * (1 - x["budget_spec"]))
        assert x["kl"] >= 0 and x["query_aware"] is True
        assert x["bytes"] <= x["budget"] * per_atom + 1e-9
        if x["rule"] != "minimax":  # eviction keeps exactly the budget's atoms
            assert x["bytes"] == x["budget"] * per_atom
        assert x["full_bytes"] == x["prefix_tokens"] * per_atom

    def by_hand(rule, ratio, field):
        return np.mean([np.mean([x[field] for x in rows if x["rule"] == rule and
                                 x["budget_spec"] == ratio and x["family"] == t])
                        for t in cfg["tasks"]])

    average = {(a["method"], a["compression_ratio"]): a for a in r["average"]}
    kl = {(a["method"], a["compression_ratio"]): a for a in r["kl"]}
    assert set(kl) == {(name, x) for name in cfg["rules"] for x in cfg["ratios"]}
    for (name, x), k in kl.items():
        assert average[name, x]["score"] == pytest.approx(100 * by_hand(name, x, "score"))
        assert k["kl"] == pytest.approx(by_hand(name, x, "kl"))
        assert k["ci_low"] <= k["kl"] <= k["ci_high"]
    full = np.mean([x["score_full"] for x in rows if x["rule"] == cfg["rules"][0]])
    assert average["full", 0.0]["score"] == pytest.approx(100 * full)


def test_end_to_end_resumes_from_its_stored_rows(tiny, tmp_path, monkeypatch):
    """Rows an interrupted run stored are reused, not recomputed (a marked row comes back
    marked); a rows file of an older version of the experiment is removed; the rows file is
    removed once the result is stored; ``force`` discards stored rows before running."""
    from minimaxkv import store

    _, rec = tiny
    done = rec["end_to_end"]["result"]["rows"]
    path = common.rows_path("end_to_end", "tiny", tmp_path)
    stale = path.with_name("end_to_end-tiny.rows-000000000000.json")
    store.add(stale, done)
    store.add(path, [{**done[0], "kl": -1.0}] + done[1:])
    again = common.compute("end_to_end", "tiny", tmp_path)["result"]
    assert again["rows"][0]["kl"] == -1.0 and again["rows"][1:] == done[1:]
    assert not path.exists() and not stale.exists()
    store.add(path, done)
    mod = common.module("end_to_end")
    seen = []
    monkeypatch.setattr(mod, "run", lambda config, rows: seen.append(rows.exists()) or {})
    common.ensure("end_to_end", "tiny", force=True, root=tmp_path)
    assert seen == [False]


def test_cost_memory_chunked_below_dense(tiny):
    """The chunked risk's executable needs less memory than the dense one once n exceeds the
    chunk, and its value is the same risk."""
    _, rec = tiny
    cfg, r = rec["cost"]["config"], rec["cost"]["result"]
    dense, chunked = r["risk"]["dense"]["bytes"], r["risk"]["chunked"]["bytes"]
    assert chunked[-1] < dense[-1] and dense[-1] > dense[0]
    assert set(r["rules"]) == set(cfg["rules"]) and len(r["budgets"]) == len(cfg["ns"])
    # the dense risk holds the p x n float32 logits of the largest cache; the chunked one a block
    n = cfg["risk_ns"][-1]
    assert dense[-1] >= 4 * cfg["p"] * n > 4 * cfg["p"] * cfg["chunk"]


def test_cli_figures_computes_in_a_process_of_its_own_and_survives_a_failure(
        tiny, tmp_path, monkeypatch, capsys):
    """A missing result is computed by a child process (its record has the peak mapping count
    where /proc exists) and its figure drawn, by default under the current folder (any folder:
    the experiments are modules of the package); a child that fails (here: a folder stands where
    its result file must go, so nothing can be stored) makes the command exit 1 naming it, and the
    figures whose results exist are still drawn."""
    import shutil

    root, _ = tiny
    results, figures = tmp_path / "results", tmp_path / "figures"
    monkeypatch.delenv("MINIMAXKV_RESULTS", raising=False)
    monkeypatch.delenv("MINIMAXKV_FIGURES", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--scale", "tiny", "--only", "spectra"]) == 0
    out = capsys.readouterr().out
    assert "spectra: computed" in out and (figures / "spectra.png").is_file()
    record = common.load("spectra", "tiny", results)
    if Path("/proc/self/maps").exists():
        assert 0 < record["peak_mappings"] < record["mapping_limit"]

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(root / "causal-tiny.json", broken / "causal-tiny.json")
    (broken / "spectra-tiny.json").mkdir()  # a folder where the result file must go
    assert main(["figures", "--scale", "tiny", "--only", "spectra", "causal",
                 "--results", str(broken)]) == 1
    out = capsys.readouterr()
    assert "spectra: FAILED" in out.out and "causal: reused" in out.out
    assert "figure causal:" in out.out and "figure spectra: not drawn" in out.out
    assert "failed: spectra" in out.err
