"""Causal compression against compressing the whole prefix once, at the same budget.

The causal driver (:func:`minimaxkv.causal.run`) reads a prefill of ``blocks`` x B tokens in blocks
of B and compresses summary + block back to ``budget`` atoms after each (merge-reduce), with the
rule built for blocks (``block=B``, the rules that take it); the reference compresses the whole
prefix once, to the same budget, with the one-shot rule, seeing the queries of the prefix's last B
tokens (what the causal rule sees at its last compression). Both then decode the next B tokens
exactly over their summary (no compression falls inside them), so the decode risk -- the mean
squared error of the decode queries' outputs against exact causal attention over every token so far
-- compares the two summaries alone: the table prints causal / once.

Cost: the seconds per compression of summary + block (budget + B atoms, the causal driver's timer:
one compiled call, the dispatch included, after a warm-up call of that shape), amortised over the B
tokens decoded between two compressions, against one decode step's attention read of the summary
(one query over budget + B atoms, a compiled ``mkv.attend``, best of the timed rounds).

Instances: ``synthetic.stream`` token streams (d = 64, dv = 64; a few seeds) and KV heads of
SmolLM2-135M reading a passkey prompt whose haystack is ``minimaxkv/data/water.txt`` (the first
query head of each group; the rules get the model's RoPE base). Query-aware (the rules see the
observed queries).

    python -m benchmarks.bench_causal               # B = 64, budget 128, 64 prefill blocks
    python -m benchmarks.bench_causal --quick       # 16 prefill blocks, 2 streams, 2 heads
    python -m benchmarks.bench_causal --no-model    # streams only
"""

from __future__ import annotations

import ast

import numpy as np

from benchmarks import common

BLOCK, BUDGET, D = 64, 128, 64
HEADS = [(5, 0), (10, 1), (15, 2), (20, 0), (25, 1)]
BLOCK_RULES = ("minimax", "minimax_agnostic")  # rules that treat summary + block as blocks


def streams(count: int, T: int):
    """``count`` token streams of T tokens: (name, keys, values, queries, theta)."""
    import jax

    from minimaxkv import synthetic

    out = []
    for seed in range(count):
        st = synthetic.stream(jax.random.PRNGKey(seed), T=T, d=D, dv=D)
        out.append((f"stream {seed}", st.keys, st.values, st.queries, st.theta))
    return out


def model_heads(heads, T: int):
    """KV heads of SmolLM2 on a passkey prompt of T tokens: (name, keys, values, queries, theta)."""
    from importlib import resources

    from minimaxkv import capture, model, tasks

    m = model.load("smollm2")
    tok = m.tokenizer
    water = resources.files("minimaxkv").joinpath("data/water.txt").read_text(encoding="utf-8")
    task = tasks.make("passkey", T + 64, lambda s: len(tok.encode(s)), seed=0, haystack=water)
    ids = tok.encode(task.context + task.question)[:T]
    if len(ids) < T:
        raise ValueError(f"the prompt has {len(ids)} tokens, fewer than {T}")
    cap = capture.capture(m, ids, source="passkey prompt, water.txt haystack")
    theta = capture.rope_theta(cap)
    out = []
    for layer, h in heads:
        cache, q = cap.head(layer, h)
        out.append((f"SmolLM2 L{layer} H{h}", cache.keys, cache.values, q[0], theta))
    return out


def once_decode_risk(rule, keys, values, queries, prefill: int, block: int, budget: int, key):
    """Decode risk of the one-shot summary of the prefix: the queries at prefill..T-1 read the
    summary plus the exact decode tokens up to themselves."""
    import jax.numpy as jnp

    import minimaxkv as mkv

    T = keys.shape[0]
    exact, _ = mkv.attend_and_mass(queries, mkv.Cache(keys, values), query_pos=jnp.arange(T))
    summ = rule(mkv.Cache(keys[:prefill], values[:prefill]), budget,
                queries[prefill - block:prefill], key).cache
    pos = jnp.arange(prefill, T)
    state = mkv.Cache(jnp.concatenate([summ.keys.astype(keys.dtype), keys[prefill:]]),
                      jnp.concatenate([summ.values.astype(values.dtype), values[prefill:]]),
                      jnp.concatenate([summ.logw, jnp.zeros((T - prefill,), summ.logw.dtype)]))
    kpos = jnp.concatenate([jnp.full((budget,), -1), pos])
    out, _ = mkv.attend_and_mass(queries[prefill:], state, query_pos=pos, key_pos=kpos)
    return float(jnp.mean(jnp.sum((out - exact[prefill:]) ** 2, axis=1)))


