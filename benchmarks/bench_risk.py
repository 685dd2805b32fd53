"""Attention-output risk: the library's chunked JAX path vs plain NumPy, and vs the machine.

For a cache of n atoms (d = dv = 64), a summary of n/8 atoms (every 8th atom, log-weight log 8)
and p = 1024 queries, the risk :math:`\\frac1p\\sum_i\\lVert A_C(q_i) - A_{\\hat C}(q_i)\\rVert^2`
is computed by

* ``numpy``: float32 NumPy that materialises the ``[p, n]`` attention matrix (logits, max,
  exp, normalise, one matmul with the values) for the cache and for the summary;
* ``jax``: :func:`minimaxkv.risk` with ``chunk=`` the library's default key block (online softmax,
  memory ``O(p * chunk)``).

Columns: time (best of the interleaved rounds), peak memory measured the same way for both (rise
of the resident set's high-water mark during one warm call in a fresh subprocess), the working
set each implementation reports itself (NumPy: tracemalloc peak; JAX: XLA's compiled
``memory_analysis`` temp + output bytes of the larger pass), achieved GFLOP/s counting the two
matmuls of every pass, :math:`2p(n + n/8)(d + d_v)`, and that rate as a fraction of the
float32 matmul rate measured in the same run. A diagnostic column times the same chunked loop
with the two matmuls only (no softmax): the rate the risk would reach if max, exp and
normalisation were free.

    python -m benchmarks.bench_risk            # n = 4k ... 64k
    python -m benchmarks.bench_risk --quick    # n = 4k, 8k
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from benchmarks import common

P, D, DV, RATIO = 1024, 64, 64, 8
TARGET_N = 32768


def inputs(n: int, p: int = P, seed: int = 0):
    """Float32 queries, cache (keys, values, log-weights) and summary (every RATIO-th atom)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((p, D), dtype=np.float32)
    k = rng.standard_normal((n, D), dtype=np.float32)
    v = rng.standard_normal((n, DV), dtype=np.float32)
    b = np.zeros(n, np.float32)
    ks, vs = k[::RATIO].copy(), v[::RATIO].copy()
    bs = np.full(ks.shape[0], np.log(RATIO), np.float32)
    return q, (k, v, b), (ks, vs, bs)


def numpy_attend(q, k, v, b, scale):
    """Plain NumPy attention: the whole ``[p, n]`` matrix at once."""
    s = (q @ k.T) * scale + b[None, :]
    s -= s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return (e @ v) / e.sum(axis=1, keepdims=True)


def numpy_risk(q, cache, summary):
    scale = np.float32(q.shape[1] ** -0.5)
    a = numpy_attend(q, *cache, scale)
    ah = numpy_attend(q, *summary, scale)
    return float(np.mean(np.sum((a - ah) ** 2, axis=1)))


def jax_setup(n: int, p: int = P):
    """``(callable, arrays)``: the library's risk on device-resident inputs."""
    import jax.numpy as jnp

    import minimaxkv as mkv
    from minimaxkv import attention

    q, cache, summary = inputs(n, p)
    qj = jnp.asarray(q)
    c = mkv.Cache(*(jnp.asarray(x) for x in cache))
    s = mkv.Cache(*(jnp.asarray(x) for x in summary))
    chunk = attention.DEFAULT_CHUNK
    return (lambda: mkv.risk(qj, c, s, chunk=chunk)), (qj, c, s, chunk)


