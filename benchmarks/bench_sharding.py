"""The compressibility sweep sharded over 8 host devices equals the single-device sweep.

A stack of L x H KV heads (``[L*H, n, d]`` keys and values, ``[L*H, p, d]`` queries; every head
a ``power_law`` synthetic cache with its own seed) is swept by one per-head function -- the
exact spectrum of the response covariance G (``compressibility.spectrum``) -- lifted over heads
with ``jax.vmap`` and run

* on one device (``jax.jit``), and
* split over 8 devices with ``jax.shard_map`` (each device sweeps L*H/8 heads),

in one subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag
must be set before JAX starts). Printed: the largest absolute and relative difference of the
eigenvalues, whether the eps-ranks (eps = 1%, 5%, 10%) agree for every head, and both times.
On a CPU the 8 "devices" share the same cores, so the time ratio says what sharding costs or
saves here, not what 8 accelerators would give.

    python -m benchmarks.bench_sharding            # L = 8, H = 3, n = 1024, p = 64
    python -m benchmarks.bench_sharding --quick    # L = 8, H = 3, n = 256, p = 32
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import common

DEVICES = 8
EPS = (0.01, 0.05, 0.1)


def child(L: int, H: int, n: int, p: int, d: int, repeat: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from minimaxkv import Cache, compressibility, synthetic

    devices = jax.devices()
    assert len(devices) == DEVICES, f"expected {DEVICES} host devices, got {len(devices)}"
    heads = [synthetic.make("power_law", jax.random.PRNGKey(i), n=n, d=d, dv=d, p=p)
             for i in range(L * H)]
    keys = jnp.stack([h.cache.keys for h in heads])
    values = jnp.stack([h.cache.values for h in heads])
    queries = jnp.stack([h.queries for h in heads])

    def per_head(q, k, v):
        return compressibility.spectrum(q, Cache(k, v))

    sweep = jax.vmap(per_head)
    single = jax.jit(sweep)
    mesh = jax.make_mesh((DEVICES,), ("h",))
    spec = P("h")
    sharded = jax.jit(jax.shard_map(sweep, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec))
    put = NamedSharding(mesh, spec)
    qs, ks, vs = (jax.device_put(x, put) for x in (queries, keys, values))
    t = common.timed({"single": lambda: single(queries, keys, values),
                      "sharded": lambda: sharded(qs, ks, vs)}, repeat, pause=0.1)
    a = np.asarray(single(queries, keys, values), np.float64)
    out = sharded(qs, ks, vs)
    b = np.asarray(out, np.float64)
    ranks_a = [[compressibility.eps_rank(e, eps) for eps in EPS] for e in a]
    ranks_b = [[compressibility.eps_rank(e, eps) for eps in EPS] for e in b]
    return {"heads": L * H, "L": L, "H": H, "n": n, "p": p, "d": d,
            "devices_used": len(out.sharding.device_set),
            "max_abs_diff": float(np.max(np.abs(a - b))),
            "max_rel_diff": float(np.max(np.abs(a - b)) / np.max(np.abs(a))),
            "eps_ranks_equal": ranks_a == ranks_b, "eps": list(EPS),
            "eps_ranks_single": ranks_a, "time": t}


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--child", type=str, default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    rep = common.repeats(args)
    L, H = 8, 3
    n, nq = (256, 32) if args.quick else (1024, 64)
    if args.sizes:
        n = args.sizes[0]
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={DEVICES}").strip()
    kw = {"L": L, "H": H, "n": n, "p": nq, "d": 64, "repeat": rep}
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_sharding", "--child",
                        json.dumps(kw)], capture_output=True, text=True, env=env,
                       cwd=common.REPO)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        sys.exit(f"the 8-device subprocess failed:\n{r.stderr[-3000:]}")
    res = json.loads(lines[-1])
    mach = common.machine()
    print(common.machine_line(mach) + f"; subprocess XLA_FLAGS={env['XLA_FLAGS']}")
    t = res["time"]
    print(f"\nExact spectrum of G for {res['heads']} heads (L = {L} x H = {H}), n = {n}, "
          f"p = {nq}, d = dv = 64: one device vs {DEVICES} host devices (shard_map over heads); "
          f"time = best of {rep}")
    text = common.table(
        ["devices", "time s", "first call s", "vs 1 device", "max |diff|", "max rel. diff",
         "eps-ranks equal"],
        [[1, f"{t['single']['best_s']:.2f}", f"{t['single']['first_s']:.2f}", "1.00x", "-", "-",
          "-"],
         [res["devices_used"], f"{t['sharded']['best_s']:.2f}", f"{t['sharded']['first_s']:.2f}",
          f"{t['single']['best_s'] / t['sharded']['best_s']:.2f}x",
          f"{res['max_abs_diff']:.1e}", f"{res['max_rel_diff']:.1e}",
          "yes" if res["eps_ranks_equal"] else "NO"]])
    common.save("bench_sharding", args, {"result": res, "tables": [text],
                                         "subprocess_xla_flags": env["XLA_FLAGS"]})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
