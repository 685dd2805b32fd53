"""Results stores: JSON files of rows, each row keyed by everything that produced it.

A store holds the rows of many commands at once. A row carries the ``config`` of the run that
computed it (model, task, protocol, ...) and its own identity within that run (a rule, a budget,
a sample, a head); its ``key`` hashes both. Adding rows merges them into the store under a file
lock: a row with a new key is appended, a row with a known key replaces the old one, and no other
row is touched, so commands with overlapping or disjoint rules and budgets (or different
configurations altogether) share one store and never overwrite each other's results. Every write
is atomic (:func:`minimaxkv.io.atomic_write`), so an interrupted command leaves every row it
finished.

A store that cannot be read (truncated, edited, another program's file) is an error naming the
remedy: ``--force`` sets the unreadable file aside as ``NAME.corrupt-TIME`` and starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from . import io

FORMAT = "minimaxkv-rows/1"


def results_dir() -> Path:
    """``$MINIMAXKV_RESULTS`` if set, else ``./results``."""
    return Path(os.environ.get("MINIMAXKV_RESULTS") or "results")


def row_key(config: dict, ident: dict) -> str:
    """The key of one row: a hash of its run's ``config`` and its identity ``ident`` in the run."""
    return io.config_hash({"config": config, "row": ident})


def keyed(row: dict, config: dict, ident_fields) -> dict:
    """``row`` with its ``config`` and ``key`` (from the fields ``ident_fields`` of the row)."""
    return {**row, "config": config,
            "key": row_key(config, {f: row[f] for f in ident_fields})}


def _unreadable(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a readable results store ({why}); run again with --force to "
                      f"set it aside as {path.name}.corrupt-TIME and start a new store")


def read(path) -> list[dict]:
    """Every row of the store at ``path`` (``[]`` if there is no file yet)."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise _unreadable(path, "not a file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _unreadable(path, f"not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _unreadable(path, f"format {got!r}, expected {FORMAT!r}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("config"), dict)
            for r in rows):
        raise _unreadable(path, "its rows are not a list of keyed rows")
    return rows


def of_config(rows: list[dict], config: dict) -> list[dict]:
    """The rows computed under ``config``."""
    return [r for r in rows if r["config"] == config]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add(path, rows: list[dict]) -> list[dict]:
    """Merge keyed ``rows`` (see :func:`keyed`) into the store at ``path``; returns all its rows.

    Rows already in the store keep their place; a new row with a known key replaces the old
    one."""
    path = Path(path)
    with _locked(path):
        merged = {r["key"]: r for r in read(path)}
        for r in rows:
            if not isinstance(r.get("key"), str) or not isinstance(r.get("config"), dict):
                raise ValueError("store.add: every row needs a 'key' and a 'config' (store.keyed)")
            merged[r["key"]] = r
        out = list(merged.values())
        io.write_json(path, {"format": FORMAT, "rows": out})
    return out


def set_aside(path) -> Path | None:
    """Rename an unreadable store to ``NAME.corrupt-TIME`` (nothing is deleted); returns the new
    name, or ``None`` if the store is readable or absent."""
    path = Path(path)
    with _locked(path):
        try:
            read(path)
            return None
        except ValueError:
            new = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(path, new)
            return new


def default_path(command: str) -> Path:
    """The store a command writes when given no ``--out``: ``<results>/evaluate.json`` for
    ``evaluate``, ``<results>/analyze.json`` for ``analyze`` and ``compare --cache`` (they share
    their rows)."""
    return results_dir() / ("evaluate.json" if command == "evaluate" else "analyze.json")


def resume(path, config: dict, *, force: bool = False) -> list[dict]:
    """The rows of ``config`` already in the store at ``path``, from which a command resumes;
    with ``force`` none, and an unreadable store is set aside (said on stderr) instead of being
    an error."""
    path = Path(path)
    if force:
        moved = set_aside(path)
        if moved is not None:
            print(f"{path}: not a readable results store, set aside as {moved}", file=sys.stderr)
        read(path)  # what is left there must still be a store (absent, or not a folder)
        return []
    return of_config(read(path), config)