def matmuls_only(qj, c, s, chunk):
    """Diagnostic bound: the same chunked loop with the two matmuls of every pass and no softmax
    (no max, no exp, no normalisation) -- what the risk would cost if the softmax were free."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def one(q, keys, values):
        n = keys.shape[0]
        ch = min(chunk, n)
        kb, vb = keys.reshape(n // ch, ch, -1), values.reshape(n // ch, ch, -1)

        def step(acc, kv):
            k, v = kv
            return acc + jnp.matmul(jnp.matmul(q, k.T), v), None
        return lax.scan(step, jnp.zeros((q.shape[0], values.shape[1]), q.dtype), (kb, vb))[0]

    f = jax.jit(lambda q, a, b, x, y: jnp.sum((one(q, a, b) - one(q, x, y)) ** 2))
    return lambda: f(qj, c.keys, c.values, s.keys, s.values)


# entry points of the peak-memory subprocesses (benchmarks.common.peak_rss)
def peak_numpy(n: int, p: int = P):
    q, cache, summary = inputs(n, p)
    return lambda: numpy_risk(q, cache, summary)


def peak_jax(n: int, p: int = P):
    return jax_setup(n, p)[0]


def numpy_tracemalloc(n: int, p: int = P) -> int:
    q, cache, summary = inputs(n, p)
    tracemalloc.start()
    numpy_risk(q, cache, summary)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def xla_working_set(qj, c, s, chunk) -> int:
    """XLA's own account of the larger attention pass: temp + output bytes."""
    from minimaxkv import attention

    best = 0
    for cache in (c, s):
        scale = float(qj.shape[1]) ** -0.5
        ch = attention._chunk_for(cache.n, chunk)
        m = attention._attend_core.lower(qj, cache.keys, cache.values, cache.logw, scale, None,
                                         None, ch).compile().memory_analysis()
        best = max(best, m.temp_size_in_bytes + m.output_size_in_bytes)
    return best


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    rep = common.repeats(args)
    sizes = args.sizes or ([4096, 8192] if args.quick else [4096, 8192, 16384, 32768, 65536])
    mach = common.machine()
    print(common.machine_line(mach), flush=True)
    rates = common.matmul_rates(2048 if args.quick else 4096, rep)
    print(f"float32 matmul [{rates['n']}]^2: jax {rates['jax_gflops']:.1f} GFLOP/s, numpy "
          f"{rates['numpy_gflops']:.1f} GFLOP/s", flush=True)
    ref_rate = max(rates["jax_gflops"], rates["numpy_gflops"])
    rows = []
    for n in sizes:
        fn, (qj, c, s, chunk) = jax_setup(n)
        q, cache, summary = inputs(n)
        t = common.timed({"numpy": lambda: numpy_risk(q, cache, summary), "jax": fn,
                          "matmuls_only": matmuls_only(qj, c, s, chunk)}, rep)
        r_np, r_jax = numpy_risk(q, cache, summary), float(fn())
        flops = 2.0 * P * (n + summary[0].shape[0]) * (D + DV)
        mem_np = common.peak_rss("benchmarks.bench_risk:peak_numpy", n=n)
        mem_jax = common.peak_rss("benchmarks.bench_risk:peak_jax", n=n)
        row = {"n": n, "p": P, "d": D, "dv": DV, "summary_atoms": int(summary[0].shape[0]),
               "chunk": chunk, "flops": flops, "time": t,
               "risk_numpy": r_np, "risk_jax": r_jax,
               "rel_diff": abs(r_np - r_jax) / abs(r_np),
               "peak_rss_numpy": mem_np, "peak_rss_jax": mem_jax,
               "tracemalloc_numpy": numpy_tracemalloc(n),
               "xla_temp_out_jax": xla_working_set(qj, c, s, chunk),
               "input_bytes": int(sum(x.nbytes for x in (q, *cache, *summary)))}
        row["speedup"] = t["numpy"]["best_s"] / t["jax"]["best_s"]
        row["gflops_numpy"] = flops / t["numpy"]["best_s"] / 1e9
        row["gflops_jax"] = flops / t["jax"]["best_s"] / 1e9
        row["gflops_matmuls_only"] = flops / t["matmuls_only"]["best_s"] / 1e9
        a, b = mem_np.get("bytes"), mem_jax.get("bytes")
        row["memory_ratio"] = a / b if a and b else None
        rows.append(row)
        print(f"n = {n}: numpy {t['numpy']['best_s'] * 1e3:.1f} ms, jax "
              f"{t['jax']['best_s'] * 1e3:.1f} ms", flush=True)

    print(f"\nRisk evaluation, p = {P}, d = dv = {D}, summary n/{RATIO} atoms; time = best of "
          f"{rep} interleaved rounds")
    time_table = common.table(
        ["n", "NumPy ms", "JAX ms", "speed-up", "NumPy GFLOP/s", "JAX GFLOP/s",
         "JAX/jnp-matmul", "JAX/np-matmul", "matmuls-only GFLOP/s", "JAX compile s",
         "rel. diff"],
        [[r["n"], f"{r['time']['numpy']['best_s'] * 1e3:.1f}",
          f"{r['time']['jax']['best_s'] * 1e3:.1f}", f"{r['speedup']:.2f}x",
          f"{r['gflops_numpy']:.1f}", f"{r['gflops_jax']:.1f}",
          f"{100 * r['gflops_jax'] / rates['jax_gflops']:.0f}%",
          f"{100 * r['gflops_jax'] / rates['numpy_gflops']:.0f}%",
          f"{r['gflops_matmuls_only']:.1f}",
          f"{r['time']['jax']['first_s'] - r['time']['jax']['best_s']:.2f}",
          f"{r['rel_diff']:.1e}"] for r in rows])
    print("\nPeak memory (MiB). RSS: rise of the high-water mark during one warm call in a fresh "
          "subprocess (same method for both);\nown account: NumPy tracemalloc peak, JAX XLA "
          "temp+output of the larger pass; inputs (not counted) beside")
    mem_table = common.table(
        ["n", "inputs", "NumPy RSS", "JAX RSS", "ratio", "NumPy tracemalloc", "JAX XLA temp+out"],
        [[r["n"], common.mib(r["input_bytes"]), common.mib(r["peak_rss_numpy"].get("bytes")),
          common.mib(r["peak_rss_jax"].get("bytes")),
          "n/a" if r["memory_ratio"] is None else f"{r['memory_ratio']:.1f}x",
          common.mib(r["tracemalloc_numpy"]), common.mib(r["xla_temp_out_jax"])] for r in rows])
    verdict = {}
    at = [r for r in rows if r["n"] == TARGET_N]
    if at:
        r = at[0]
        frac = r["gflops_jax"] / ref_rate
        verdict = {"speedup>=3": r["speedup"] >= 3,
                   "memory_ratio>=10": bool(r["memory_ratio"] and r["memory_ratio"] >= 10),
                   "fraction_of_best_matmul>=0.5": frac >= 0.5}
        print(f"\nAcceptance at n = {TARGET_N}: speed-up {r['speedup']:.2f}x (target 3x), "
              f"peak memory ratio {r['memory_ratio'] or float('nan'):.1f}x (target 10x), "
              f"{100 * frac:.0f}% of the faster measured matmul rate (target 50%): "
              + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in verdict.items()))
    common.save("bench_risk", args, {"matmul": rates, "rows": rows, "acceptance": verdict,
                                     "tables": [time_table, mem_table]})


if __name__ == "__main__":
    main()
