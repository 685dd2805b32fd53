"""Sweeps across processes: ``jax.distributed``, each process its shard, results gathered once.

A sweep (``minimaxkv analyze``'s heads, ``minimaxkv bench``'s prompts) runs as the same command in
every process. :func:`initialize` joins the processes the environment names:

* ``MINIMAXKV_COORDINATOR=host:port`` (process 0's host and a free port), ``MINIMAXKV_PROCESSES=N``
  and ``MINIMAXKV_PROCESS_ID=i`` (0 .. N-1), one command per process; or
* under SLURM (``srun``, more than one task): ``jax.distributed``'s own detection from SLURM's
  variables.

Each process then takes every ``N``-th item of the sweep (:func:`shard`), computes it, and
:func:`gather` brings every process's results to all of them in one all-gather (their JSON
bytes; collectives on CPU go through gloo). Process 0 alone writes stores, figures and tables.
A sweep's items are seeded by what they are (a head's key is its layer and index), not by the
process that runs them, so the results equal those of one process.
"""

from __future__ import annotations

import json
import os

import numpy as np

ENV = ("MINIMAXKV_COORDINATOR", "MINIMAXKV_PROCESSES", "MINIMAXKV_PROCESS_ID")


def initialize() -> int:
    """Join the processes the environment names (see the module docstring); returns how many
    there are (1: a single process, nothing joined). Safe to call twice."""
    import jax

    if _joined():
        return jax.process_count()
    given = {k: os.environ.get(k) for k in ENV}
    if given["MINIMAXKV_COORDINATOR"]:
        count, index = _int(given, "MINIMAXKV_PROCESSES"), _int(given, "MINIMAXKV_PROCESS_ID")
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"MINIMAXKV_PROCESSES={count}, MINIMAXKV_PROCESS_ID={index}: expected "
                             "N >= 1 processes and an index in 0..N-1")
        if count == 1:
            return 1
        args = dict(coordinator_address=given["MINIMAXKV_COORDINATOR"], num_processes=count,
                    process_id=index)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        args = {}  # jax.distributed reads SLURM's variables itself
    else:
        return 1
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    return jax.process_count()


def _joined() -> bool:
    """Whether this process has joined others already (without starting a backend)."""
    import jax

    if hasattr(jax.distributed, "is_initialized"):
        return jax.distributed.is_initialized()
    from jax._src import distributed as _d  # older JAX: no public test

    return getattr(_d.global_state, "client", None) is not None


def _int(given: dict, name: str) -> int:
    try:
        return int(given[name])
    except (TypeError, ValueError):
        raise ValueError(f"{name}={given[name]!r}: expected an integer (set with "
                         "MINIMAXKV_COORDINATOR)") from None


def index() -> int:
    """This process's index (0 when alone)."""
    import jax

    return jax.process_index()


def count() -> int:
    """How many processes share the sweep (1 when alone)."""
    import jax

    return jax.process_count()


def shard(items) -> list:
    """This process's share of ``items``: every ``count()``-th one from its ``index()``."""
    return list(items)[index()::count()]


def gather(results: list) -> list[list]:
    """Every process's ``results`` (JSON-serialisable), as one list per process in process order;
    ``[results]`` when alone."""
    if count() == 1:
        return [results]
    from jax.experimental import multihost_utils

    from .io import _json_default

    data = np.frombuffer(json.dumps(results, default=_json_default).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64)))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(b[:int(k)]).decode()) for b, k in zip(every, sizes.ravel())]
