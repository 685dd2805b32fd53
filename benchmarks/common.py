"""Shared machinery of the benchmarks: timing, peak memory, the machine's matmul rate, tables.

* :func:`timed` runs several implementations **interleaved** (one call of each per round, after a
  warm-up call that includes compilation), so slow drifts of a shared machine hit them alike; it
  reports the best and the median of the rounds and the first (compiling) call.
* :func:`peak_rss` measures peak memory the same way for every implementation: in a fresh Python
  subprocess, after a warm-up call, the rise of the resident set's high-water mark (``VmHWM``,
  reset through ``/proc/self/clear_refs``) during one more call, above the resident set just
  before it. glibc's malloc is told to hand every block of 64 KiB or more straight back to the
  system (``MALLOC_MMAP_THRESHOLD_``), so memory freed by the warm-up call cannot hide the next
  call's allocations. Linux only; elsewhere the column reads ``n/a``.
* :func:`matmul_rates` is the machine's float32 matrix-multiply rate, measured in the same run
  with ``jax.numpy`` (XLA) and with NumPy (its BLAS).
* :func:`machine` records the CPU model, core count, memory, library versions, XLA flags and the
  load average when the benchmark started.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def parser(description: str) -> argparse.ArgumentParser:
    """The benchmark command line: ``--quick`` (a small run), ``--repeat`` and ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test, minutes)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed rounds after the warm-up (default 5, 3 with --quick)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated sizes instead of the default list")
    p.add_argument("--out", type=Path, default=None,
                   help="result folder (default $MINIMAXKV_RESULTS/bench or results/bench)")
    return p


def repeats(args) -> int:
    return args.repeat if args.repeat else (3 if args.quick else 5)


# ------------------------------------------------------------------------------- timing


def block(x):
    """Wait for every array in ``x`` (JAX arrays, NumPy arrays, torch tensors, pytrees)."""
    import jax

    return jax.block_until_ready(x)


def timed(fns: dict, repeat: int = 5, warmup: int = 1, pause: float = 0.3) -> dict:
    """Time zero-argument callables side by side.

    Each callable is called ``warmup`` times (the first call, compilation included, is reported
    as ``first_s``), then ``repeat`` rounds call every callable once in turn. Every call is
    preceded by a ``pause`` of idle time, so that worker threads another library left
    spin-waiting (OpenBLAS, OpenMP, XLA's pool) are asleep before the clock starts. Returns
    ``{name: {"first_s", "best_s", "median_s", "times_s"}}``.
    """
    out = {}
    for name, fn in fns.items():
        time.sleep(pause)
        t0 = time.perf_counter()
        block(fn())
        first = time.perf_counter() - t0
        for _ in range(warmup - 1):
            block(fn())
        out[name] = {"first_s": first, "times_s": []}
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            block(fn())
            out[name]["times_s"].append(time.perf_counter() - t0)
    for r in out.values():
        r["best_s"] = min(r["times_s"]) if r["times_s"] else r["first_s"]
        r["median_s"] = statistics.median(r["times_s"]) if r["times_s"] else r["first_s"]
    return out


def matmul_rates(n: int = 4096, repeat: int = 5) -> dict:
    """Float32 ``[n, n] @ [n, n]`` in GFLOP/s (2 n^3 FLOPs), best of ``repeat``: XLA and NumPy."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    t = timed({"jax": lambda: mm(aj, bj), "numpy": lambda: a @ b}, repeat)
    flops = 2.0 * n ** 3
    return {"n": n, "jax_gflops": flops / t["jax"]["best_s"] / 1e9,
            "numpy_gflops": flops / t["numpy"]["best_s"] / 1e9}


# ------------------------------------------------------------------------------- memory


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss(target: str, timeout: float = 1800, **kwargs) -> dict:
    """Peak memory of one warm call, measured in a fresh subprocess.

    ``target`` is ``"module:function"``; ``function(**kwargs)`` builds the inputs and returns a
    zero-argument callable. Returns ``{"bytes": peak rise of the resident set during the call,
    "rss_before": resident set before it, "method": ...}``, or ``{"bytes": None, "error": ...}``.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "benchmarks.common", "--peak", target, json.dumps(kwargs)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"bytes": None, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"bytes": None, "error": (r.stderr or r.stdout)[-2000:]}
    return json.loads(lines[-1])


def _peak_child(target: str, kwargs: dict):
    mod, fn = target.split(":")
    run = getattr(importlib.import_module(mod), fn)(**kwargs)
    block(run())  # warm-up: compilation, first-touch of caches
    gc.collect()
    _trim()
    before = _status("VmRSS")
    if before is None or not _reset_peak():
        print(json.dumps({"bytes": None, "error": "needs Linux /proc/self/clear_refs"}))
        return
    block(run())
    peak = _status("VmHWM")
    print(json.dumps({"bytes": peak - before, "rss_before": before,
                      "method": "VmHWM rise during one warm call (fresh subprocess)"}))


# ------------------------------------------------------------------------------- machine


def machine() -> dict:
    """CPU model, cores, memory, versions, XLA flags and the load average at start."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory_bytes": mem,
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "numpy": np.__version__,
            "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_at_start": LOAD_AT_START}


def machine_line(m: dict) -> str:
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else ""
    load = m.get("load_average_at_start")
    return (f"{m['cpu']}, {m['usable_cores']} cores{mem}; jax {m['jax']} "
            f"({m['jax_backend']}, {len(m['jax_devices'])} device(s)); numpy {m['numpy']}"
            + (f"; load average at start {load[0]:.2f}" if load else ""))


# ------------------------------------------------------------------------------- output


def mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table (right-aligned columns), returned and printed."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in width)
    text = [ "  ".join(c.rjust(w) for c, w in zip(cells[0], width)), line]
    text += ["  ".join(c.rjust(w) for c, w in zip(r, width)) for r in cells[1:]]
    out = "\n".join(text)
    print(out, flush=True)
    return out


def save(name: str, args, payload: dict) -> Path:
    """Write ``payload`` with provenance and machine facts to ``results/bench/<name>.json``."""
    from minimaxkv import io

    folder = args.out or Path(os.environ.get("MINIMAXKV_RESULTS") or REPO / "results") / "bench"
    path = folder / f"{name}{'-quick' if args.quick else ''}.json"
    record = {"benchmark": name, "quick": bool(args.quick), "command": " ".join(sys.argv),
              "provenance": io.provenance(), "machine": machine(), **payload}
    io.write_json(path, record)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        _peak_child(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit("usage: python -m benchmarks.common --peak module:function '{json kwargs}'")
