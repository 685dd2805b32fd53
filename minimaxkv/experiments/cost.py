"""(h) Cost vs cache length: time and memory of risk evaluation and of every rule, per head.

For synthetic heads of n atoms (``power_law`` family, float32, d = dv = ``d``): the wall time of
the risk of a summary (``fraction * n`` atoms) on ``p`` queries for n in ``risk_ns``, dense (the
p x n attention materialised) and chunked (online softmax over key blocks), and for n in ``ns``
of each rule compressing the head to ``fraction * n`` atoms from ``observed`` queries -- first call (compilation included) and steady state (median of
``repeats``). Memory is XLA's own account of the compiled executable (arguments + outputs +
temporaries, ``compiled.memory_analysis()``), which is the peak the computation can reach.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from minimaxkv.experiments import common

RULES = ("streaming_llm", "snapkv", "tova", "expected_attention", "gvote", "kmeans_merge",
         "attention_matching", "minimax", "minimax_agnostic")

CONFIGS = {
    "tiny": {"ns": [64], "risk_ns": [64, 256], "d": 16, "p": 16, "observed": 8, "fraction": 0.25,
             "chunk": 32, "rules": ["snapkv", "minimax"], "repeats": 1, "seed": 0},
    "quick": {"ns": [256, 512, 1024, 2048], "risk_ns": [1024, 4096, 16384, 65536], "d": 64, "p": 256, "observed": 32, "fraction": 0.1,
              "chunk": 256, "rules": list(RULES), "repeats": 3, "seed": 0},
    "full": {"ns": [512, 1024, 2048, 4096, 8192, 16384],
             "risk_ns": [1024, 4096, 16384, 65536, 262144], "d": 64, "p": 1024, "observed": 64,
             "fraction": 0.1, "chunk": 1024, "rules": list(RULES), "repeats": 5, "seed": 0},
}


def _timed(fn, repeats: int):
    """``(first-call seconds, median steady-state seconds)`` of ``fn()``."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def _bytes(compiled) -> int:
    """Arguments + outputs + temporaries of a compiled executable (XLA's memory analysis)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def run(config: dict) -> dict:
    """``{"ns": [...], "risk": {"dense"|"chunked": {"first", "steady", "bytes"}},
    "rules": {rule: {"first", "steady", "bytes"}}}`` (lists over ``ns``)."""
    import jax
    import jax.numpy as jnp

    from minimaxkv import budgets, rules, synthetic
    from minimaxkv.risk import risk
    from minimaxkv.rules.base import _jitted

    d, p, obs = config["d"], config["p"], config["observed"]
    out = {"ns": config["ns"], "risk_ns": config["risk_ns"], "budgets": [], "risk": {},
           "rules": {}}
    cell = lambda: {"first": [], "steady": [], "bytes": []}  # noqa: E731

    def head(n):
        inst = synthetic.make("power_law", jax.random.PRNGKey(config["seed"]), n=n, d=d, dv=d,
                              p=p + obs, dtype=jnp.float32)
        return (inst.cache, inst.queries[:p], inst.queries[p:], budgets.atoms(config["fraction"], n),
                inst.theta)

    for n in tqdm(config["risk_ns"], desc="cost: risk"):
        cache, probes, observed, m, _ = head(n)
        summary = rules.get("streaming_llm")(cache, m).cache
        for mode, chunk in (("dense", n), ("chunked", min(config["chunk"], n))):
            fn = jax.jit(lambda q, c, s, chunk=chunk: risk(q, c, s, chunk=chunk))
            first, steady = _timed(lambda: fn(probes, cache, summary), config["repeats"])
            row = out["risk"].setdefault(mode, cell())
            row["first"].append(first)
            row["steady"].append(steady)
            row["bytes"].append(_bytes(fn.lower(probes, cache, summary).compile()))
    for n in tqdm(config["ns"], desc="cost: rules"):
        cache, probes, observed, m, theta = head(n)
        out["budgets"].append(m)
        for name in config["rules"]:
            rule = rules.get(name, theta=theta)
            key = jax.random.PRNGKey(1)
            first, steady = _timed(lambda: rule(cache, m, observed, key).cache.keys,
                                   config["repeats"])
            q = rules.group_queries(observed, d)
            row = out["rules"].setdefault(name, cell())
            row["first"].append(first)
            row["steady"].append(steady)
            row["bytes"].append(_bytes(_jitted(rule.compress).lower(cache, m, q, key).compile()))
    return out


if __name__ == "__main__":
    raise SystemExit(common.main("cost"))
