"""``minimaxkv bench``: kvpress's compression ratios, resumption with an identical table, the
leaderboard's aggregation against a hand computation."""

import csv

import numpy as np
import pytest

import tiny_llama
from conftest import assert_drawn, interrupt_after_first_row
from minimaxkv import bench, store
from minimaxkv.cli import main

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_llama.gguf_file(tmp_path_factory.mktemp("tiny"), seed=3)


def _bench(model, out):
    return ["bench", "--scale", "tiny", "--model", str(model), "--out", str(out)]


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_interrupted_then_resumed_writes_the_same_table(tiny_model, tmp_path):
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    code, err = interrupt_after_first_row(_bench(tiny_model, cut))
    assert code == 130, err
    assert "every finished row is stored in" in err and "Traceback" not in err
    first = store.read(cut / "bench-tiny.json")
    cfg = bench.SCALES["tiny"]
    total = len(cfg["tasks"]) * cfg["prompts"] * len(cfg["rules"]) * len(cfg["ratios"])
    assert 1 <= len(first) < total
    assert main(_bench(tiny_model, cut)) == 0
    assert main(_bench(tiny_model, whole)) == 0
    rows = store.read(cut / "bench-tiny.json")
    assert len(rows) == total
    kept = {r["key"]: r for r in rows}
    assert all(kept[r["key"]] == r for r in first)  # the first run's row was not recomputed
    for name in ("bench-tiny.csv", "bench-tiny-tasks.csv", "bench-tiny.md"):
        assert (cut / name).read_text() == (whole / name).read_text(), name
    assert_drawn(cut / "bench-tiny.png")
    # kvpress's ratio: int(T (1 - r)) atoms kept of a context of T tokens
    for r in rows:
        assert r["budget"] == int(r["prefix_tokens"] * (1 - r["budget_spec"]))
        assert r["query_aware"] is True
    table = _csv(cut / "bench-tiny.csv")
    assert list(table[0]) == list(bench.COLUMNS)
    assert {(t["method"], float(t["compression_ratio"])) for t in table} == \
        {("full", 0.0)} | {(m, x) for m in cfg["rules"] for x in cfg["ratios"]}
    # a run with fewer prompts and one rule reuses the stored rows: nothing new is computed
    before = (cut / "bench-tiny.json").read_text()
    assert main(_bench(tiny_model, cut) + ["--prompts", "1", "--rules", "snapkv"]) == 0
    assert (cut / "bench-tiny.json").read_text() == before
    assert {t["method"] for t in _csv(cut / "bench-tiny.csv")} == {"full", "snapkv"}


def test_leaderboard_aggregates_prompts_then_tasks():
    """Per task: mean score over prompts in percent, bootstrap interval inside the scores'
    range; average: the mean of the task means, n counting every prompt; the full cache from
    the rows' own full-cache score."""
    rows = []
    score = {("a", 0): 1.0, ("a", 1): 0.0, ("a", 2): 1.0, ("b", 0): 0.5, ("b", 1): 0.5,
             ("b", 2): 0.5}
    for (task, seed), s in score.items():
        rows.append({"family": task, "seed": seed, "rule": "snapkv", "budget_spec": 0.5,
                     "query_aware": True, "score": s, "bytes": 100.0 + seed,
                     "score_full": 1.0, "full_bytes": 400.0})
    average, per_task = bench.leaderboard(rows, {"length": 4096, "model": "m"})
    by = {(r["task"], r["method"]): r for r in per_task}
    np.testing.assert_allclose(by["a", "snapkv"]["score"], 200 / 3)
    assert by["b", "snapkv"]["score"] == 50.0 and by["b", "snapkv"]["ci_low"] == 50.0
    assert 0 <= by["a", "snapkv"]["ci_low"] < by["a", "snapkv"]["ci_high"] <= 100
    assert by["a", "full"]["score"] == 100.0 and by["a", "full"]["compression_ratio"] == 0.0
    avg = {r["method"]: r for r in average}
    np.testing.assert_allclose(avg["snapkv"]["score"], (200 / 3 + 50) / 2)
    assert avg["snapkv"]["n"] == 6 and avg["snapkv"]["bytes"] == 101.0
    assert avg["full"]["score"] == 100.0 and avg["full"]["bytes"] == 400.0
    assert avg["snapkv"]["dataset"] == "ruler" and avg["snapkv"]["data_dir"] == "4096"
    lo, hi = avg["snapkv"]["ci_low"], avg["snapkv"]["ci_high"]
    assert 50 / 2 <= lo < avg["snapkv"]["score"] < hi <= (100 + 50) / 2
    md = bench.markdown(average)
    assert "| snapkv | 58.3 [" in md and "full cache 100.0" in md


def test_bench_refuses_what_it_cannot_run(tiny_model):
    with pytest.raises(ValueError, match="RULER's tasks"):
        bench.config("tiny", "m", tasks=["passkey"])
    with pytest.raises(ValueError, match="compression ratio"):
        bench.config("tiny", "m", ratios=[1.0])
    from minimaxkv import model

    m = model.load(str(tiny_model))
    with pytest.raises(ValueError, match="beyond the model's context"):
        bench.prompts(m, bench.config("tiny", "m", length=4096))
