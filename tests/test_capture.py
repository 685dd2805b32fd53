"""Captured caches and result files: round trip, validation of corrupt or truncated files."""

import json
import os
import stat
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_llama

import minimaxkv as mkv
from minimaxkv import capture, io
from minimaxkv import model as M


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinycap")
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens))
    stored = tiny_llama.write_gguf(folder / "tiny.gguf", cfg, tiny_llama.weights(cfg, 11))
    return M.load(folder / "tiny.gguf"), cfg, stored


def test_capture_matches_reference_attention(tiny, tmp_path):
    """A captured head's cache and queries reproduce the model's attention: the causal attention
    of the captured queries over the captured cache equals a float64 recomputation."""
    m, cfg, w = tiny
    ids = np.random.default_rng(0).integers(0, cfg["vocab"], 60)
    cap = capture.capture(m, ids, source="random")
    assert cap.keys.shape == (2, 2, 60, 8) and cap.queries.shape == (2, 4, 60, 8)
    path = capture.save(tmp_path / "c.safetensors", cap)
    back = capture.load(path)
    for a, b in zip(cap[:4], back[:4]):
        np.testing.assert_array_equal(a, b)
    assert back.meta["tokens"] == 60 and back.meta["rope"] == "half"
    # layer 0 keys from the float64 reference: RMSNorm(embed) @ Wk^T, RoPE (half layout)
    f = {k: np.asarray(v, np.float64) for k, v in w.items()}
    x = f["embed"][ids]
    h = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg["eps"]) * f["0.attn_norm"]
    k = (h @ f["0.k"].T).reshape(60, 2, 8)
    ang = np.arange(60)[:, None] * cfg["theta"] ** (-np.arange(0, 8, 2) / 8)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = k[..., :4], k[..., 4:]
    k_ref = np.concatenate([a * c - b * s, a * s + b * c], -1)
    np.testing.assert_allclose(back.keys[0], np.swapaxes(k_ref, 0, 1), atol=1e-4, rtol=1e-4)
    cache, q = back.head(1, 1)
    assert cache.keys.shape == (60, 8) and q.shape == (2, 60, 8)
    out = mkv.attend(q[0], cache, query_pos=jnp.arange(60))
    from conftest import np_attention
    ref = np_attention(q[0], cache.keys, cache.values, qpos=np.arange(60))[0]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        back.head(2, 0)


def test_a_capture_keeps_what_the_rules_take_from_its_model(tmp_path):
    """A Llama-3 model's scaled RoPE and its attention scale survive the file: the rules built
    from the loaded capture are the rules built from the model, and the scaling reaches them
    (Expected Attention and minimax keep other atoms under the unscaled base)."""
    tokens, _, _ = tiny_llama.vocabulary()
    cfg = tiny_llama.config(len(tokens), scaling=(4.0, 1.0, 4.0, 16))
    tiny_llama.write_hf(tmp_path / "hf", cfg, tiny_llama.weights(cfg, 2))
    m = M.load(tmp_path / "hf")
    m = m._replace(config=m.config._replace(attn_scale=0.3))
    ids = np.random.default_rng(1).integers(0, cfg["vocab"], 64)
    back = capture.load(capture.save(tmp_path / "c.safetensors", capture.capture(m, ids)))
    hyper = capture.rule_hyper(back)
    assert hyper == m.config.rule_hyper and hyper["theta"] == mkv.rope.Llama3(1e4, 4.0, 1.0, 4.0, 16)
    assert hyper["scale"] == 0.3
    cache, q = back.head(1, 0)
    for name in ("expected_attention", "minimax"):  # the rules that model RoPE
        kept = [np.asarray(mkv.rules.get(name, theta=theta, scale=0.3)(
            cache, 12, q[:, -16:], jax.random.PRNGKey(0)).cache.keys)
            for theta in (hyper["theta"], 1e4)]
        assert not np.array_equal(*kept), name


