"""Files: atomic writes, and safetensors files carrying JSON metadata and per-tensor checksums.

A file is written to a temporary name in the target folder and renamed into place, so an
interrupted run leaves either the previous file or none, never half of one. Reading validates:
the header parses, the metadata record matches its own SHA-256, every tensor is present with the
recorded shape and dtype, its SHA-256 matches the one recorded at write time, and float tensors
hold no NaN/Inf; anything else raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FORMAT = "minimaxkv/2"
META_KEY = "minimaxkv"


@contextlib.contextmanager
def sigterm_exits():
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread instead of ending
    the process at once, so :func:`atomic_write` removes its temporary file and callers' cleanup
    runs (the previous handler is restored on leaving; a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; the file gets the
    mode a plain ``open(path, "w")`` would (0666 less the umask), not mkstemp's private 0600.

    The temporary file lives in a private folder ``.<name>.<random>.tmp`` beside ``path`` (writers'
    own temporaries, such as safetensors', land there too) that is removed whatever happens;
    such folders older than an hour -- left by a killed run -- are removed by the next write of
    the same name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = folder / path.name
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


STALE_SECONDS = 3600.0


def _remove_stale(path: Path) -> None:
    now = time.time()
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - old.lstat().st_mtime < STALE_SECONDS:
                continue  # perhaps another process writing right now
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=_json_default)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON, the file is corrupt or truncated ({err})") from err


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _record_digest(record: dict) -> str:
    """SHA-256 of a file's metadata record (everything but the digest itself), canonical JSON."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=_json_default).encode()).hexdigest()


def save_tensors(path, tensors: dict[str, np.ndarray], meta: dict) -> Path:
    """Write ``tensors`` and JSON ``meta`` to a safetensors file, atomically, with checksums of
    every tensor and of the metadata record itself."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    record = {"format": FORMAT, "meta": json.loads(json.dumps(meta, default=_json_default)),
              "tensors": {k: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": _digest(a)}
                          for k, a in arrays.items()}}
    record["sha256"] = _record_digest(record)
    header = {META_KEY: json.dumps(record, default=_json_default)}
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=header))


def _tensor_entry(info) -> bool:
    return (isinstance(info, dict) and isinstance(info.get("dtype"), str)
            and isinstance(info.get("sha256"), str) and isinstance(info.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                    for s in info["shape"]))


def load_tensors(path, required: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a file written by :func:`save_tensors`; returns ``(tensors, meta)``.

    Every failure is a ``ValueError`` naming the file: an unreadable safetensors header, a
    metadata record that is not valid JSON, of another format or failing its own checksum (a
    changed byte anywhere in the metadata), tensors missing, unrecorded or of another shape or
    dtype than recorded, a tensor failing its checksum, NaN/Inf in a float tensor."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own errors on bad headers / short files
        raise ValueError(f"{path}: not a readable safetensors file, it is corrupt or truncated "
                         f"({type(err).__name__}: {err})") from err
    if META_KEY not in header:
        raise ValueError(f"{path}: no minimaxkv metadata (not written by minimaxkv)")
    try:
        record = json.loads(header[META_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt metadata ({err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: corrupt metadata (not a JSON object)")
    if record.get("format") == "minimaxkv/1":
        raise ValueError(f"{path}: written by an older minimaxkv (format minimaxkv/1, whose "
                         "metadata has no checksum); capture it again")
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    if record.get("sha256") != _record_digest(record):
        raise ValueError(f"{path}: the metadata fails its checksum, the file is corrupt")
    listed = record.get("tensors")
    if not isinstance(record.get("meta"), dict) or not isinstance(listed, dict) or not all(
            _tensor_entry(info) for info in listed.values()):
        raise ValueError(f"{path}: malformed metadata (meta and per-tensor shape/dtype/sha256)")
    missing = [k for k in set(listed) | set(required) if k not in tensors]
    if missing:
        raise ValueError(f"{path}: tensors {sorted(missing)} are missing")
    extra = sorted(set(tensors) - set(listed))
    if extra:
        raise ValueError(f"{path}: tensors {extra} are not recorded in the metadata")
    for k, info in listed.items():
        a = tensors[k]
        if list(a.shape) != info["shape"] or str(a.dtype) != info["dtype"]:
            raise ValueError(f"{path}: tensor {k} has shape {list(a.shape)} {a.dtype}, the "
                             f"metadata records {info['shape']} {info['dtype']}")
        if _digest(a) != info["sha256"]:
            raise ValueError(f"{path}: tensor {k} fails its checksum, the file is corrupt")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ValueError(f"{path}: tensor {k} holds NaN or Inf")
    return tensors, record["meta"]


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def provenance() -> dict:
    """Package versions, git revision and time, recorded beside every result."""
    import platform
    import subprocess
    import time

    import jax

    from . import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {"versions": {"minimaxkv": __version__, "jax": jax.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "git": rev or None, "machine": platform.machine(),
            "devices": [str(d) for d in jax.devices()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
