"""Shared machinery of the experiments: paths, config hashes and cached results.

Every experiment module ``minimaxkv/experiments/<name>.py`` exposes ``CONFIGS = {"tiny", "quick", "full"}``
and a pure ``run(config) -> dict`` (JSON-serialisable). :func:`ensure` stores the result of
``run`` atomically at ``results/<name>-<scale>.json`` with its config, a hash of the config and
of the experiment's source (:func:`key`), seed and provenance, and reuses that file while the hash
matches (the library's code is not in the hash: recompute with ``force`` after changing it).
An interrupted run keeps every result already stored.

Folders: ``results/`` and ``figures/`` under the current folder (never inside the installed
package), overridable with the environment variables ``MINIMAXKV_RESULTS`` and
``MINIMAXKV_FIGURES`` (``minimaxkv figures --results DIR --figures DIR`` sets them) or a ``root``
argument.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

from minimaxkv import io

SCALES = ("tiny", "quick", "full")
EXPERIMENTS = ("risk_vs_budget", "spectra", "aware_vs_agnostic", "causal", "lookup_support",
               "real_heads", "predictions", "end_to_end", "cost")


def results_dir(root=None) -> Path:
    """Folder of cached results: ``root``, else ``$MINIMAXKV_RESULTS``, else ``./results``."""
    return Path(root or os.environ.get("MINIMAXKV_RESULTS") or Path.cwd() / "results")


def figures_dir(root=None) -> Path:
    """Folder of figures: ``root``, else ``$MINIMAXKV_FIGURES``, else ``./figures``."""
    return Path(root or os.environ.get("MINIMAXKV_FIGURES") or Path.cwd() / "figures")


def check_name(name: str) -> str:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    return name


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    return scale


def module(name: str):
    """The experiment module ``minimaxkv.experiments.<name>``."""
    return importlib.import_module(f"{__package__}.{check_name(name)}")


def config(name: str, scale: str) -> dict:
    """The configuration of experiment ``name`` at ``scale``."""
    return dict(module(name).CONFIGS[check_scale(scale)])


def key(name: str, scale: str) -> str:
    """The cache key of a result: a hash of the config and of the experiment's own source file
    (editing an experiment invalidates its results; editing the library does not: use --force)."""
    import hashlib

    source = hashlib.sha256(Path(module(name).__file__).read_bytes()).hexdigest()
    return io.config_hash({"config": config(name, scale), "source": source})


def result_path(name: str, scale: str, root=None) -> Path:
    return results_dir(root) / f"{check_name(name)}-{check_scale(scale)}.json"


def cached(name: str, scale: str, root=None) -> dict | None:
    """The stored result if its config hash matches the current config, else ``None``."""
    path = result_path(name, scale, root)
    if not path.is_file():
        return None
    try:
        saved = io.read_json(path)
    except ValueError:  # corrupt or truncated: recompute
        return None
    return saved if saved.get("hash") == key(name, scale) else None


def load(name: str, scale: str, root=None) -> dict:
    """The stored result (for figure scripts); a clear error if it is missing or stale."""
    saved = cached(name, scale, root)
    if saved is None:
        raise FileNotFoundError(f"{result_path(name, scale, root)}: no up-to-date result; run "
                                f"`minimaxkv figures --scale {scale} --only {name}`")
    return saved


def rows_path(name: str, scale: str, root=None) -> Path:
    """Where an experiment that stores its rows as they finish (``ROWS = True``: its ``run``
    takes ``rows=PATH``, a :mod:`minimaxkv.store`) keeps them until its result is stored; named
    by the result's hash, so an edited experiment starts afresh."""
    tag = key(name, scale)[:12]
    return results_dir(root) / f"{check_name(name)}-{check_scale(scale)}.rows-{tag}.json"


def compute(name: str, scale: str, root=None, *, fresh: bool = False) -> dict:
    """Run experiment ``name`` at ``scale`` and store its result atomically; returns the record
    (with the run's peak number of memory mappings and the system's limit, where known). What
    the experiment compiled is released afterwards (``jax.clear_caches``).

    An experiment with ``ROWS = True`` resumes from the rows an interrupted run stored
    (:func:`rows_path`; ``fresh`` discards them) and its rows file is removed once the result is
    stored."""
    import jax

    from minimaxkv import programs

    cfg = config(name, scale)
    t0 = time.perf_counter()
    mod = module(name)
    kwargs = {}
    if getattr(mod, "ROWS", False):
        kwargs["rows"] = rows_path(name, scale, root)
        for old in results_dir(root).glob(f"{name}-{scale}.rows-*.json"):
            if fresh or old != kwargs["rows"]:
                old.unlink()
    # a module with FLOAT64 = True computes in float64 (as ``minimaxkv compare`` does), for
    # this run only
    precision = jax.enable_x64(True) if getattr(mod, "FLOAT64", False) else contextlib.nullcontext()
    try:
        with programs.PeakMappings() as peak, precision:
            out = mod.run(cfg, **kwargs)
    finally:
        jax.clear_caches()
    record = {"name": name, "scale": scale, "config": cfg, "hash": key(name, scale),
              "seed": cfg.get("seed", cfg.get("seeds")), "seconds": time.perf_counter() - t0,
              "peak_mappings": peak.peak, "mapping_limit": peak.limit, "result": out,
              **io.provenance()}
    io.write_json(result_path(name, scale, root), record)
    if "rows" in kwargs:
        kwargs["rows"].unlink(missing_ok=True)
        kwargs["rows"].with_name(f".{kwargs['rows'].name}.lock").unlink(missing_ok=True)
    return record