def read_seconds(budget: int, block: int, repeat: int) -> float:
    """One decode step's attention read of the state: one query over budget + block atoms."""
    import jax

    import minimaxkv as mkv

    k = jax.random.normal(jax.random.PRNGKey(0), (budget + block, D))
    state = mkv.Cache(k, k)
    q = k[:1]
    read = jax.jit(lambda q, c: mkv.attend(q, c))
    return common.timed({"read": lambda: read(q, state)}, repeat, pause=0.0)["read"]["best_s"]


def main(argv=None):
    import jax

    from minimaxkv import Cache, causal, rules

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rules", nargs="+", default=["minimax"], help="rules (default: minimax)")
    p.add_argument("--blocks", type=int, default=None, help="prefill blocks (default 64, 16 quick)")
    p.add_argument("--no-model", action="store_true", help="synthetic streams only")
    p.add_argument("--hyper", nargs="+", default=[], metavar="NAME=VALUE",
                   help="rule hyperparameters for both variants (e.g. rounds=1; block=None "
                   "compresses the causal state as one block), Python literals")
    args = p.parse_args(argv)
    blocks = args.blocks or (16 if args.quick else 64)
    prefill = blocks * BLOCK
    T = prefill + BLOCK
    print(common.machine_line(common.machine()))
    cases = streams(2 if args.quick else 3, T)
    if not args.no_model:
        cases += model_heads(HEADS[:2] if args.quick else HEADS, T)
    key = jax.random.PRNGKey(0)
    read = read_seconds(BUDGET, BLOCK, 50)
    hyper = {k: ast.literal_eval(v) for k, v in (h.split("=", 1) for h in args.hyper)}
    rows, payload = [], {"block": BLOCK, "budget": BUDGET, "prefill": prefill, "T": T,
                         "read_s": read, "hyper": hyper, "cases": []}
    for name in args.rules:
        for case, k, v, q, theta in cases:
            blocks_kw = {"block": BLOCK} if name in BLOCK_RULES else {}
            blocked = rules.get(name, theta=theta, **{**blocks_kw, **hyper})
            warm = Cache(k[:BUDGET + BLOCK], v[:BUDGET + BLOCK])  # the driver's one shape
            jax.block_until_ready(blocked(warm, BUDGET, q[BUDGET:BUDGET + BLOCK], key).cache)
            res = causal.run(blocked, k, v, q, BUDGET, prefill=prefill, block=BLOCK, key=key)
            once = once_decode_risk(rules.get(name, theta=theta, **hyper), k, v, q, prefill, BLOCK,
                                    BUDGET, key)
            per = res.compress_seconds / max(res.compressions, 1)
            ratio = res.decode_risk / once if once > 0 else float("nan")
            rows.append([name, case, f"{res.decode_risk:.3g}", f"{once:.3g}", f"{ratio:.2f}",
                         f"{1e3 * per:.1f}", f"{per / BLOCK / read:.1f}"])
            payload["cases"].append({"rule": name, "case": case, "causal": res.decode_risk,
                                     "once": once, "ratio": ratio, "compress_s": per,
                                     "compressions": res.compressions})
            print(f"{name} {case}: causal {res.decode_risk:.3g}, once {once:.3g}", flush=True)
    print(f"\nDecode risk of the next {BLOCK} tokens after a prefill of {blocks} blocks of {BLOCK} "
          f"(budget {BUDGET} atoms): causal merge-reduce vs the whole prefix compressed once; "
          f"cost per decoded token = seconds per compression / {BLOCK}, against one attention "
          f"read of {BUDGET + BLOCK} atoms ({1e6 * read:.1f} us)")
    common.table(["rule", "instance", "causal", "once", "causal/once", "ms/compression",
                  "x read/token"], rows)
    for name in args.rules:
        r = [c["ratio"] for c in payload["cases"] if c["rule"] == name]
        print(f"{name}: causal/once median {np.median(r):.2f}, worst {np.max(r):.2f}")
    common.save("bench_causal", args, payload)


if __name__ == "__main__":
    main()
