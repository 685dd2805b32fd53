r"""End to end: a real model reading compressed caches, against the same model with the full cache.

Protocol (the fair comparison of the field: same prompts, same budgets in bytes, same metrics):

1. The **context** (instructions + haystack) is prefilled. Every layer and KV head is compressed to
   ``budget`` atoms by the rule, seeing the queries of the last ``observed`` context tokens. With
   ``block`` set, compression is causal during prefill: the context is read block by block, each
   block attending to the compressed prefix, and summary + block are compressed back to the budget
   after each block.
2. The **question** is appended afterwards (query-agnostic compression), or, with
   ``query_aware=True``, before compression, so the rule sees the question's queries (the SnapKV
   protocol). Question and answer tokens attend to the summary plus their own exact keys.
3. Metrics over the teacher-forced continuation (question + gold answer; answer only when query-
   aware): mean next-token :math:`\mathrm{KL}(p_{full}\,\|\,p_{compressed})`, top-1 agreement, and
   the perplexity of the gold answer; the task score of a greedy answer (string match); the bytes
   of the compressed cache (keys + values + log-weights of every layer and KV head) and the
   compression time.

With a budget that keeps every atom the compressed run *is* the full run: every metric equals the
full cache's exactly.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _check
from . import budgets as budgets_mod
from . import kvzip as kvzip_mod
from . import tasks as tasks_mod
from .cache import Cache, Summary, live_atoms, live_bytes
from .model import (Model, bucket, buffer, concat, decode, empty_past, forward, generate,
                    pad_tokens)
from .rules.base import Rule, layer_summaries, pad


class Prepared(NamedTuple):
    """Token ids of one task: ``prefix`` is compressed, ``cont`` is teacher-forced after it."""

    task: tasks_mod.Task
    prefix: np.ndarray
    cont: np.ndarray  # question (unless query-aware) + gold answer
    answer: int  # the gold answer is the last ``answer`` tokens of ``cont``


def prepare(model: Model, task: tasks_mod.Task, query_aware: bool = False) -> Prepared:
    """Tokenize a task for the protocol: what is compressed, what is read afterwards."""
    tok = model.tokenizer
    ctx, q = tok.encode(task.context), tok.encode(task.question)
    ans = tok.encode(" " + ", ".join(task.answers))
    prefix, cont = (ctx + q, ans) if query_aware else (ctx, q + ans)
    return Prepared(task, np.asarray(prefix, np.int32), np.asarray(cont, np.int32), len(ans))


ALLOCATIONS = ("pyramid", "adakv", "spectral")


class Allocated(NamedTuple):
    """A rule with per-head budgets of the same total: ``alloc`` is ``"pyramid"``
    (PyramidKV's linear layer budgets), ``"adakv"`` (AdaKV: heads of a layer compete with the
    rule's own scores; scored rules only) or ``"spectral"`` (ours: every head's response-covariance
    eigenvalues on its observed queries compete for the total,
    :func:`minimaxkv.rules.allocation.spectral_budgets`). Named ``"rule@alloc"``."""

    rule: Rule
    alloc: str

    @property
    def name(self) -> str:
        return f"{self.rule.name}@{self.alloc}"


def resolve(name: str, **hyper):
    """A registry rule, or an :class:`Allocated` rule for ``"rule@alloc"``, built with
    ``hyper`` (e.g. the model's RoPE base ``theta``; see :func:`minimaxkv.rules.get`); ``"kvzip"``
    is the model-level :class:`minimaxkv.kvzip.KVzip` (``hyper`` unused)."""
    from . import rules
    from .kvzip import KVzip

    base, _, alloc = name.partition("@")
    if base == "kvzip":  # a rule of the whole model, with its own allocation (mkv.kvzip)
        if alloc:
            raise ValueError(f"{name!r}: kvzip allocates over every layer and head itself; "
                             "use 'kvzip'")
        return KVzip()
    rule = rules.get(base, **hyper)
    if not alloc:
        return rule
    if alloc not in ALLOCATIONS:
        raise ValueError(f"{name!r}: unknown allocation {alloc!r}; expected one of "
                         f"{', '.join(ALLOCATIONS)}")
    if alloc == "adakv" and rule.score is None:
        raise ValueError(f"{name!r}: adakv needs a scored rule (one with per-atom scores); "
                         f"{base!r} has none")
    return Allocated(rule, alloc)


def head_budgets(rule: Allocated, past: Cache, queries, budget: int, key=None) -> np.ndarray:
    """Per-head budgets ``[L, Hkv]`` of ``rule.alloc`` with mean at most ``budget``: exact when
    the rule takes traced budgets (:meth:`~minimaxkv.rules.Rule.padded`: one program for every
    budget), else multiples of ``max(1, budget // 4)`` (few programs, see
    :func:`minimaxkv.rules.allocation.quantized`)."""
    from .compressibility import spectrum
    from .rules import allocation

    L, K, n, hd = past.keys.shape
    unit = 1 if rule.rule.upto is not None else max(1, budget // 4)
    q = queries.reshape(L, K, queries.shape[1] // K, queries.shape[2], hd)
    if rule.alloc == "pyramid":
        exact = np.repeat(allocation.pyramid_budgets(budget, L)[:, None], K, 1)
    elif rule.alloc == "adakv":
        exact = np.stack([allocation.adakv_budgets(np.stack([np.asarray(rule.rule.score(
            Cache(past.keys[i, h], past.values[i, h], past.logw[i, h]), q[i, h],
            rule.rule.checked_key(key)))
            for h in range(K)]), budget) for i in range(L)])
    else:
        spectra = np.stack([np.asarray(spectrum(q[i, h].reshape(-1, hd), Cache(
            past.keys[i, h], past.values[i, h], past.logw[i, h]))) for i in range(L)
            for h in range(K)])
        exact = allocation.spectral_budgets(spectra, L * K * budget).reshape(L, K)
    return allocation.quantized(exact.ravel(), L * K * budget, n, unit).reshape(L, K)


def compress(rule, past: Cache, budget: int, queries, key=None) -> Cache:
    """Every layer and KV head of ``past`` ``[L, Hkv, n, hd]`` compressed to ``budget`` atoms, the
    rule seeing each head's group of observed queries (``queries [L, H, p, hd]``, the last p
    tokens of ``past``); ``key`` is split into one key per head for a rule that draws random
    numbers (``Rule.randomized``: it refuses ``None``; the others never read it). An
    :class:`Allocated` rule gives each head its own budget (mean at most
    ``budget``); its summaries are padded to the largest with empty atoms (log-weight -inf, which
    attention ignores and :func:`metrics` does not count) by :meth:`~minimaxkv.rules.Rule.padded`,
    which compiles one program for all the budgets when the rule allows it.

    Every head goes through one compiled program (:func:`minimaxkv.rules.base.compress_heads`, a
    ``lax.map`` over the heads: the memory of one head; a ``vmap`` of every head stalled XLA:CPU
    on the ``minimax`` rule at n = 1.5k); per-head budgets need the rule's traced-budget form
    (``upto``), without it the heads go one at a time. A ``layer_shared`` rule selects one set per
    layer (:func:`minimaxkv.rules.base.layer_summaries`)."""
    L, K, n, hd = past.keys.shape
    if budget >= n:
        return past
    H, p = queries.shape[1], queries.shape[2]
    q = queries.reshape(L, K, H // K, p, hd)
    # one key per head for a rule that draws random numbers (none without: it refuses None)
    keys = None if key is None else jax.random.split(key, L * K).reshape(L, K, -1)
    head_key = (lambda i, h: None) if keys is None else (lambda i, h: keys[i, h])
    if isinstance(rule, Allocated):
        sizes = head_budgets(rule, past, queries, budget, key)
        rule = rule.rule
    else:
        sizes = np.full((L, K), budget)
    top = int(sizes.max())
    # heads given every atom stay exact; the others share one capacity (a bucket: few programs)
    below = sizes[sizes < n]
    capacity = min(bucket(int(below.max())), n) if below.size else n
    size = n if top == n else capacity

    def one(i, h):
        head = Cache(past.keys[i, h], past.values[i, h], past.logw[i, h])
        m = int(sizes[i, h])
        if (sizes == top).all() or m == n:
            return pad(rule(head, m, q[i, h], head_key(i, h)), size).cache
        return pad(rule.padded(head, capacity, m, q[i, h], head_key(i, h)), size).cache

    if rule.layer_shared:  # one order per layer from the mean score of its KV heads
        out = [pad(s, size).cache for i in range(L) for s in layer_summaries(
            rule, [Cache(past.keys[i, h], past.values[i, h], past.logw[i, h]) for h in range(K)],
            list(q[i]), sizes[i], size, [head_key(i, h) for h in range(K)])]
    elif (sizes == top).all() or rule.upto is not None:
        return _compress_batched(rule, past, sizes, capacity, size, q, keys)
    else:
        out = [one(i, h) for i in range(L) for h in range(K)]
    return Cache(*(jnp.stack(field).reshape(L, K, *field[0].shape) for field in zip(*out)))


def _compress_batched(rule, past: Cache, sizes, capacity: int, size: int, q, keys) -> Cache:
    """:func:`compress` in one program for every head: heads kept whole stay exact, the others
    are compressed to their budgets (inside ``capacity`` atoms if they differ); all padded to
    ``size`` atoms."""
    from .rules.base import compress_heads

    L, K, n, hd = past.keys.shape
    flat = sizes.ravel()
    heads = Cache(*(x.reshape(L * K, *x.shape[2:]) for x in past))
    qs = q.reshape(L * K, *q.shape[2:])
    ks = None if keys is None else keys.reshape(L * K, -1)
    if (flat == flat[0]).all():  # one budget: its own program, no padding inside
        got = compress_heads(rule, heads, int(flat[0]), qs, ks).cache
    else:
        small = np.flatnonzero(flat < n)  # the others are kept whole (then size == n)
        got = _pad_heads(compress_heads(rule, Cache(*(x[small] for x in heads)), flat[small],
                                        qs[small], None if ks is None else ks[small],
                                        capacity=capacity).cache, size)
        if small.size < flat.size:
            got = Cache(*(a.at[small].set(b) for a, b in zip(heads, got)))
    return Cache(*(x.reshape(L, K, *x.shape[1:]) for x in _pad_heads(got, size)))


def _pad_heads(c: Cache, size: int) -> Cache:
    """Heads ``[B, m, ...]`` followed by empty atoms up to ``size`` (:func:`pad` on each)."""
    return jax.vmap(lambda head: pad(Summary(head, None), size).cache)(c)


class State(NamedTuple):
    """The cache after the prefix (compressed or not) and the logits of its last token."""

    past: Cache
    last: jnp.ndarray  # [V]
    seconds: float  # spent compressing
    queries: jnp.ndarray | None = None  # [L, H, w, hd] of the last tokens read (uncompressed)
    observed: int | None = None  # the last ``observed`` of ``queries`` are the rules' (all: None)


def reads_whole_prefix(rule) -> bool:
    """Whether ``rule`` (a registry rule or an :class:`Allocated` one) reads every query of the
    prefix (``Rule.whole_prefix``) rather than the observed ones."""
    return not isinstance(rule, kvzip_mod.KVzip) and (
        rule.rule if isinstance(rule, Allocated) else rule).whole_prefix


def rule_queries(state: State, rule):
    """The queries ``rule`` sees of a full prefill: the observed ones (the last
    ``state.observed``), or, for a rule that reads the whole prefix (``Rule.whole_prefix``),
    every one the state kept (all the prefix's with ``prefill(..., every_query=True)``)."""
    q = state.queries
    if reads_whole_prefix(rule) or state.observed is None:
        return q
    return q[:, :, q.shape[2] - state.observed:]


def prefill(model: Model, ids, rule: Rule | Allocated | None = None, budget: int | None = None, *,
            observed: int = 32, block: int | None = None, key=None,
            every_query: bool = False) -> State:
    """Read ``ids``; with a rule, compress to ``budget`` atoms per head (after the whole prefix, or
    causally after every ``block`` tokens), the rule seeing the queries of the last ``observed``
    tokens (after the whole prefix, a rule that reads the whole prefix sees every token's). Without
    a rule the state keeps the queries of the last ``observed`` tokens (with ``every_query``, of
    every token, for the rules that read the whole prefix: :func:`rule_queries`), so one full
    prefill serves every rule (:func:`compress_state`). ``key``: the random draws of a rule
    that makes them, split at every compression."""
    p, cfg = model.params, model.config
    ids = np.asarray(ids, np.int32)
    T = int(ids.shape[0])
    step = T if block is None or rule is None else block
    past, spent = empty_past(cfg), 0.0
    for lo in range(0, T, step):
        chunk = ids[lo:lo + step]
        size = int(chunk.shape[0])
        w = min(observed, size)
        # the chunk padded to its bucket (prompts of nearby lengths share the program)
        padded = pad_tokens(chunk)
        # every query of a one-shot prefill for a rule that reads the whole prefix
        every = every_query if rule is None else (step == T and reads_whole_prefix(rule))
        out = forward(p, cfg, padded, lo, past, n_queries=len(padded) if every else w,
                      all_logits=False, length=size)
        queries = out.queries[:, :, :size] if every else out.queries
        past = concat(past, out.keys[:, :, :size], out.values[:, :, :size])
        if rule is not None and past.keys.shape[2] > budget:
            key, sub = (None, None) if key is None else jax.random.split(key)
            t0 = time.perf_counter()
            past = jax.block_until_ready(compress(rule, past, budget, queries, sub))
            spent += time.perf_counter() - t0
    if rule is not None:
        return State(past, out.logits[-1], spent)
    return State(past, out.logits[-1], spent, queries, w)


def compress_state(full: State, rule: Rule | Allocated, budget: int, key=None) -> State:
    """One-shot compression of a full prefill (the same result as ``prefill(..., rule, budget,
    key=key)`` without reading the prefix again)."""
    t0 = time.perf_counter()
    sub = None if key is None else jax.random.split(key)[1]  # prefill's first subkey
    past = jax.block_until_ready(compress(rule, full.past, budget, rule_queries(full, rule), sub))
    return State(past, full.last, time.perf_counter() - t0)


class Reading(NamedTuple):
    """The continuation read over a state: per-token logits and a greedy answer."""

    logits: np.ndarray  # [len(cont), V]: row i predicts cont[i]
    generated: str
    score: float


class Recompression(NamedTuple):
    """How decoding compresses again: whenever ``block`` new tokens have accumulated, the summary
    plus the exact block go back to ``budget`` atoms (merge-reduce), so memory stays at most
    ``budget + block`` atoms per head; ``rule`` sees the queries of the block's last
    ``observed`` tokens (``key``: for a rule that draws random numbers, split at every
    compression)."""

    rule: Rule
    budget: int
    block: int
    observed: int = 32
    key: jax.Array | None = None


class Decoding(NamedTuple):
    """Where decoding over a compressed state stands: the buffer (summary, then the open block's
    exact atoms, then free slots), the next free slot and position, the last decoded tokens'
    queries, the key of the next compression and the seconds spent compressing so far."""

    buf: Cache
    slot: int
    pos: int
    queries: tuple = ()
    key: jax.Array | None = None
    seconds: float = 0.0

    @property
    def past(self) -> Cache:
        """The state now: summary plus the exact atoms of the open block."""
        return Cache(*(x[:, :, :self.slot] for x in self.buf))


def start_decoding(past: Cache, start: int, how: Recompression, key=None,
                   seconds: float = 0.0) -> Decoding:
    """A :class:`Decoding` over ``past`` whose next token sits at position ``start``."""
    slot = past.keys.shape[2]
    return Decoding(buffer(past, how.budget + how.block - slot), slot, start, (), key, seconds)


def feed(model: Model, how: Recompression, dec: Decoding, token: int) -> tuple[np.ndarray,
                                                                               Decoding]:
    """Read one token: its next-token logits ``[V]`` and the decoding after it (compressed back
    to ``how.budget`` atoms when the block is full)."""
    row, buf, q = decode(model.params, model.config, token, dec.pos, dec.buf, dec.slot,
                         queries=True)
    dec = dec._replace(buf=buf, slot=dec.slot + 1, pos=dec.pos + 1,
                       queries=(dec.queries + (q,))[-min(how.observed, how.block):])
    if dec.slot == buf.keys.shape[2]:
        key, sub = (None, None) if dec.key is None else jax.random.split(dec.key)
        t0 = time.perf_counter()
        past = jax.block_until_ready(
            compress(how.rule, buf, how.budget, jnp.concatenate(dec.queries, 2), sub))
        dec = start_decoding(past, dec.pos, how, key, dec.seconds + time.perf_counter() - t0)
    return np.asarray(row), dec


def _read_running(model, prep, state, how: Recompression, max_new):
    """:func:`read` while compressing again every ``how.block`` decoded tokens: the reading, the
    state at its end and the seconds spent compressing."""
    start = len(prep.prefix)
    dec = start_decoding(state.past, start, how, how.key)
    rows = [np.asarray(state.last)]
    for t in prep.cont[:-1]:
        row, dec = feed(model, how, dec, int(t))
        rows.append(row)
    gen_dec = start_decoding(state.past, start, how, how.key)
    row = np.asarray(state.last)
    for t in prep.cont[:len(prep.cont) - prep.answer]:
        row, gen_dec = feed(model, how, gen_dec, int(t))
    gen, stop = [], model.tokenizer.eos
    while len(gen) < max_new and (not gen or gen[-1] != stop) and not _solved(model, prep, gen):
        gen.append(int(np.argmax(row)))
        row, gen_dec = feed(model, how, gen_dec, gen[-1])
    text = model.tokenizer.decode(gen, skip_special=True)
    seconds = dec.seconds + gen_dec.seconds
    return Reading(np.stack(rows), text, tasks_mod.score(prep.task, text)), dec.past, seconds


def _solved(model: Model, prep: Prepared, tokens) -> bool:
    """Whether the greedy answer so far already scores 1: RULER's metrics only grow as text is
    appended, so generation can stop there with the score of the whole greedy answer."""
    return bool(tokens) and tasks_mod.score(
        prep.task, model.tokenizer.decode(tokens, skip_special=True)) == 1.0


def read(model: Model, prep: Prepared, state: State, max_new: int = 16) -> Reading:
    """Teacher-force the continuation and generate a greedy answer after the question: up to
    ``max_new`` tokens, stopping at the end-of-sequence token or once every gold answer is in
    the text (the score cannot change after that: :func:`_solved`)."""
    p, cfg = model.params, model.config
    start = len(prep.prefix)
    # the past padded with empty atoms to the bucket of the prefix, the continuation with tokens
    # after its last one: every rule, budget and prompt of nearby length reads through the same
    # compiled programs (reading times here are not those of a cache of the summary's size)
    size, T = state.past.keys.shape[2], len(prep.cont)
    past = buffer(state.past, bucket(max(size, len(prep.prefix))) - size)
    cont = np.asarray(forward(p, cfg, pad_tokens(prep.cont), start, past, length=T).logits)[:T]
    rows = np.concatenate([np.asarray(state.last)[None], cont[:-1]])
    question = prep.cont[:len(prep.cont) - prep.answer]
    if len(question):
        gen = generate(model, question, max_new, past=past, start=start,
                       until=lambda toks: _solved(model, prep, toks))
    else:  # query-aware: the question is already in the prefix
        first = int(np.argmax(rows[0]))
        gen = [first] if max_new == 1 or _solved(model, prep, [first]) else [first] + generate(
            model, [first], max_new - 1, past=past, start=start,
            until=lambda toks: _solved(model, prep, [first] + toks))
    text = model.tokenizer.decode(gen, skip_special=True)
    return Reading(rows, text, tasks_mod.score(prep.task, text))


def _log_softmax(x):
    return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32), -1), np.float64)


