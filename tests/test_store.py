"""Results stores: rows merged by key and never lost; `evaluate` and `analyze` store every row as
it is done and resume after an interruption to the rows of an uninterrupted run.

References: the rows themselves (a store must hand back exactly what was added, whatever else was
added since), and for the resume tests an uninterrupted run of the same command.
"""

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import tiny_llama
from conftest import interrupt_after_first_row

from minimaxkv import capture, store
from minimaxkv.cli import main

TIMING = ("seconds", "full_seconds", "compress_seconds", "provenance")


def _row(config, i, **extra):
    return store.keyed({"i": i, "value": float(i) ** 0.5, **extra}, config, ("i",))


def test_rows_merge_by_key_and_nothing_else_is_touched(tmp_path):
    path = tmp_path / "s.json"
    a, b = {"run": "a"}, {"run": "b"}
    store.add(path, [_row(a, i) for i in range(3)])
    store.add(path, [_row(b, i) for i in range(2)])  # same identities, another configuration
    store.add(path, [_row(a, 1, value=-1.0), _row(a, 7)])  # one replaced, one new
    rows = store.read(path)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
    got = {(r["config"]["run"], r["i"]): r["value"] for r in rows}
    assert got == {("a", 0): 0.0, ("a", 1): -1.0, ("a", 2): 2 ** 0.5, ("a", 7): 7 ** 0.5,
                   ("b", 0): 0.0, ("b", 1): 1.0}
    assert [r["i"] for r in store.of_config(rows, b)] == [0, 1]
    assert store.row_key(a, {"i": 1}) != store.row_key(b, {"i": 1})
    with pytest.raises(ValueError, match="'key' and a 'config'"):
        store.add(path, [{"i": 9}])


def _add_many(path, who, count):
    for i in range(count):
        store.add(path, [_row({"who": who}, i)])


def test_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "s.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(path, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rows = store.read(path)
    assert sorted((r["config"]["who"], r["i"]) for r in rows) == [
        (w, i) for w in range(3) for i in range(25)]