def test_corrupt_truncated_and_empty_files_are_refused(tiny, tmp_path):
    m, cfg, _ = tiny
    cap = capture.capture(m, np.arange(20) % cfg["vocab"])
    path = capture.save(tmp_path / "c.safetensors", cap)
    raw = path.read_bytes()
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        capture.load(trunc)
    empty = tmp_path / "e.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        capture.load(empty)
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # one byte of tensor data
    bad = tmp_path / "f.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        capture.load(bad)
    with pytest.raises(FileNotFoundError):
        capture.load(tmp_path / "missing.safetensors")


def test_inconsistent_capture_is_refused(tmp_path):
    k = np.zeros((2, 2, 5, 4), np.float32)
    io.save_tensors(tmp_path / "x.safetensors", {"keys": k, "values": k, "positions": np.arange(5),
                                                 "queries": np.zeros((2, 3, 5, 4), np.float32)}, {})
    with pytest.raises(ValueError, match="multiple of Hkv"):
        capture.load(tmp_path / "x.safetensors")
    nan = k.copy()
    nan[0, 0, 0, 0] = np.nan
    io.save_tensors(tmp_path / "n.safetensors", {"keys": nan}, {})
    with pytest.raises(ValueError, match="NaN"):
        io.load_tensors(tmp_path / "n.safetensors")


def _small_capture(dtype=np.float32, positions=None):
    r = np.random.default_rng(5)
    k, v = (r.standard_normal((1, 1, 3, 2)).astype(dtype) for _ in range(2))
    q = r.standard_normal((1, 2, 3, 2)).astype(dtype)
    meta = {"model": "tiny-llama", "config": {"dim": 32, "layers": 1, "theta": 10000.0},
            "tokens": 3, "text_sha256": "0123456789abcdef", "source": "task:passkey:0",
            "rope": "half", "dtype": str(np.dtype(dtype)), "minimaxkv": "0.1.0"}
    pos = np.arange(3, dtype=np.int32) if positions is None else positions
    return capture.Captured(k, v, q, pos, meta)


def test_every_header_byte_flipped_is_refused_or_changes_nothing(tmp_path):
    """Flip each byte of the file's header (the 8-byte length and the JSON header holding the
    tensor table and the minimaxkv metadata) with four masks: every load either raises a
    ValueError or returns exactly the original tensors and metadata."""
    cap = _small_capture()
    raw = capture.save(tmp_path / "c.safetensors", cap).read_bytes()
    end = 8 + int.from_bytes(raw[:8], "little")
    bad = tmp_path / "b.safetensors"
    refused = unchanged = 0
    for i in range(end):
        for mask in (0x01, 0x04, 0x20, 0xFF):
            flipped = bytearray(raw)
            flipped[i] ^= mask
            bad.write_bytes(bytes(flipped))
            try:
                back = capture.load(bad)
            except ValueError:
                refused += 1
                continue
            assert back.meta == cap.meta, (i, mask)
            for a, b in zip(cap[:4], back[:4]):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            unchanged += 1
    assert refused + unchanged == 4 * end and refused > 0.9 * 4 * end, (refused, unchanged)


def test_capture_metadata_and_dtypes_are_checked(tmp_path):
    path = tmp_path / "c.safetensors"
    cases = [(lambda c: c._replace(keys=c.keys.astype(np.int32)), "floats of the recorded dtype"),
             (lambda c: c._replace(queries=c.queries.astype(np.float16)), "recorded dtype"),
             (lambda c: c._replace(positions=c.positions.astype(np.float32)), "integers"),
             (lambda c: c._replace(positions=np.array([0, 2, 1], np.int32)), "increasing"),
             (lambda c: c._replace(meta={**c.meta, "tokens": 4}), "records 4 tokens"),
             (lambda c: c._replace(meta={**c.meta, "rope": "interleaved"}), "RoPE layout"),
             (lambda c: c._replace(meta={k: v for k, v in c.meta.items() if k != "model"}),
              "lacks or mistypes \\['model'\\]"),
             (lambda c: c._replace(meta={**c.meta, "tokens": "3"}), "mistypes \\['tokens'\\]")]
    for change, message in cases:
        capture.save(path, change(_small_capture()))
        with pytest.raises(ValueError, match=message):
            capture.load(path)
    capture.save(path, _small_capture(np.float16))  # another float dtype, recorded: fine
    assert capture.load(path).keys.dtype == np.float16