def metrics(prep: Prepared, full: Reading, got: Reading, past: Cache, seconds: float) -> dict:
    """KL, top-1, answer perplexity and score of a compressed reading against the full one."""
    _check.finite_outputs(full.logits, "evaluate: the model's logits with the full cache")
    _check.finite_outputs(got.logits, "evaluate: the model's logits with the compressed cache")
    lp, lq = _log_softmax(full.logits), _log_softmax(got.logits)
    kl = np.sum(np.exp(lp) * (lp - lq), -1)
    top1 = np.argmax(lp, -1) == np.argmax(lq, -1)
    idx = np.arange(len(prep.cont))
    ans = idx[-prep.answer:]
    nll_full, nll = -lp[ans, prep.cont[ans]], -lq[ans, prep.cont[ans]]
    atoms, nbytes = live_atoms(past), live_bytes(past)  # padding (-inf) costs nothing
    return {"kl": float(kl.mean()), "top1": float(top1.mean()),
            "ppl_full": float(np.exp(nll_full.mean())), "ppl": float(np.exp(nll.mean())),
            "score_full": full.score, "score": got.score, "generated": got.generated,
            "bytes": int(nbytes), "atoms": atoms, "compress_seconds": seconds}


def _kvzip_state(model, prep, base, rule, m, scored: dict) -> State:
    """KVzip's one-shot compression of the full prefill ``base``; its scores (the reconstruction
    passes, counted in the compression time) are computed once per prompt and kept in
    ``scored`` for the other budgets."""
    if m >= len(prep.prefix):
        return State(base.past, base.last, 0.0)
    t0 = time.perf_counter()
    if "kvzip" not in scored:
        scored["kvzip"] = kvzip_mod.scores(model, base.past, prep.prefix, rule)
        scored["seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    past = jax.block_until_ready(kvzip_mod.compress(model, base.past, prep.prefix, m, rule,
                                                    scored["kvzip"]))
    return State(past, base.last, scored["seconds"] + time.perf_counter() - t0)


