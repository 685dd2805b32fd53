"""Compressing every head of a model's cache: one call per head vs one program for all of them.

The cache of SmolLM2-135M (30 layers x 3 KV heads, head dimension 64) over T tokens of the
repository's texts, each head compressed to half its atoms (kvpress's compression ratio 0.5) with
its group's last 32 queries, three ways side by side in one run:

* ``loop``: the rule called on each head in turn (its own compiled program, one dispatch per head:
  how the evaluator compressed before);
* ``map``: :func:`minimaxkv.rules.base.compress_heads`, a ``lax.map`` over the heads in one
  program (what the evaluator runs now);
* ``vmap``: the same with every head at once (``vectorize=True``; not for ``minimax``, whose
  ``vmap`` stalled XLA:CPU).

Checked in the same run: how many heads keep exactly the same atoms in ``map`` / ``vmap`` as in
``loop`` (the summaries' keys compared bitwise: for an eviction rule, its kept set), and the
largest difference of the summaries' values.

    python -m benchmarks.bench_heads            # T = 2048
    python -m benchmarks.bench_heads --quick    # T = 512
    python -m benchmarks.bench_heads --sizes 4096
"""

from __future__ import annotations

import numpy as np

from benchmarks import common

RULES = ("snapkv", "expected_attention", "knorm", "minimax")
OBSERVED = 32


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rules", nargs="+", default=list(RULES))
    args = p.parse_args(argv)
    import jax

    import minimaxkv as mkv
    from benchmarks.bench_model import token_ids
    from minimaxkv.rules.base import compress_heads

    rep = common.repeats(args)
    T = (args.sizes or [512 if args.quick else 2048])[0]
    model = mkv.model.load("smollm2")
    cap = mkv.capture.capture(model, token_ids(model.tokenizer, T))
    L, K, n, d = cap.keys.shape
    g = cap.queries.shape[1] // K
    heads = mkv.Cache(*(jax.numpy.asarray(x.reshape(L * K, *x.shape[2:]))
                        for x in (cap.keys, cap.values, np.zeros((L, K, n), np.float32))))
    queries = jax.numpy.asarray(cap.queries[:, :, n - OBSERVED:].reshape(L * K, g, OBSERVED, d))
    keys = jax.random.split(jax.random.PRNGKey(0), L * K)
    budget = int(n * 0.5)
    rows, record = [], {}
    for name in args.rules:
        rule = mkv.rules.get(name, **model.config.rule_hyper)

        def loop(rule=rule):
            return [rule(mkv.Cache(*(x[b] for x in heads)), budget, queries[b], keys[b])
                    for b in range(L * K)]

        fns = {"loop": loop,
               "map": lambda rule=rule: compress_heads(rule, heads, budget, queries, keys)}
        if name != "minimax":
            fns["vmap"] = lambda rule=rule: compress_heads(rule, heads, budget, queries, keys,
                                                           vectorize=True)
        t = common.timed(fns, 2 if name == "minimax" else rep, pause=0.1)
        ref = loop()
        same, diff = {}, {}
        for way in fns:
            if way == "loop":
                continue
            got = fns[way]()
            same[way] = sum(bool(np.array_equal(got.cache.keys[b], ref[b].cache.keys))
                            for b in range(L * K))
            diff[way] = max(float(np.max(np.abs(np.asarray(got.cache.values[b])
                                                - np.asarray(ref[b].cache.values))))
                            for b in range(L * K))
        best = {way: t[way]["best_s"] for way in fns}
        record[name] = {"times": t, "same_kept": same, "max_value_diff": diff}
        rows.append([name, f"{best['loop']:.3f}", f"{best['map']:.3f}",
                     f"{best['vmap']:.3f}" if "vmap" in best else "-",
                     f"{best['loop'] / best['map']:.2f}x",
                     f"{best['loop'] / best['vmap']:.2f}x" if "vmap" in best else "-",
                     " ".join(f"{w} {same[w]}/{L * K}" for w in same),
                     " ".join(f"{w} {diff[w]:.1e}" for w in diff)])
        print(" | ".join(rows[-1]), flush=True)
    print(f"\nSmolLM2-135M, T = {n} tokens, {L * K} KV heads, {budget} atoms each (ratio 0.5), "
          f"{OBSERVED} observed queries per query head; best of the timed rounds, seconds")
    common.table(["rule", "loop s", "map s", "vmap s", "loop/map", "loop/vmap", "same keys",
                  "max |value diff|"], rows)
    common.save("bench_heads" + ("" if args.sizes is None else f"-{n}"), args,
                {"tokens": n, "heads": L * K, "budget": budget, "observed": OBSERVED,
                 "rules": record})


if __name__ == "__main__":
    main()
