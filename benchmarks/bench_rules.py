"""Compression time per head for every rule, vs the cache length n.

One KV head of a synthetic ``recency`` cache (RoPE-rotated keys, d = dv = 64), budget n/8 up to
2,048 atoms (then fixed), the observed queries of a GQA group (3 query heads x 32 last tokens, as in
SmolLM2), called the way the end-to-end evaluator calls a rule (one head at a time, through the
rule's compiled function). For each rule and n: the first call (tracing + compilation + one run) and
the steady state (best and median of the timed rounds), beside one dense attention pass of the same
queries over the cache (``mkv.attend``) timed in the same run, so ``x attend`` reads "how many
attention passes the rule costs". Rules that need no queries ignore them.

    python -m benchmarks.bench_rules            # n = 512 ... 8192, every rule (+ two '+fit')
    python -m benchmarks.bench_rules --quick    # n = 512, 1024
    python -m benchmarks.bench_rules --sizes 4096,32768 --rules minimax --budget 512
                                                # one rule, the budget fixed (the slope in n)
"""

from __future__ import annotations

import math

from benchmarks import common

D, G, P_OBS, RATIO, MAX_BUDGET = 64, 3, 32, 8, 2048
FIT_SAMPLES = ("snapkv+fit", "h2o+fit")


def instance(n: int, seed: int = 0):
    """A ``recency`` cache of n atoms, the queries of a GQA group ``[G, P_OBS, D]`` and the
    RoPE base."""
    import jax

    from minimaxkv import synthetic

    inst = synthetic.make("recency", jax.random.PRNGKey(seed), n=n, d=D, dv=D, p=G * P_OBS)
    return inst.cache, inst.queries.reshape(G, P_OBS, D), inst.theta


def rule_names() -> list[str]:
    from minimaxkv import rules

    return [r for r in rules.available() if "+fit" not in r] + list(FIT_SAMPLES)


def compiled_bytes(rule, cache, budget: int, queries, key) -> int:
    """Peak device buffers of one compiled call of ``rule`` (temporaries + arguments + outputs,
    as XLA assigns them; no Python or runtime overhead)."""
    import jax

    ma = jax.jit(lambda c, q, k: rule.compress(c, budget, q, k)).lower(
        cache, queries, key).compile().memory_analysis()
    return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)


def main(argv=None):
    import jax

    import minimaxkv as mkv
    from minimaxkv import budgets, rules

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rules", nargs="+", default=None, help="only these rules (default: all)")
    p.add_argument("--memory", action="store_true",
                   help="also report each rule's compiled peak buffers per head (XLA's buffer "
                   "assignment: temporaries + arguments + outputs)")
    p.add_argument("--budget", type=int, default=None,
                   help=f"atoms at every n (default n/{RATIO}, at most {MAX_BUDGET})")
    p.add_argument("--ratio", type=float, default=None,
                   help="compression ratio at every n, the fraction removed as kvpress counts "
                   "it: budget int(n (1 - ratio)) atoms")
    args = p.parse_args(argv)
    rep = common.repeats(args)
    sizes = args.sizes or ([512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192])
    names = args.rules or rule_names()
    for name in names:
        rules.get(name)  # an unknown name fails before any timing
    if args.budget is not None and not 1 <= args.budget < min(sizes):
        p.error(f"--budget must lie in [1, {min(sizes) - 1}]")
    if args.ratio is not None and (args.budget is not None or not 0 < args.ratio < 1):
        p.error("--ratio must lie in (0, 1) and cannot be given with --budget")
    mach = common.machine()
    print(common.machine_line(mach), flush=True)
    res = {name: {} for name in names}
    attend_s = {}
    key = jax.random.PRNGKey(1)
    for n in sizes:
        cache, q, theta = instance(n)
        budget = (args.budget if args.budget is not None else
                  budgets.from_compression_ratio(args.ratio, n) if args.ratio is not None else
                  min(n // RATIO, MAX_BUDGET))
        qflat = q.reshape(-1, D)
        t = common.timed({"attend": lambda: mkv.attend(qflat, cache)}, rep, pause=0.05)
        attend_s[n] = t["attend"]["best_s"]
        for name in names:
            rule = rules.get(name, theta=theta)
            t = common.timed({name: lambda: rule(cache, budget, q, key).cache}, rep, pause=0.05)
            r = t[name]
            res[name][n] = {"first_s": r["first_s"], "best_s": r["best_s"],
                            "median_s": r["median_s"], "budget": budget}
            if args.memory:
                res[name][n]["buffers_bytes"] = compiled_bytes(rule, cache, budget, q, key)
            print(f"n = {n:5d} {name:22s} first {r['first_s']:7.2f} s, steady "
                  f"{r['best_s'] * 1e3:9.2f} ms", flush=True)

    def ms(x):
        return f"{x * 1e3:.2f}" if x < 1 else f"{x * 1e3:.0f}"

    lo, hi = sizes[0], sizes[-1]
    what = (f"{args.budget} atoms at every n" if args.budget is not None else
            f"int(n (1 - {args.ratio})) atoms (compression ratio {args.ratio})"
            if args.ratio is not None else f"n/{RATIO} (at most {MAX_BUDGET})")
    print(f"\nSteady-state compression time per head (ms; best of {rep}), budget {what}, "
          f"{G}x{P_OBS} observed queries; slope = log-log growth from n = {lo} to {hi}; "
          f"'x attend' = rule / one attention pass at n = {hi}")
    steady = common.table(
        ["rule"] + [f"n={n}" for n in sizes] + ["slope", "x attend"],
        [[name] + [ms(res[name][n]["best_s"]) for n in sizes]
         + [f"{math.log(res[name][hi]['best_s'] / res[name][lo]['best_s']) / math.log(hi / lo):.2f}"
            if hi > lo else "-",
            f"{res[name][hi]['best_s'] / attend_s[hi]:.1f}"] for name in names]
        + [["(attend)"] + [ms(attend_s[n]) for n in sizes] + [
            f"{math.log(attend_s[hi] / attend_s[lo]) / math.log(hi / lo):.2f}" if hi > lo else "-",
            "1.0"]])
    if args.memory:
        print("\nCompiled peak buffers per head (MiB): temporaries + arguments + outputs")
        common.table(["rule"] + [f"n={n}" for n in sizes],
                     [[name] + [f"{res[name][n]['buffers_bytes'] / 2**20:.0f}" for n in sizes]
                      for name in names])
    print("\nFirst call (trace + compile + run, s) and its ratio to the steady state at n = "
          f"{hi}")
    first = common.table(
        ["rule"] + [f"n={n}" for n in sizes] + ["first/steady"],
        [[name] + [f"{res[name][n]['first_s']:.2f}" for n in sizes]
         + [f"{res[name][hi]['first_s'] / res[name][hi]['best_s']:.0f}"] for name in names])
    tag = ("-" + "-".join(n.replace("+", "_") for n in args.rules) if args.rules else "") + (
        f"-m{args.budget}" if args.budget is not None else
        f"-r{args.ratio}" if args.ratio is not None else "")  # a partial run keeps its own file
    common.save("bench_rules" + tag, args, {"sizes": sizes, "budget_ratio": RATIO,
                                      "fixed_budget": args.budget, "ratio": args.ratio,
                                      "group": G,
                                      "observed": P_OBS, "d": D, "rules": res,
                                      "attend_s": attend_s, "tables": [steady, first]})


if __name__ == "__main__":
    main()