def _compressed_reading(model, prep, base, rule, m, observed, block, decode_block, max_new,
                        key, scored=None):
    """The reading of ``prep`` with ``rule`` at ``m`` atoms: compressed once from the full
    prefill ``base``, or causally every ``block`` prefill (and ``decode_block`` new) tokens;
    ``scored``: the prompt's model-level scores computed so far (KVzip's)."""
    if isinstance(rule, kvzip_mod.KVzip):
        state = _kvzip_state(model, prep, base, rule, m, {} if scored is None else scored)
    elif block is None:
        state = compress_state(base, rule, m, key)
    else:
        state = prefill(model, prep.prefix, rule, m, observed=observed, block=block, key=key)
    if not decode_block:
        return read(model, prep, state, max_new), state
    how = Recompression(rule, m, decode_block, observed,
                        None if key is None else jax.random.fold_in(key, 1))
    got, past, extra = _read_running(model, prep, state, how, max_new)
    return got, State(past, state.last, state.seconds + extra)


def sweep(model: Model, task_list: list[tasks_mod.Task],
          rules: dict[str, Rule | Allocated | kvzip_mod.KVzip], budgets, *,
          query_aware: bool = False, block: int | None = None, observed: int = 32,
          max_new: int | None = None, decode_block: int | None = None,
          done: list[dict] | None = None, on_row=None, progress: bool = True,
          kept=budgets_mod.atoms, key=None) -> list[dict]:
    """Every (task, rule, budget) against the task's full-cache reference, generating at most
    ``max_new`` answer tokens (default: the task's own, ``Task.max_new``; RULER's length for its
    tasks).

    With ``decode_block`` the continuation is decoded token by token and the state is compressed
    back to the budget whenever ``decode_block`` new tokens have accumulated.

    ``key``: the random draws of the rules that make them (``Rule.randomized``; they refuse to
    run without), the same for every prompt, rule and budget, so a row does not depend on which
    rows ran before it.

    ``kept(spec, n)`` turns each of ``budgets`` into atoms for a context of n tokens: by default
    :func:`minimaxkv.budgets.atoms` (atoms or fractions kept);
    :func:`minimaxkv.budgets.from_compression_ratio` reads them as kvpress's compression ratios.

    Rows already in ``done`` (same task seed/family, rule and budget) are kept and not recomputed;
    ``on_row(row)`` is called after every new row (e.g. to store it: an interrupted sweep
    resumes from the rows stored so far, see :mod:`minimaxkv.store`).

    Compiled programs stay bounded (:mod:`minimaxkv.programs`): the model's programs are shared
    by every prompt and budget of a bucket (:func:`read`), a per-head allocation compiles one
    program per capacity bucket for all its budgets where the rule allows it (:func:`compress`),
    the rules compile once per context length, and every cache is cleared if the process's memory
    mappings pass a fifth of the system's limit.
    """
    from tqdm import tqdm

    from . import programs

    fixed = [name for name, r in rules.items() if isinstance(r, (Allocated, kvzip_mod.KVzip))]
    if fixed and (block is not None or decode_block is not None):
        raise ValueError(f"rules {fixed} allocate per-head budgets: one-shot compression only "
                         "(no block or decode_block)")
    rows = list(done or [])
    have = {(r["family"], r["seed"], r["rule"], r["budget_spec"]) for r in rows}
    every_query = any(reads_whole_prefix(r) for r in rules.values())
    preps = []
    for task in task_list:  # bad budgets or too many observed queries fail before any work
        prep = prepare(model, task, query_aware)
        n = len(prep.prefix)
        if observed > n:
            raise ValueError(f"observed: {observed} queries, but the prompt {task.family} (seed "
                             f"{task.seed}) has only {n} context tokens")
        preps.append((task, prep, {float(b): kept(b, n) for b in budgets}))
    total = len(task_list) * len(rules) * len(budgets)
    with tqdm(total=total, desc="evaluate", disable=not progress, file=sys.stderr) as bar:
        for task, prep, atoms in preps:
            n = len(prep.prefix)
            todo = [(name, b) for name in rules for b in budgets
                    if (task.family, task.seed, name, float(b)) not in have]
            bar.update(len(rules) * len(budgets) - len(todo))
            if not todo:
                continue
            t0 = time.perf_counter()
            base = prefill(model, prep.prefix, observed=observed, every_query=every_query)
            new = max_new or task.max_new
            full = read(model, prep, base, new)
            full_seconds = time.perf_counter() - t0
            scored: dict = {}
            for name, b in todo:
                m = atoms[float(b)]
                t0 = time.perf_counter()
                got, state = _compressed_reading(model, prep, base, rules[name], m, observed,
                                                 block, decode_block, new, key, scored)
                row = {"family": task.family, "seed": task.seed, "rule": name,
                       "budget_spec": float(b), "budget": m, "prefix_tokens": n,
                       "query_aware": query_aware, "block": block, "decode_block": decode_block,
                       "full_bytes": n * model.config.cache_bytes(1), "full_seconds": full_seconds,
                       "seconds": time.perf_counter() - t0,
                       **metrics(prep, full, got, state.past, state.seconds)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                programs.relieve()
                bar.update(1)
    return rows


IDENT = ("family", "seed", "rule", "budget_spec")  # a row's identity in the results store


def stored_sweep(model: Model, task: str, length: int, samples: int, seed: int, names, budgets,
                 path, *, query_aware: bool = False, block: int | None = None,
                 observed: int = 32, max_new: int | None = None,
                 decode_block: int | None = None, force: bool = False) -> list[dict]:
    """:func:`sweep` over ``samples`` prompts of ``task`` (seeds ``seed``, ``seed + 1``, ...) of
    about ``length`` tokens and the rules ``names`` (registry names, optionally ``RULE@alloc``),
    every row stored in the results store at ``path`` as soon as it is done, keyed by the run's
    configuration, sample, rule and budget: the same call resumes from the stored rows
    (``force``: recompute them). The rules' random draws come from ``PRNGKey(seed)``."""
    from . import io, store

    tok = model.tokenizer
    task_list = [tasks_mod.make(task, length, lambda t: len(tok.encode(t)), seed=seed + i,
                                chat=tok.chat) for i in range(samples)]
    chosen = {name: resolve(name, **model.config.rule_hyper) for name in names}
    config = {"command": "evaluate", "model": model.config.name, "task": task, "length": length,
              "query_aware": query_aware, "block": block, "observed": observed,
              "max_new": max_new, "decode_block": decode_block}
    seeds = {t.seed for t in task_list}
    specs = {float(b) for b in budgets}
    done = [r for r in store.resume(path, config, force=force)
            if r["rule"] in chosen and r["budget_spec"] in specs and r["seed"] in seeds]
    provenance = io.provenance()

    def keep(row):
        store.add(path, [store.keyed({**row, "provenance": provenance}, config, IDENT)])

    return sweep(model, task_list, chosen, budgets, query_aware=query_aware, block=block,
                 observed=observed, max_new=max_new, decode_block=decode_block, done=done,
                 key=jax.random.PRNGKey(seed), on_row=keep)


def summarize_rows(rows: list[dict]) -> list[dict]:
    """Mean metrics per (rule, budget) over prompts, sorted by budget then KL; with two prompts
    or more, the task score and the KL carry percentile-bootstrap 95 % intervals over prompts
    (``score_low``/``score_high``, ``kl_low``/``kl_high``; NaN with one prompt)."""
    from .risk import bootstrap_interval

    def interval(xs):
        if len(xs) < 2:
            return float("nan"), float("nan")
        iv = bootstrap_interval(xs)
        return iv.low, iv.high

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["rule"], r["budget_spec"]), []).append(r)
    out = []
    for (rule, spec), rs in groups.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in
                ("kl", "top1", "ppl", "ppl_full", "score", "score_full")}
        (s_lo, s_hi), (k_lo, k_hi) = (interval([r[k] for r in rs]) for k in ("score", "kl"))
        out.append({"rule": rule, "budget": spec, "atoms": float(np.mean([r["budget"] for r in rs])),
                    "KiB": float(np.mean([r["bytes"] for r in rs])) / 1024, **mean,
                    "score_low": s_lo, "score_high": s_hi, "kl_low": k_lo, "kl_high": k_hi,
                    "compress_s": float(np.mean([r["compress_seconds"] for r in rs])),
                    "tasks": len(rs)})
    return sorted(out, key=lambda r: (r["budget"], r["kl"]))
