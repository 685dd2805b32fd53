"""Calling a rule, the risk or the model again with the same shapes compiles nothing new.

Compilations are counted with JAX's own monitoring event for a backend compile
(``/jax/core/compile/backend_compile_duration``), so eager operations, ``jit``-ted functions and
the rules' cached executables are all seen; the event also marks an executable read back from
the persistent compilation cache that the test session keeps (tests/conftest.py), so a program
obtained again counts whether it is compiled or read. The first call of each case may compile;
the second, with new numbers of the same shapes (and a freshly looked-up rule), must not.
"""

from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_llama

import minimaxkv as mkv
from minimaxkv import model as M
from minimaxkv import rules

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
RULES = ["random", "window", "streaming_llm", "h2o", "snapkv", "tova", "knorm", "keydiff",
         "expected_attention", "leverage", "gvote", "kmeans_merge", "attention_matching",
         "minimax", "minimax_agnostic", "snapkv+fit"]


@contextmanager
def compiles():
    """A list that collects one entry per backend compilation inside the ``with`` block."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            seen.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _head(seed, n=96, d=8, g=2, p=6):
    r = np.random.default_rng(seed)
    cache = mkv.Cache(r.normal(size=(n, d)), r.normal(size=(n, d)), np.zeros(n))
    return cache, r.normal(size=(g, p, d))


def test_the_counter_sees_a_compilation():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x, y = jnp.asarray(np.arange(7.0)), jnp.asarray(np.arange(7.0) + 1)
    with compiles() as first:
        f(x).block_until_ready()
    with compiles() as again:
        f(y).block_until_ready()
    assert len(first) >= 1 and again == []


def test_the_counter_sees_a_program_read_back_from_the_compilation_cache():
    """A program the process has dropped (``jax.clear_caches``) but the session's persistent
    cache holds is read back, not compiled, and the counter still sees it."""
    f = lambda x: jnp.cos(x) * 2.0 - 5.0  # noqa: E731
    x = jnp.asarray(np.arange(5.0))
    reads = []

    def read_back(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            reads.append(event)

    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache even this one
    jax.monitoring.register_event_listener(read_back)
    try:
        with compiles() as first:
            jax.jit(f)(x).block_until_ready()
        assert len(first) == 1 and reads == []
        jax.clear_caches()
        with compiles() as again:
            jax.jit(f)(x).block_until_ready()
    finally:
        jax.monitoring.unregister_event_listener(read_back)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    assert len(again) == 1 and len(reads) == 1


def test_rules_do_not_recompile_for_the_same_shapes():
    assert set(RULES) <= set(rules.available())
    for name in RULES:
        rule = rules.get(name, theta=0.0)  # the caches have no RoPE
        cache, q = _head(0)
        rule(cache, 24, q, jax.random.PRNGKey(0)).cache.keys.block_until_ready()
        cache, q = _head(1)
        with compiles() as again:
            out = rule(cache, 24, q, jax.random.PRNGKey(1))
            jax.block_until_ready(out)
        assert again == [], f"rule {name!r} compiled again: {again}"


def test_risk_does_not_recompile():
    def call(seed):
        r = np.random.default_rng(seed)
        c = mkv.Cache(r.normal(size=(300, 8)), r.normal(size=(300, 4)), r.normal(size=300))
        s = mkv.Cache(r.normal(size=(20, 8)), r.normal(size=(20, 4)), r.normal(size=20))
        return mkv.risk(r.normal(size=(5, 8)), c, s, chunk=64).block_until_ready()

    call(0)
    with compiles() as again:
        call(1)
    assert again == [], again


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return M.load(tiny_llama.gguf_file(tmp_path_factory.mktemp("tiny_recompile"), seed=5))


def _prompt(m, seed, T=40):
    return np.random.default_rng(seed).integers(0, m.config.vocab, T)


def test_model_forward_and_decode_do_not_recompile(tiny):
    m = tiny

    def run(seed):
        ids = _prompt(m, seed)
        out = M.forward(m.params, m.config, jnp.asarray(ids), all_logits=False)
        buf = M.buffer(M.concat(M.empty_past(m.config), out.keys, out.values), 4)
        rows = []
        for i in range(3):  # new token, position and slot each step: all traced, not static
            row, buf = M.decode(m.params, m.config, int(ids[i]), len(ids) + i, buf, len(ids) + i)
            rows.append(row)
        full = M.logits(m, ids)
        return jax.block_until_ready((rows, full))

    run(0)
    with compiles() as again:
        run(1)
    assert again == [], again


def test_generate_does_not_recompile(tiny):
    M.generate(tiny, _prompt(tiny, 3), 5, stop=-1)
    with compiles() as again:
        M.generate(tiny, _prompt(tiny, 4), 5, stop=-1)
    assert again == [], again


# ------------------------------------------------------------------ a whole end-to-end sweep


def _digits_task(seed: int, length: int):
    """A task whose context is ``length`` digits: one token per digit under the tiny byte-level
    vocabulary (no merge touches digits), so the prefix length is known exactly."""
    from minimaxkv import tasks

    r = np.random.default_rng(seed)
    context = "".join(str(x) for x in r.integers(0, 10, length))
    return tasks.Task("digits", context, "?", (context[3:6],), seed)


def _sweep(model, rules, lengths, seeds):
    from minimaxkv import evaluate

    task_list = [_digits_task(seed, n) for n in lengths for seed in seeds]
    chosen = {name: evaluate.resolve(name) for name in rules}
    with compiles() as seen:
        rows = evaluate.sweep(model, task_list, chosen, [0.25, 0.5], query_aware=True,
                              observed=4, max_new=3, progress=False, key=jax.random.PRNGKey(0))
    assert len(rows) == len(task_list) * len(rules) * 2
    assert {r["prefix_tokens"] for r in rows} == {n + 1 for n in lengths}  # digits + "?"
    return seen, rows


def test_a_sweep_over_new_prompts_compiles_nothing_new(tiny):
    """Prompts of two context lengths, four rules (PyramidKV's per-layer budgets among them) and
    two budgets; then the same sweep over two new prompts of each length (new contents and
    answers, so new tokens and greedy answers for the model to read): not one compilation."""
    rules = ("snapkv", "minimax", "tova", "snapkv@pyramid")
    jax.clear_caches()
    first, _ = _sweep(tiny, rules, [37, 70], [0])
    again, _ = _sweep(tiny, rules, [37, 70], [1, 2])
    assert len(first) > 0 and again == [], again


def test_per_head_budgets_compile_one_program_per_capacity_bucket(tiny):
    """AdaKV and spectral budgets differ from head to head and prompt to prompt; each rule
    compiles one program per capacity bucket (at most the buckets up to n), not one per budget."""
    from minimaxkv import model as M

    seen, rows = _sweep(tiny, ("snapkv@adakv", "minimax@spectral"), [70], range(6))
    buckets = len({min(M.bucket(k), 71) for k in range(1, 72)})
    assert seen.count("jit(upto)") <= 2 * buckets
    # the allocations did vary, from head to head and from prompt to prompt
    from minimaxkv import budgets, evaluate

    seen_budgets = set()
    for seed in range(6):
        prep = evaluate.prepare(tiny, _digits_task(seed, 70), True)
        state = evaluate.prefill(tiny, prep.prefix, observed=4)
        for name in ("snapkv@adakv", "minimax@spectral"):
            b = evaluate.head_budgets(evaluate.resolve(name), state.past, state.queries,
                                      budgets.atoms(0.25, len(prep.prefix)))
            seen_budgets.add(tuple(np.asarray(b).ravel().tolist()))
    assert len(seen_budgets) > 2 and any(len(set(b)) > 1 for b in seen_budgets)


def test_prompts_of_nearby_lengths_share_the_models_programs(tiny):
    """Context lengths 37, 38 and 39 lie in one bucket (40): after a sweep at 37, the model's
    forward and decoding programs do not compile again for 38 and 39 (the rules compile once
    per length; one cheap rule is enough, the model's programs do not depend on it)."""
    rules = ("snapkv",)
    jax.clear_caches()
    first, _ = _sweep(tiny, rules, [37], [0])
    again, _ = _sweep(tiny, rules, [38, 39], [1])
    assert any(name in ("jit(_forward_impl)", "jit(_decode)") for name in first)
    assert not any(name in ("jit(_forward_impl)", "jit(_decode)") for name in again), again
