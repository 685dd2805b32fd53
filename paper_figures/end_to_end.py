"""(f) End to end on SmolLM2: KL to the full cache and task accuracy vs bytes of cache."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_figures import common


def _pareto(points):
    """The (bytes, kl) points not dominated by another (fewer bytes and lower KL)."""
    pts = sorted(points)
    front, best = [], np.inf
    for x, y in pts:
        if y < best:
            front.append((x, y))
            best = y
    return front


def draw(record):
    res, cfg = record["result"], record["config"]
    summary = res["summary"]
    rules = cfg["rules"]
    full_kib = res["full_bytes"] / 1024
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    cmap = plt.get_cmap("tab10")
    base = [r for r in rules if "@" not in r]
    for j, rule in enumerate(rules):
        rs = sorted((s for s in summary if s["rule"] == rule), key=lambda s: s["KiB"])
        x = [s["KiB"] for s in rs]
        adaptive = "@" in rule
        col = "black" if rule.startswith("minimax") else \
            cmap(base.index(rule.split("@")[0]) % 10) if rule.split("@")[0] in base else cmap(j % 10)
        style = dict(ls="none", marker={"pyramid": "^", "adakv": "s", "spectral": "D"}.get(
            rule.partition("@")[2], "o"), ms=7, mfc="none", mew=1.6) if adaptive else \
            dict(ls="-", marker="o", ms=4, lw=2.2 if rule == "minimax" else 1.3)
        axes[0].plot(x, common.floor([s["kl"] for s in rs]), color=col, label=rule, **style)
        axes[1].plot(x, [s["score"] for s in rs], color=col, label=rule, **style)
    front = _pareto([(s["KiB"], s["kl"]) for s in summary])
    axes[0].plot(*zip(*front), color="0.6", lw=5, alpha=0.35, zorder=0, label="Pareto front")
    full_score = np.mean([s["score_full"] for s in summary])
    axes[1].axhline(full_score, color="0.3", ls=":", lw=1)
    axes[1].text(0.02, full_score, f" full cache ({full_kib:.0f} KiB): {full_score:.2f}",
                 va="bottom", fontsize=8, color="0.3", transform=axes[1].get_yaxis_transform())
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("compressed cache, KiB (keys + values + log-weights, all layers and heads)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("next-token KL(full ‖ compressed), nats, mean over the continuation")
    axes[0].set_title("Distortion vs bytes (lower is better)")
    axes[1].set_ylabel("task accuracy (greedy answer, string match)")
    axes[1].set_ylim(-0.05, 1.1)
    axes[1].set_title("Accuracy vs bytes")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False,
               title="rule (hollow markers: per-head budgets of the same total, RULE@allocation)")
    n_tok = res["prefix_tokens"][0]
    mode = "query-aware" if cfg["query_aware"] else "query-agnostic"
    fig.suptitle(f"{res['model']} end to end: {cfg['samples']} × {cfg['task']}, ~{n_tok} prompt "
                 f"tokens, {mode}, one-shot compression — {common.subtitle(record)}")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("end_to_end"))
