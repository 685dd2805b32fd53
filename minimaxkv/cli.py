"""Command line: ``minimaxkv report`` (compressibility and bounds on the synthetic families)."""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from . import bounds, compressibility, synthetic


def _report_rows(n: int, p: int, d: int, dv: int, seed: int, budgets: list[float]):
    key = jax.random.PRNGKey(seed)
    for family in tqdm(sorted(synthetic.FAMILIES), desc="families", file=sys.stderr):
        kw = dict(n=n, d=d, dv=dv, p=p, dtype=jnp.float64)
        if family == "lookup":
            kw["d"] = max(d, n)  # orthonormal keys: the exact, incompressible lookup cache
        inst = synthetic.make(family, key, **kw)
        q, c = inst.queries, inst.cache
        spec = compressibility.spectrum(q, c)
        row = {
            "family": family,
            "eps_rank": compressibility.eps_rank(spec, 0.05),
            "d_eff": float(compressibility.effective_dimension(spec, 1e-3 * float(spec[0]))),
        }
        for frac in budgets:
            m = max(1, int(round(frac * n)))
            lo = float(bounds.width_lower(q, c, m))
            hi, _ = bounds.width_upper(q, c, m)
            row[f"lower@{frac:g}"] = lo
            row[f"upper/lower@{frac:g}"] = hi / lo if lo > 0 else float("inf")
        small = synthetic.make(family, key, **{**kw, "n": 10, "p": 8, "d": 10 if family == "lookup"
                                               else d})
        orc = bounds.oracle(small.queries, small.cache, 3)
        row["oracle(10->3)"] = float(orc.risk)
        row["evict(10->3)"] = float(orc.eviction_risk)
        yield row


def report(args) -> int:
    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    rows = list(_report_rows(args.n, args.p, args.d, args.dv, args.seed, args.budgets))
    cols = list(rows[0])
    width = [max(len(c), 10) for c in cols]
    print("Compressibility and value-class bounds on the synthetic families")
    print(f"(n={args.n} atoms, p={args.p} queries, d={args.d}, dv={args.dv}, seed={args.seed};"
          " eps_rank at 5% of the response-covariance trace; lower = sigma_{m+1}(P)^2 per unit"
          " value column; upper = best mass-matched LS-refit subset (pivoted QR))")
    print("  ".join(c.rjust(w) for c, w in zip(cols, width)))
    for r in rows:
        cells = [r[c] if isinstance(r[c], str) else
                 (f"{r[c]:d}" if isinstance(r[c], int) else f"{r[c]:.3g}") for c in cols]
        print("  ".join(s.rjust(w) for s, w in zip(cells, width)))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minimaxkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", help="compressibility and bounds on the synthetic families")
    rp.add_argument("--n", type=int, default=256, help="atoms per cache (default 256)")
    rp.add_argument("--p", type=int, default=128, help="queries (default 128)")
    rp.add_argument("--d", type=int, default=32, help="key dimension (default 32)")
    rp.add_argument("--dv", type=int, default=16, help="value dimension (default 16)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25],
                    help="budgets as fractions of n (default 0.1 0.25)")
    rp.set_defaults(func=report)
    args = parser.parse_args(argv)
    for name in ("n", "p", "d", "dv"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be a positive integer")
    if any(not 0 < b <= 1 for b in getattr(args, "budgets", [])):
        parser.error("--budgets must be fractions in (0, 1]")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