def test_metadata_edited_in_place_fails_its_checksum(tmp_path):
    """The same model name written over the header (same length, valid JSON): refused."""
    path = capture.save(tmp_path / "c.safetensors", _small_capture())
    raw = path.read_bytes()
    assert raw.count(b"tiny-llama") == 1
    path.write_bytes(raw.replace(b"tiny-llama", b"tiny-lamma"))
    with pytest.raises(ValueError, match="metadata fails its checksum"):
        capture.load(path)
    from safetensors.numpy import save_file  # a file of the first format: no record checksum

    record = {"format": "minimaxkv/1", "meta": {}, "tensors": {}}
    save_file({}, str(tmp_path / "old.safetensors"), metadata={io.META_KEY: json.dumps(record)})
    with pytest.raises(ValueError, match="older minimaxkv .* capture it again"):
        capture.load(tmp_path / "old.safetensors")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    """Results and captures get the mode of a plain open() under the user's umask (compared with
    a file the operating system creates itself), not mkstemp's private 0600."""
    old = os.umask(mask)
    try:
        ours = io.write_json(tmp_path / "r.json", {"a": 1})
        theirs = tmp_path / "plain.txt"
        theirs.write_text("x")
        tensors = io.save_tensors(tmp_path / "t.safetensors", {"x": np.zeros(3)}, {})
    finally:
        os.umask(old)
    want = stat.S_IMODE(theirs.stat().st_mode)
    assert want == 0o666 & ~mask
    assert stat.S_IMODE(ours.stat().st_mode) == want
    assert stat.S_IMODE(tensors.stat().st_mode) == want


CHILD = """
import sys, time
from pathlib import Path
from minimaxkv import io

def slow(tmp):
    tmp.write_text("half")
    Path(sys.argv[2]).write_text("ready")
    time.sleep(120)

with io.sigterm_exits():
    io.atomic_write(sys.argv[1], slow)
"""
PARENT = """
import sys
from minimaxkv import io
from minimaxkv.experiments import common

with io.sigterm_exits():
    common.run_child([sys.executable] + sys.argv[1:])
"""


def test_sigterm_removes_temporary_files_in_the_child_too(tmp_path):
    """SIGTERM to a command (as `minimaxkv figures` runs experiments: a parent waiting on a child
    process) ends both, the child's half-written temporary file removed and no result created."""
    import subprocess
    import sys
    import time

    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    out, ready = tmp_path / "out" / "r.json", tmp_path / "ready"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"),
                             str(tmp_path / "child.py"), str(out), str(ready)])
    t0 = time.time()
    while not ready.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), "the child never started writing"
    assert len(list(out.parent.iterdir())) == 1  # the temporary file, while it writes
    proc.terminate()
    assert proc.wait(timeout=60) == 143
    assert list(out.parent.iterdir()) == []  # no temporary left, no half result


def test_temporaries_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    """A killed run's private temporary folder (with a writer's own temporary inside, as
    safetensors leaves) older than an hour goes on the next write of the same name; a recent one
    (perhaps another process writing) and other names' stay; a safetensors write leaves nothing
    but its file."""
    old, young, other = (tmp_path / n for n in (".r.json.ab12.tmp", ".r.json.cd34.tmp",
                                                ".q.json.ef56.tmp"))
    for folder in (old, young, other):
        folder.mkdir()
        (folder / ".tmpXy12Zq").write_bytes(b"half")
    stale = time.time() - 2 * io.STALE_SECONDS
    for folder in (old, other):
        os.utime(folder, (stale, stale))
    io.write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".r.json.cd34.tmp", ".q.json.ef56.tmp", "r.json"])
    io.save_tensors(tmp_path / "t.safetensors", {"x": np.zeros((256, 256))}, {"k": 1})
    assert "t.safetensors" in {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".t.safetensors")
                or (p.name.startswith(".tmp"))]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = io.write_json(tmp_path / "r.json", {"a": 1})

    def boom(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match="corrupt or truncated"):
        io.read_json(path)