@pytest.mark.parametrize("content, why", [
    (b"", "not valid JSON"),
    (b'{"format": "minimaxkv-rows/1", "rows": [{"key": "x", "config": {}}', "not valid JSON"),
    (b'{"config": {}, "rows": []}', "format None"),
    (b"[1, 2]", "format 'list'"),
    (b'{"format": "minimaxkv-rows/1", "rows": [{"value": 1}]}', "not a list of keyed rows"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_an_unreadable_store_is_an_error_naming_force_and_is_set_aside(tmp_path, content, why):
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why) as err:
        store.read(path)
    assert "--force" in str(err.value)
    with pytest.raises(ValueError, match="--force"):
        store.add(path, [_row({}, 0)])
    assert path.read_bytes() == content  # a failed add changes nothing
    moved = store.set_aside(path)
    assert moved.read_bytes() == content and not path.exists()
    assert store.read(path) == [] and store.set_aside(path) is None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_llama.gguf_file(tmp_path_factory.mktemp("tiny"), seed=3)


def _evaluate(model, out, rules, budgets, samples=1, *extra):
    return ["evaluate", "--model", str(model), "--length", "120", "--max-new", "4",
            "--observed", "8", "--samples", str(samples), "--out", str(out),
            "--rules", *rules, "--budgets", *map(str, budgets), *extra]


def _strip(row):
    return {k: v for k, v in row.items() if k not in TIMING}


def _by_key(path):
    return {r["key"]: _strip(r) for r in store.read(path)}


def test_two_evaluate_runs_share_one_store(tiny_model, tmp_path, capsys):
    out = tmp_path / "store.json"
    assert main(_evaluate(tiny_model, out, ["window", "snapkv"], [0.25, 8], 2)) == 0
    first = {r["key"]: r for r in store.read(out)}
    assert len(first) == 8  # 2 rules x 2 budgets x 2 samples
    assert main(_evaluate(tiny_model, out, ["snapkv", "tova"], [8, 16])) == 0
    rows = store.read(out)
    want = {(rule, b, s) for rule in ("window", "snapkv") for b in (0.25, 8.0) for s in (0, 1)} | \
        {(rule, b, 0) for rule in ("snapkv", "tova") for b in (8.0, 16.0)}
    assert sorted((r["rule"], r["budget_spec"], r["seed"]) for r in rows) == sorted(want)
    for r in rows:  # the first run's rows are untouched (snapkv at 8 was reused, not recomputed)
        if r["key"] in first:
            assert r == first[r["key"]]
    # another configuration (a different protocol) adds rows beside, reusing none
    assert main(_evaluate(tiny_model, out, ["snapkv"], [8], 1, "--query-aware")) == 0
    rows = store.read(out)
    assert len(rows) == len(want) + 1 and sum(r["config"]["query_aware"] for r in rows) == 1
    capsys.readouterr()
    out.write_text(out.read_text()[:-10])  # a truncated store: a clear error, then --force
    assert main(_evaluate(tiny_model, out, ["snapkv"], [8])) == 2
    assert "--force" in capsys.readouterr().err
    assert main(_evaluate(tiny_model, out, ["snapkv"], [8], 1, "--force")) == 0
    assert "set aside as" in capsys.readouterr().err
    assert len(store.read(out)) == 1 and len(list(tmp_path.glob("store.json.corrupt-*"))) == 1


def test_evaluate_interrupted_then_resumed_equals_an_uninterrupted_run(tiny_model, tmp_path):
    argv = lambda out: _evaluate(tiny_model, out, ["window", "snapkv", "tova"],  # noqa: E731
                                 [0.25, 8, 16], 2)
    cut, whole = tmp_path / "cut.json", tmp_path / "whole.json"
    code, err = interrupt_after_first_row(argv(cut))
    assert code == 130, err
    assert "interrupted; every finished row is stored in" in err and "Traceback" not in err
    saved = _by_key(cut)
    assert 1 <= len(saved) < 18, (len(saved), err)
    assert main(argv(cut)) == 0
    assert main(argv(whole)) == 0
    resumed = _by_key(cut)
    assert len(resumed) == 18 and all(resumed[k] == v for k, v in saved.items())
    full = _by_key(whole)
    assert set(resumed) == set(full)
    for k in full:
        assert resumed[k] == full[k], (k, resumed[k], full[k])


def _tiny_capture(model, path):
    from minimaxkv import model as M

    m = M.load(model)
    ids = np.random.default_rng(0).integers(0, m.config.vocab, 200)
    return capture.save(path, capture.capture(m, ids))


def test_analyze_interrupted_then_resumed_equals_an_uninterrupted_run(tiny_model, tmp_path):
    path = _tiny_capture(tiny_model, tmp_path / "c.safetensors")
    argv = lambda out: ["analyze", str(path), "--budgets", "0.1", "0.25", "--future", "32",  # noqa
                        "--observed", "8", "--rules", "snapkv", "streaming_llm", "--out", str(out)]
    cut, whole = tmp_path / "cut.json", tmp_path / "whole.json"
    code, err = interrupt_after_first_row(argv(cut))
    assert code == 130, err
    assert "every finished row is stored in" in err and "Traceback" not in err
    saved = _by_key(cut)
    assert 1 <= len(saved) < 4
    assert main(argv(cut)) == 0
    assert main(argv(whole)) == 0
    resumed = _by_key(cut)
    assert len(resumed) == 4 and all(resumed[k] == v for k, v in saved.items())
    assert resumed == _by_key(whole)
    rows = json.loads(Path(whole).read_text())["rows"]
    assert {(r["layer"], r["kv_head"]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_evaluate_without_out_stores_under_minimaxkv_results(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXKV_RESULTS", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    argv = _evaluate(tiny_model, "x", ["window"], [8])
    argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
    assert main(argv) == 0
    rows = store.read(tmp_path / "elsewhere" / "evaluate.json")
    assert [(r["rule"], r["budget_spec"]) for r in rows] == [("window", 8.0)]
    assert not (tmp_path / "results").exists()


def test_capture_beyond_the_context_is_refused_before_any_work(tiny_model, tmp_path, capsys):
    """The tiny model's context is 512 tokens: 600 is one line naming the limit, no file."""
    out = tmp_path / "c.safetensors"
    assert main(["capture", "--model", str(tiny_model), "--length", "600", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "context of 512 tokens" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()
