"""Spectrum of the response covariance G: randomized top-64 vs the exact eigenvalues.

A ``power_law`` cache (d = dv = 64) probed by p = 128 of its queries. ``exact`` is
``compressibility.spectrum(q, c)``: ``eigvalsh`` of G itself (``n x n``) or, when it is smaller,
of the Gram matrix :math:`F^TF` of the response factor (``p(1+dv) x p(1+dv)``, the same non-zero
eigenvalues -- an exact method too; the table says which). ``randomized`` is
``spectrum(q, c, k=64)`` (randomized subspace iteration) at the library's defaults (oversample =
k, 4 power steps), at a cheaper setting (oversample 16, 2 power steps) and as a block Krylov
space (``method="krylov"``, 7 blocks of 32 columns: 224 product columns against 768). Error: the largest
relative error over the top 64 eigenvalues, :math:`\\max_{i\\le64}|\\hat\\lambda_i-\\lambda_i|/
\\lambda_i`, against the exact ones of the same run. Exact calls that take over 30 s run once
(the time includes its compilation, under a second); faster calls are timed like the others.

    python -m benchmarks.bench_spectrum            # n = 1k ... 32k
    python -m benchmarks.bench_spectrum --quick    # n = 1k, 2k
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import common

P, D, K = 128, 64, 64
SETTINGS = {"default": {}, "fast": {"oversample": 16, "iters": 2},
            "krylov": {"method": "krylov", "block": 32, "depth": 6}}
TARGET_N = 32768
SLOW_S = 30.0


def describe(name: str, kw: dict) -> str:
    if kw.get("method") == "krylov":
        return f"{name}: block Krylov, {kw['depth'] + 1} blocks of {kw['block']} columns"
    return f"{name}: oversample {kw.get('oversample', K)}, {kw.get('iters', 4)} power steps"


def instance(n: int, seed: int = 0):
    import jax

    from minimaxkv import synthetic

    inst = synthetic.make("power_law", jax.random.PRNGKey(seed), n=n, d=D, dv=D, p=P)
    return inst.queries, inst.cache


def main(argv=None):
    import jax

    from minimaxkv import compressibility as C

    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    rep = common.repeats(args)
    sizes = args.sizes or ([1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768])
    mach = common.machine()
    print(common.machine_line(mach), flush=True)
    rows = []
    for n in sizes:
        q, c = instance(n)
        r = P * (1 + D)
        route = f"Gram {r}x{r}" if r < n else f"G {n}x{n}"
        t0 = time.perf_counter()
        exact = np.asarray(jax.block_until_ready(C.spectrum(q, c)), np.float64)
        first = time.perf_counter() - t0
        if first < SLOW_S:
            ex_t = common.timed({"exact": lambda: C.spectrum(q, c)}, rep)["exact"]
        else:
            ex_t = {"first_s": first, "best_s": first, "median_s": first, "times_s": [first]}
        row = {"n": n, "p": P, "route": route, "exact": ex_t, "top": exact[:K].tolist()}
        for name, kw in SETTINGS.items():
            def fn(kw=kw):
                return C.randomized_spectrum(q, c, K, key=jax.random.PRNGKey(0), **kw)

            t = common.timed({name: fn}, rep)[name]
            ritz = fn()
            approx = np.asarray(ritz.values, np.float64)
            rel = np.abs(approx - exact[:K]) / exact[:K]
            row[name] = {"time": t, "max_rel_err": float(rel.max()), "mean_rel_err": float(rel.mean()),
                         "max_residual_over_lambda": float(np.max(np.asarray(ritz.residuals)
                                                                  / exact[:K])),
                         "speedup": ex_t["best_s"] / t["best_s"], **kw}
        rows.append(row)
        print(f"n = {n}: exact {ex_t['best_s']:.2f} s ({route}), randomized "
              + ", ".join(f"{s} {row[s]['time']['best_s']:.2f} s err {row[s]['max_rel_err']:.1e}"
                          for s in SETTINGS), flush=True)

    print(f"\nTop-{K} eigenvalues of G, p = {P} queries, d = dv = {D}; time = best of the rounds "
          f"(exact over {SLOW_S:.0f} s: one run); err = max relative error over the top {K}")
    head = ["n", "exact route", "exact s"]
    for s in SETTINGS:
        head += [f"{s} s", f"{s} speed-up", f"{s} err"]
    body = []
    for r in rows:
        line = [r["n"], r["route"], f"{r['exact']['best_s']:.2f}"]
        for s in SETTINGS:
            line += [f"{r[s]['time']['best_s']:.2f}", f"{r[s]['speedup']:.1f}x",
                     f"{r[s]['max_rel_err']:.1e}"]
        body.append(line)
    text = common.table(head, body)
    print("randomized settings: " + "; ".join(describe(s, kw) for s, kw in SETTINGS.items()))
    verdict = {}
    at = [r for r in rows if r["n"] == TARGET_N]
    if at:
        r = at[0]
        for s in SETTINGS:
            verdict[s] = {"speedup>=20": r[s]["speedup"] >= 20, "err<=1%": r[s]["max_rel_err"] <= 0.01}
        print(f"\nAcceptance at n = {TARGET_N} (>= 20x faster at <= 1% error on the top {K}): "
              + "; ".join(f"{s}: {r[s]['speedup']:.1f}x, {100 * r[s]['max_rel_err']:.2g}% -> "
                          + ("met" if all(verdict[s].values()) else "NOT met") for s in SETTINGS))
    common.save("bench_spectrum", args, {"p": P, "d": D, "k": K, "settings": SETTINGS,
                                         "rows": rows, "acceptance": verdict, "tables": [text]})


if __name__ == "__main__":
    main()
