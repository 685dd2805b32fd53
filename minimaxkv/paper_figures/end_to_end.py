"""(f) End to end on SmolLM2: KL to the full cache and task accuracy vs bytes of cache."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common


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
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.15, 1]})
    cmap = plt.get_cmap("tab10")
    base = [r for r in rules if "@" not in r]
    budgets = cfg["budgets"]
    colours = {}
    for j, rule in enumerate(rules):
        rs = sorted((s for s in summary if s["rule"] == rule), key=lambda s: s["KiB"])
        adaptive = "@" in rule
        col = "black" if rule.startswith("minimax") else \
            cmap(base.index(rule.split("@")[0]) % 10) if rule.split("@")[0] in base else cmap(j % 10)
        colours[rule] = col
        style = dict(ls="none", marker={"pyramid": "^", "adakv": "s", "spectral": "D"}.get(
            rule.partition("@")[2], "o"), ms=7, mfc="none", mew=1.6) if adaptive else \
            dict(ls="-", marker="o", ms=4, lw=2.2 if rule == "minimax" else 1.3)
        axes[0].plot([s["KiB"] / 1024 for s in rs], common.floor([s["kl"] for s in rs]),
                     color=col, label=rule, **style)
    front = _pareto([(s["KiB"] / 1024, s["kl"]) for s in summary])
    axes[0].plot(*zip(*front), color="0.6", lw=5, alpha=0.35, zorder=0, label="Pareto front")
    mib = [np.mean([s["KiB"] for s in summary if s["budget"] == b]) / 1024 for b in budgets]
    axes[0].set_xscale("log")
    axes[0].set_xticks(mib)
    axes[0].set_xticklabels([f"{x:.1f} MiB\n({b:.0%})" for x, b in zip(mib, budgets)])
    axes[0].xaxis.set_minor_locator(plt.NullLocator())
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].set_xlabel("compressed cache (keys + values + log-weights of all layers and heads; "
                       "budget as a fraction of the prompt)")
    axes[0].set_ylabel("KL(full ‖ compressed), nats per answer token")
    axes[0].set_title("Distortion vs bytes (lower is better)")
    width = 0.8 / len(rules)
    for j, rule in enumerate(rules):
        by = {s["budget"]: s["score"] for s in summary if s["rule"] == rule}
        x = np.arange(len(budgets)) + (j - (len(rules) - 1) / 2) * width
        h = [by.get(b, np.nan) for b in budgets]
        axes[1].bar(x, [max(v, 0.015) for v in h], width * 0.9, color=colours[rule],
                    hatch="//" if "@" in rule else None, edgecolor="white" if "@" not in rule
                    else colours[rule], fill="@" not in rule, lw=0.8)
    full_score = np.mean([s["score_full"] for s in summary])
    axes[1].axhline(full_score, color="0.3", ls=":", lw=1)
    axes[1].text(0.01, full_score, f" full cache ({full_kib / 1024:.1f} MiB): {full_score:.2f}",
                 va="bottom", fontsize=8, color="0.3", transform=axes[1].get_yaxis_transform())
    axes[1].set_xticks(np.arange(len(budgets)))
    axes[1].set_xticklabels([f"{b:.0%} ({x:.1f} MiB)" for b, x in zip(budgets, mib)])
    axes[1].set_xlabel("budget (fraction of the prompt's atoms per head)")
    axes[1].set_ylabel(f"task accuracy over {cfg['samples']} prompt(s) (greedy answer)")
    axes[1].set_ylim(0, 1.12)
    axes[1].set_title("Accuracy vs bytes (a sliver marks 0)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False,
               title="rule (hollow markers, hatched bars: per-head budgets of the same total, RULE@allocation)")
    n_tok = res["prefix_tokens"][0]
    mode = "query-aware" if cfg["query_aware"] else "query-agnostic"
    fig.suptitle(f"{res['model']} end to end (KL over the answer tokens): {cfg['samples']} × {cfg['task']}, ~{n_tok} prompt "
                 f"tokens, {mode}, one-shot compression — {common.subtitle(record)}")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("end_to_end"))
