# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bounds on synthetic caches
#
# A cache of one head is $n$ atoms (key, value, log-weight); a summary keeps $m$ atoms. Its risk on a
# query law $P$ is $R_P=\sum_i w_i\,\|A_C(q_i)-A_{\hat C}(q_i)\|^2$, the mean squared error of the
# attention output (`docs/theory.md`, §1.2). This notebook takes the synthetic cache families, whose
# compressibility is known by construction, and puts side by side:
#
# 1. the spectrum of the response covariance $G$ (§3), which says how many directions matter;
# 2. the value-class lower bounds L2 (worst case) and L2' (random values) and the achievable U4;
# 3. the brute-force oracle L1 on tiny caches ($n\le12$);
# 4. the held-out risk of compression rules against the budget.
#
# `SIZE` below picks the scale: `"small"` runs in seconds (the tests use it), `"normal"` is what the
# committed notebook shows.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from minimaxkv import bounds, compressibility, rules, synthetic
from minimaxkv.risk import risk

jax.config.update("jax_enable_x64", True)  # bounds at round-off level need float64

SIZE = os.environ.get("MINIMAXKV_NOTEBOOK_SIZE", "normal")
CONFIGS = {
    "small": dict(n=48, p=48, budgets=[2, 8, 24], oracle_n=8, oracle_budgets=[1, 2],
                  oracle_families=["lookup"], rule_families=["clustered"],
                  p_obs=16, p_eval=48, fractions=[0.25], rules=["snapkv", "kmeans_merge"]),
    "normal": dict(n=256, p=128, budgets=[1, 2, 4, 8, 16, 32, 64, 128], oracle_n=10,
                   oracle_budgets=[1, 2, 3, 4], oracle_families=["clustered", "power_law", "lookup"],
                   rule_families=["clustered", "power_law", "recency"], p_obs=32, p_eval=128,
                   fractions=[0.05, 0.1, 0.2, 0.3, 0.5],
                   rules=["streaming_llm", "snapkv", "expected_attention", "kmeans_merge",
                          "attention_matching", "snapkv+fit", "minimax"]),
}
if SIZE not in CONFIGS:
    raise ValueError(f"MINIMAXKV_NOTEBOOK_SIZE: expected one of {sorted(CONFIGS)}, got {SIZE!r}")
cfg = CONFIGS[SIZE]
D, DV = 32, 16  # key and value dimensions
KEY = jax.random.PRNGKey(0)
print(f"size {SIZE}: n = {cfg['n']} atoms, d = {D}, dv = {DV}")

# %% [markdown]
# ## The families
#
# `synthetic.make(family, key, n=..., d=..., dv=..., p=...)` returns a cache and the queries that
# probe it. The families run from compressible (few clusters, low-rank keys, a few heavy hitters) to
# incompressible (`lookup`: orthogonal keys, each query aligned with its own key, statement L3). The
# lookup family needs $d\ge n$ for exactly orthogonal keys and is probed by its own law, one query
# per atom.

# %%
def instance(family, n, p, key=KEY):
    lookup = family == "lookup"
    return synthetic.make(family, key, n=n, d=max(D, n) if lookup else D, dv=DV,
                          p=n if lookup else p, dtype=jnp.float64)


FAMILIES = list(synthetic.FAMILIES)
insts = {f: instance(f, cfg["n"], cfg["p"]) for f in FAMILIES}
for f, inst in insts.items():
    print(f"{f:10s} cache {inst.cache.n} atoms, keys {inst.cache.keys.shape}, "
          f"queries {inst.queries.shape}")

# %% [markdown]
# ## Response-covariance spectrum
#
# $G_{jl}=\sum_i w_i\,p_j(q_i)p_l(q_i)(1+\langle v_j,v_l\rangle)$ is the Gram matrix of the atoms'
# contributions to the output over the query law (§3). A fast-decaying spectrum means a few
# directions carry the responses; the $\varepsilon$-rank is the least $m$ whose spectral tail
# $\sum_{i>m}\lambda_i$ is at most $\varepsilon$ of the trace.

# %%
EPS = 0.05
spectra = {f: np.asarray(compressibility.spectrum(i.queries, i.cache)) for f, i in insts.items()}

fig, ax = plt.subplots(figsize=(8, 4.2))
for f, e in spectra.items():
    ax.semilogy(np.arange(1, e.size + 1), np.maximum(e / e[0], 1e-18), label=f)
ax.set_xlabel("index i")
ax.set_ylabel(r"$\lambda_i(G)\,/\,\lambda_1(G)$")
ax.set_ylim(1e-18, 2)
ax.set_title(f"Response-covariance spectra (n = {cfg['n']})")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
plt.show()

