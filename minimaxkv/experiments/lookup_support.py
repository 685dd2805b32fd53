"""(g) The lookup family: the support needed for a target relative risk grows linearly with n.

For each n: the exact lookup cache (orthonormal keys, d = n, gap g) probed by its finite query law
(query i aligned with key i, each once; rules and the reference see this law). Relative risk
(1 = answering the mean value) of ``minimax`` and of the oracle-like reference (pivoted-QR support
on the attention matrix + mass-matched least-squares refit) on a grid of budgets m = f n; the
support needed for each target is interpolated (linearly in m, between grid points and the exact
full cache m = n). The L3 line is the value-linear bound of docs/theory.md (L3 with L2', expected
over random values): m >= n (1 - r D / (dv (a-o)^2)), D the output spread of the instance.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from minimaxkv.experiments import common
from minimaxkv.tables import REFIT

CONFIGS = {
    "tiny": {"ns": [8, 16], "fractions": [0.5], "targets": [0.5, 0.1], "dv": 8,
             "gap": 8.0, "seed": 0},
    "quick": {"ns": [16, 32, 64, 128, 256], "fractions": [0.25, 0.5, 0.75], "targets": [0.5, 0.2],
              "dv": 16, "gap": 8.0, "seed": 0},
    "full": {"ns": [16, 32, 64, 128, 256, 512, 1024],
             "fractions": [i / 16 for i in range(1, 16)], "targets": [0.5, 0.2, 0.1],
             "dv": 64, "gap": 8.0, "seed": 0},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def support_needed(ms, risks, n: int, target: float) -> float:
    """Smallest m with relative risk <= ``target``, linear between grid points and (n, 0)."""
    ms = list(ms) + [n]
    risks = list(risks) + [0.0]
    prev_m, prev_r = 0, 1.0  # m = 0: at best the mean value, relative risk 1
    for m, r in zip(ms, risks):
        if r <= target:
            if prev_r <= r:
                return float(m)
            return float(prev_m + (m - prev_m) * (prev_r - target) / (prev_r - r))
        prev_m, prev_r = m, r
    return float(n)


def l3_support(n: int, gap: float, dv: int, spread: float, target: float) -> float:
    """The L3 support: m >= n (1 - r D / (dv (a-o)^2)) (values N(0, 1), s = 1)."""
    a_o = (math.exp(gap) - 1) / (math.exp(gap) + n - 1)
    return max(0.0, n * (1 - target * spread / (dv * a_o ** 2)))


def _reference(q, c, m):
    import jax.numpy as jnp
    import scipy.linalg

    from minimaxkv import fit
    from minimaxkv.attention import attention_weights

    piv = scipy.linalg.qr(np.asarray(attention_weights(q, c)), pivoting=True, mode="economic")[2]
    return fit.refit(q, c, jnp.asarray(np.sort(piv[:m])))


def run(config: dict) -> dict:
    """``{"ns": [...], "curves": {n: {"m": [...], rule: [rel. risk]}}, "support": {...}}``."""
    import jax
    import jax.numpy as jnp

    from minimaxkv import budgets, programs, rules, synthetic
    from minimaxkv.attention import attend
    from minimaxkv.risk import relative_risk

    curves, support = {}, {"minimax": {}, REFIT: {}, "L3": {}}
    grids = {n: sorted({min(n - 1, budgets.atoms(f, n)) for f in config["fractions"]})
             for n in config["ns"]}
    bar = tqdm(total=sum(map(len, grids.values())), desc="lookup_support")
    for n in config["ns"]:
        inst = synthetic.make("lookup", jax.random.PRNGKey(config["seed"]), n=n, d=n,
                              dv=config["dv"], p=n, gap=config["gap"], dtype=jnp.float64)
        q, c = inst.queries, inst.cache
        vbar = jnp.mean(c.values, axis=0)
        spread = float(jnp.mean(jnp.sum((attend(q, c) - vbar) ** 2, axis=1)))
        ms = grids[n]
        row = {"m": ms, "minimax": [], REFIT: []}
        for m in ms:
            summary = rules.get("minimax")(c, m, q, jax.random.PRNGKey(config["seed"]))
            row["minimax"].append(float(relative_risk(q, c, summary)))
            row[REFIT].append(float(relative_risk(q, c, _reference(q, c, m))))
            programs.relieve()  # every (n, m) compiles its own programs: bound what stays mapped
            bar.update(1)
        curves[str(n)] = row
        for t in config["targets"]:
            for name in ("minimax", REFIT):
                support[name].setdefault(f"{t:g}", []).append(support_needed(ms, row[name], n, t))
            support["L3"].setdefault(f"{t:g}", []).append(
                l3_support(n, config["gap"], config["dv"], spread, t))
    bar.close()
    return {"ns": config["ns"], "curves": curves, "support": support,
            "targets": [f"{t:g}" for t in config["targets"]]}


if __name__ == "__main__":
    raise SystemExit(common.main("lookup_support"))
