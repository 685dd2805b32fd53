"""Sweeps across processes (minimaxkv.distributed): two CPU processes on localhost give the rows
of one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tiny_llama

from minimaxkv import capture, distributed
from minimaxkv import model as M


def test_alone_the_shard_is_everything_and_gather_is_the_list(monkeypatch):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() == 1
    assert distributed.shard(range(5)) == [0, 1, 2, 3, 4]
    assert distributed.gather([{"a": 1}]) == [[{"a": 1}]]


@pytest.mark.parametrize("count, index, match", [("2", "2", "index in 0..N-1"),
                                                 ("two", "0", "MINIMAXKV_PROCESSES='two'")])
def test_a_bad_process_environment_is_one_line(monkeypatch, count, index, match):
    monkeypatch.setenv("MINIMAXKV_COORDINATOR", "localhost:1")
    monkeypatch.setenv("MINIMAXKV_PROCESSES", count)
    monkeypatch.setenv("MINIMAXKV_PROCESS_ID", index)
    with pytest.raises(ValueError, match=match):
        distributed.initialize()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rows(path):
    rows = json.loads(path.read_text())["rows"]
    return sorted(({k: v for k, v in r.items() if k not in ("provenance",)} for r in rows),
                  key=lambda r: (r["layer"], r["kv_head"]))


def test_analyze_on_two_processes_equals_one(tmp_path):
    """``minimaxkv analyze`` under MINIMAXKV_COORDINATOR/PROCESSES/PROCESS_ID: each of two
    processes computes half of the heads, process 0 stores them all; the stored rows equal a
    one-process run's exactly (apart from provenance), and process 1 prints no table."""
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens))
    tiny_llama.write_hf(tmp_path / "hf", cfg, tiny_llama.weights(cfg, 1))
    ids = np.random.default_rng(0).integers(0, cfg["vocab"], 96)
    cap = capture.save(tmp_path / "c.safetensors", capture.capture(M.load(tmp_path / "hf"), ids))
    cmd = [sys.executable, "-m", "minimaxkv", "analyze", str(cap), "--rules", "knorm", "snapkv",
           "--budgets", "0.25", "--future", "16", "--observed", "8"]
    base = {k: v for k, v in os.environ.items() if k not in distributed.ENV}
    one = subprocess.run(cmd + ["--out", str(tmp_path / "one.json")], env=base,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    outs = _two_processes(cmd + ["--out", str(tmp_path / "two.json")])
    assert "KV heads" in outs[0][0] and "KV heads" not in outs[1][0]
    assert "| 4/4 " in one.stderr and "| 2/2 " in outs[0][1]  # process 0 computed half the heads
    a, b = _rows(tmp_path / "one.json"), _rows(tmp_path / "two.json")
    assert len(a) == cfg["layers"] * cfg["kv_heads"] == len(b)
    assert a == b


def _two_processes(cmd):
    base = {k: v for k, v in os.environ.items() if k not in distributed.ENV}
    port = _free_port()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**base, "MINIMAXKV_COORDINATOR": f"localhost:{port}",
                                   "MINIMAXKV_PROCESSES": "2", "MINIMAXKV_PROCESS_ID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    return outs


@pytest.mark.slow
def test_bench_on_two_processes_writes_the_table_of_one(tmp_path):
    """``minimaxkv bench`` shares its prompts between two processes: the leaderboard, per-task
    CSV and markdown table equal a one-process run's."""
    model = tiny_llama.gguf_file(tmp_path, seed=3)
    cmd = [sys.executable, "-m", "minimaxkv", "bench", "--scale", "tiny", "--model", str(model),
           "--rules", "snapkv", "--tasks", "niah_single_1", "--out"]
    base = {k: v for k, v in os.environ.items() if k not in distributed.ENV}
    one = subprocess.run(cmd + [str(tmp_path / "one")], env=base, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    outs = _two_processes(cmd + [str(tmp_path / "two")])
    # two prompts x two ratios in one process, one prompt each in two
    assert "| 4/4 " in one.stderr and "| 2/2 " in outs[0][1]
    for name in ("bench-tiny.csv", "bench-tiny-tasks.csv", "bench-tiny.md"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_importing_the_package_starts_no_backend():
    """jax.distributed must be initialized before any computation: importing the package and its
    commands computes nothing (a default argument once did)."""
    code = ("import minimaxkv.cli, minimaxkv.analyze, minimaxkv.bench\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge._backends, 'a backend started at import'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