m8 = cfg["n"] // 8
print(f"{'family':10s}{'eps-rank (5%)':>15s}{'tail at m=n/8 / trace':>24s}")
for f, e in spectra.items():
    tail = float(compressibility.tail_mass(e, m8)) / e.sum()
    print(f"{f:10s}{compressibility.eps_rank(e, EPS):15d}{tail:24.3g}")

# %% [markdown]
# ## Lower and upper bounds against the budget
#
# With $X=W^{1/2}P$ (the weighted attention matrix), every summary whose output is linear in the
# values, $LV$ with $\operatorname{rank}L\le m$ and $L$ chosen without looking at $V$, pays at
# least $\sigma_{m+1}(X)^2$ per unit-norm value column in the worst case (**L2**, Eckart–Young) and
# $\sum_{i>m}\sigma_i(X)^2$ per column on average over i.i.d. unit-variance values (**L2'**). **U4**
# is achieved: the worst case of a mass-matched, least-squares-refit subset of the cache (the
# pivoted-QR support, or the best support when there are at most 200). The gap between U4 and L2
# is the price of keeping atoms of the cache instead of an arbitrary rank-$m$ map; on the lookup
# cache the two coincide (every column of $X$ is alike, so any $m$ atoms are a best support). Values
# near $10^{-14}$ (the `heavy` family past its few heavy atoms) are round-off.

# %%
budgets = [m for m in cfg["budgets"] if m < cfg["n"]]
curves = {}
for f, inst in insts.items():
    q, c = inst.queries, inst.cache
    curves[f] = {
        "L2 (worst case)": [float(bounds.width_lower(q, c, m)) for m in budgets],
        "L2' (random values)": [float(bounds.width_average_lower(q, c, m)) for m in budgets],
        "U4 (achieved, worst case)": [float(bounds.width_upper(q, c, m)[0]) for m in budgets],
    }

cols = 4
rows_ = -(-len(FAMILIES) // cols)
fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.9 * rows_), sharex=True,
                         squeeze=False)
styles = {"L2 (worst case)": "o-", "L2' (random values)": "s--", "U4 (achieved, worst case)": "^-"}
for ax, f in zip(axes.flat, FAMILIES):
    for name, ys in curves[f].items():
        ys = np.asarray(ys)
        ok = ys > 0  # exact zeros (m >= rank) have no place on a log axis
        ax.loglog(np.asarray(budgets)[ok], ys[ok], styles[name], ms=3, label=name)
    ax.set_title(f, fontsize=10)
    ax.grid(alpha=0.3, which="both")
for ax in axes[-1]:
    ax.set_xlabel("budget m (atoms)")
for ax in axes[:, 0]:
    ax.set_ylabel("risk per value column")
for ax in axes.flat[len(FAMILIES):]:
    ax.axis("off")
handles, labels = axes.flat[0].get_legend_handles_labels()
axes.flat[-1].legend(handles, labels, loc="center", fontsize=9)
fig.suptitle(f"Value-class bounds (n = {cfg['n']})")
fig.tight_layout()
plt.show()

# %% [markdown]
# For the exactly orthogonal lookup cache L3 gives the tail in closed form,
# $\sum_{i>m}\sigma_i^2=(n-m)(a-o)^2/n$, linear in $n-m$: no budget below a constant fraction of
# $n$ helps. `bounds.lookup_tail` evaluates it; the measured L2' agrees to round-off.

# %%
look = insts["lookup"]
gap = float(look.queries[0] @ look.cache.keys[0] - look.queries[0] @ look.cache.keys[1]) / np.sqrt(
    look.cache.keys.shape[1])
for m in budgets[:4]:
    measured = float(bounds.width_average_lower(look.queries, look.cache, m))
    closed = bounds.lookup_tail(look.cache.n, m, gap)
    print(f"m = {m:3d}: L2' measured {measured:.6g}, L3 closed form {closed:.6g}")

# %% [markdown]
# ## The oracle on tiny caches (L1)
#
# For $n\le16$ `bounds.oracle` enumerates every support of at most $m$ atoms and, on each, fits
# log-weights and least-squares values: its risk is at most that of every eviction, every
# mass-matched reweighting and every refit on a support of the cache (L1). Here the rules see the
# same queries as the oracle and are scored on them. Rules in the oracle's class (they keep atoms of
# the cache: `summary.kept` is set) cannot beat it beyond solver tolerance; merging rules, whose
# keys are new, are outside the class and may.