def describe(record: dict) -> str:
    """``"123.4 s of compute, peak memory mappings P of the limit L (x %)"`` of a record."""
    text = f"{record['seconds']:.1f} s of compute"
    peak, limit = record.get("peak_mappings"), record.get("mapping_limit")
    if peak is not None and limit:
        text += f", peak memory mappings {peak:,} of the limit {limit:,} ({100 * peak / limit:.1f} %)"
    return text


def ensure(name: str, scale: str, *, force: bool = False, root=None) -> tuple[dict, bool]:
    """The result of ``name`` at ``scale``: ``(record, computed)``; reuses a matching cache."""
    saved = None if force else cached(name, scale, root)
    if saved is not None:
        return saved, False
    return compute(name, scale, root, fresh=force), True


@functools.lru_cache(maxsize=2)
def smollm2():
    """The embedded SmolLM2-135M (loaded once per process)."""
    from minimaxkv import model

    return model.load("smollm2")


def text_ids(text: str, tokens: int):
    """The first ``tokens`` token ids of the packaged text ``minimaxkv/data/<text>.txt``."""
    from importlib import resources

    src = resources.files("minimaxkv").joinpath(f"data/{text}.txt").read_text(encoding="utf-8")
    ids = smollm2().tokenizer.encode(src)
    if len(ids) < tokens:
        raise ValueError(f"data/{text}.txt has {len(ids)} tokens, fewer than the {tokens} asked for")
    return ids[:tokens]


@functools.lru_cache(maxsize=2)
def smollm2_capture(text: str, tokens: int):
    """Post-RoPE keys, values and queries of SmolLM2 on the first ``tokens`` tokens of ``text``."""
    from minimaxkv import capture

    return capture.capture(smollm2(), text_ids(text, tokens), source=f"minimaxkv/data/{text}.txt")


def main(name: str, argv=None) -> int:
    """``python -m minimaxkv.experiments.<name> [--scale S] [--force]``: compute or reuse one
    result."""
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}.{name}",
                                 description=module(name).__doc__)
    ap.add_argument("--scale", default="quick", choices=SCALES)
    ap.add_argument("--force", action="store_true", help="recompute even if cached")
    args = ap.parse_args(argv)
    from minimaxkv import io

    with io.sigterm_exits():  # a terminated run removes its temporary files
        record, computed = ensure(name, args.scale, force=args.force)
    print(f"{name}-{args.scale}: {'computed' if computed else 'reused'} "
          f"{result_path(name, args.scale)} ({describe(record)})", flush=True)
    return 0


def refresh(names, scale: str, *, results=None, figures=None, force: bool = False,
            say=functools.partial(print, flush=True)) -> list[str]:
    """Compute every missing or stale result of the experiments ``names`` at ``scale`` (all with
    ``force``), then draw every figure whose result exists; returns what failed (experiment
    names, ``"figure NAME"``), each said as it happens.

    Each experiment to compute runs in a process of its own (``python -m
    minimaxkv.experiments.NAME``): what it compiled is released when it ends, and its failure --
    even a crash of the compiler -- loses nothing the others stored. The processes share a
    persistent compilation cache in ``<results>/.xla-cache``. A failed experiment or figure does
    not stop the others."""
    from minimaxkv.paper_figures import common as figs

    names = [check_name(name) for name in names]
    check_scale(scale)
    results = results_dir(results).resolve()
    figures = figures_dir(figures).resolve()
    env = dict(os.environ, MINIMAXKV_RESULTS=str(results), MINIMAXKV_FIGURES=str(figures))
    # one persistent compilation cache for the experiments' processes: a program one of them
    # compiled (or that a cleared cache drops) is read back from disk, not compiled again
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(results / ".xla-cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    failed = []
    for name in names:
        t0 = time.perf_counter()
        if not force and cached(name, scale, results) is not None:
            say(f"{name}: reused {result_path(name, scale, results)}")
            continue
        cmd = [sys.executable, "-m", f"{__package__}.{name}", "--scale", scale]
        code = run_child(cmd + ["--force"] * force, env)
        took = f"{time.perf_counter() - t0:.1f} s"
        if code != 0:
            failed.append(name)
            say(f"{name}: FAILED (exit code {code}, after {took}); the other experiments go on")
        else:
            what = "recomputed (--force)" if force else "computed (missing or stale)"
            say(f"{name}: {what} {result_path(name, scale, results)} ({took})")
    for name in names:
        try:
            paths = figs.render(name, scale, results=results, out=figures)
        except FileNotFoundError:
            say(f"figure {name}: not drawn (no up-to-date result)")
            continue
        except Exception as err:  # a figure that fails must not stop the others
            failed.append(f"figure {name}")
            say(f"figure {name}: FAILED ({type(err).__name__}: {err})")
            continue
        say(f"figure {name}: {' '.join(str(p) for p in paths)}")
    return failed


def run_child(cmd: list[str], env=None, grace: float = 30.0) -> int:
    """Run ``cmd`` and return its exit status; if this process is interrupted or terminated
    meanwhile, the child is sent SIGTERM (its own cleanup runs: temporary files removed), given
    ``grace`` seconds, then killed, and the interruption goes on."""
    child = subprocess.Popen(cmd, env=env)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