# %%
on = cfg["oracle_n"]
oracle_rules = cfg["rules"]
small = {f: instance(f, on, 8, key=jax.random.PRNGKey(1)) for f in cfg["oracle_families"]}
oracle_rows = {}
for f, inst in small.items():
    q, c = inst.queries, inst.cache
    row = {"oracle (L1)": [], "best eviction": []}
    row.update({r: [] for r in oracle_rules})
    for m in cfg["oracle_budgets"]:
        res = bounds.oracle(q, c, m)
        row["oracle (L1)"].append(float(res.risk))
        row["best eviction"].append(float(res.eviction_risk))
        for r in oracle_rules:
            rule = rules.get(r, theta=inst.theta)  # the family's RoPE base (0: none)
            row[r].append(float(risk(q, c, rule(c, m, q, KEY))))  # KEY: the rules' draws
    oracle_rows[f] = row

fig, axes = plt.subplots(1, len(small), figsize=(4.2 * len(small), 3.6), squeeze=False)
for ax, (f, row) in zip(axes[0], oracle_rows.items()):
    for name, ys in row.items():
        kw = dict(lw=2.5, color="k") if name == "oracle (L1)" else \
            dict(ls="--", color="gray") if name == "best eviction" else dict(alpha=0.8)
        ax.semilogy(cfg["oracle_budgets"], ys, marker="o", ms=3, label=name, **kw)
    ax.set_title(f"{f}, n = {on}", fontsize=10)
    ax.set_xlabel("budget m (atoms)")
    ax.set_xticks(cfg["oracle_budgets"])
    ax.grid(alpha=0.3, which="both")
axes[0, 0].set_ylabel("risk on the queries")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
fig.tight_layout(rect=(0, 0.13, 1, 1))
plt.show()

# %%
print("risk / oracle risk (< 1 only for rules outside the oracle's class)")
for f, row in oracle_rows.items():
    print(f"\n{f}: " + "".join(f"{'m=' + str(m):>9s}" for m in cfg["oracle_budgets"]))
    for name in ["best eviction", *oracle_rules]:
        ratios = np.asarray(row[name]) / np.asarray(row["oracle (L1)"])
        print(f"  {name:20s}" + "".join(f"{r:9.3g}" for r in ratios))

# %% [markdown]
# ## Rules against the budget, on held-out queries
#
# Each rule sees `p_obs` observed queries and is scored on `p_eval` held-out queries of the same
# law. Beside the rules: L2' times $d_v$ at the held-out law, the expected risk below which no
# value-linear summary blind to the values can go when the values are i.i.d. standard normal (as in
# every synthetic family). Rules that look at the values (`expected_attention`, and `minimax`'s
# value-aware selection, V1) are outside that class and may go below it. The bound is zero once $m$
# reaches the number of held-out queries (the rank of $X$), so it has no point there.

# %%
n = cfg["n"]
p_obs, p_eval = cfg["p_obs"], cfg["p_eval"]
held = {}
for f in cfg["rule_families"]:
    inst = instance(f, n, p_obs + p_eval)
    c, q_obs, q_eval = inst.cache, inst.queries[:p_obs], inst.queries[p_obs:]
    ms = [max(1, round(fr * n)) for fr in cfg["fractions"]]
    table = {r: [float(risk(q_eval, c, rules.get(r, theta=inst.theta)(c, m, q_obs, KEY)))
                 for m in ms] for r in cfg["rules"]}
    table["L2' x dv (expected, value-blind)"] = [
        DV * float(bounds.width_average_lower(q_eval, c, m)) for m in ms]
    held[f] = (ms, table)

fig, axes = plt.subplots(1, len(held), figsize=(4.4 * len(held), 3.8), squeeze=False)
for ax, (f, (ms, table)) in zip(axes[0], held.items()):
    for name, ys in table.items():
        kw = dict(color="k", ls="--", lw=2) if name.startswith("L2") else {}
        ys = np.asarray(ys)
        ok = ys > 0
        ax.loglog(np.asarray(ms)[ok], ys[ok], marker="o", ms=3, label=name, **kw)
    ax.set_title(f"{f}, n = {n}", fontsize=10)
    ax.set_xlabel("budget m (atoms)")
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.grid(alpha=0.3, which="both")
axes[0, 0].set_ylabel(f"risk on {p_eval} held-out queries")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center",
           ncol=min(4, len(cfg["rules"]) + 1), fontsize=8, bbox_to_anchor=(0.5, 0.0))
fig.tight_layout(rect=(0, 0.14, 1, 1))
plt.show()

# %%
for f, (ms, table) in held.items():
    print(f"\n{f}: risk on held-out queries")
    print(f"  {'rule':34s}" + "".join(f"{'m=' + str(m):>10s}" for m in ms))
    for name, ys in table.items():
        print(f"  {name:34s}" + "".join(f"{y:10.3g}" for y in ys))

# %% [markdown]
# The same table for any family and rule set is `minimaxkv compare`; the cached experiment behind
# the paper figure is `minimaxkv/experiments/risk_vs_budget.py`.
