"""(f) End to end on SmolLM2: RULER score and KL to the full cache per rule and compression ratio,
with 95 % intervals over prompts."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common


def _bars(ax, cells, rules, ratios, colours, value, lo, hi, label):
    """Grouped bars: one group per ratio, one bar per rule, 95 % interval whiskers, each bar's
    value written at its foot (so a bar of height 0 reads 0)."""
    width = 0.8 / len(rules)
    for j, rule in enumerate(rules):
        x = np.arange(len(ratios)) + (j - (len(rules) - 1) / 2) * width
        c = [cells.get((rule, r)) for r in ratios]
        y = np.array([np.nan if v is None else v[value] for v in c])
        err = np.array([[0, 0] if v is None or not np.isfinite(v[lo]) else
                        [v[value] - v[lo], v[hi] - v[value]] for v in c]).T
        ax.bar(x, y, width * 0.9, color=colours[rule], label=rule,
               lw=1.6 if rule == "minimax" else 0, edgecolor="black")
        ax.errorbar(x, y, yerr=np.maximum(err, 0), fmt="none", ecolor="0.2", elinewidth=1,
                    capsize=2.5)
        for xi, yi in zip(x, y):
            if np.isfinite(yi):
                ax.annotate(label(yi), (xi, 0), xytext=(0, 3), textcoords="offset points",
                            xycoords=("data", "axes fraction"), ha="center", fontsize=8,
                            color="0.1", bbox=dict(boxstyle="round,pad=0.15", fc="white",
                                                   ec="none", alpha=0.8))
    return width


def draw(record):
    res, cfg = record["result"], record["config"]
    rules, ratios = cfg["rules"], sorted(cfg["ratios"])
    cmap = plt.get_cmap("tab10")
    colours = {r: "0.15" if r == "minimax" else cmap(i % 10) for i, r in enumerate(rules)}
    aware = [r for r in res["average"] if r["query_aware"]]
    score = {(r["method"], r["compression_ratio"]): r for r in aware}
    full = score[("full", 0.0)]
    kl = {(r["method"], r["compression_ratio"]): r for r in res["kl"] if r["query_aware"]}
    atoms = {x: int(np.mean([r["budget"] for r in res["rows"] if r["budget_spec"] == x]))
             for x in ratios}
    mib = {x: np.mean([r["bytes"] for r in res["rows"] if r["budget_spec"] == x]) / 2**20
           for x in ratios}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.6))

    width = _bars(ax0, score, rules, ratios, colours, "score", "ci_low", "ci_high",
                  lambda v: f"{v:.0f} %")
    tasks = cfg["tasks"]
    for j, rule in enumerate(rules):  # each task's mean score on its bar
        for i, x in enumerate(ratios):
            pts = [t["score"] for t in res["per_task"] if t["method"] == rule
                   and t["compression_ratio"] == x and t["query_aware"]]
            xs = i + (j - (len(rules) - 1) / 2) * width
            ax0.plot([xs] * len(pts), pts, ls="none", marker="_", ms=9, color="white", mew=1.4)
            ax0.plot([xs] * len(pts), pts, ls="none", marker="_", ms=9, color="0.1", mew=0.6)
    ax0.axhline(full["score"], color="0.3", ls="--", lw=1)
    if np.isfinite(full["ci_low"]):
        ax0.axhspan(full["ci_low"], full["ci_high"], color="0.5", alpha=0.12, lw=0)
    ax0.text(0.01, full["score"], f" full cache ({res['full_bytes'] / 2**20:.0f} MiB): "
             f"{full['score']:.0f} %", va="bottom", fontsize=8, color="0.3",
             transform=ax0.get_yaxis_transform())
    ax0.set_ylim(0, 112)
    ax0.set_ylabel(f"RULER score (%), mean of {len(tasks)} tasks x {cfg['prompts']} prompts")
    ax0.set_title("Task score (higher is better; ticks: each task's mean)")

    _bars(ax1, kl, rules, ratios, colours, "kl", "ci_low", "ci_high", lambda v: f"{v:.2f}")
    ax1.set_yscale("log")
    for axis in (ax1.yaxis.set_major_formatter, ax1.yaxis.set_minor_formatter):
        axis(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.set_ylabel("KL(full ‖ compressed), nats per answer token")
    ax1.set_title("Distortion of the answer (lower is better)")
    for ax in (ax0, ax1):
        ax.set_xticks(np.arange(len(ratios)))
        ax.set_xticklabels([f"compression ratio {x:g}\n({atoms[x]} atoms/head, {mib[x]:.0f} MiB)"
                            for x in ratios])
        ax.grid(axis="x", visible=False)
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
               title="rule (whiskers: 95 % bootstrap intervals over prompts, resampled within "
                     "each task)")
    mode = "query-aware" if cfg["protocols"] == [True] else "both protocols"
    fig.suptitle(f"{res['model']} end to end on RULER ({', '.join(tasks)}), "
                 f"~{res['prefix_tokens'][-1]:,}-token prompts, {mode}, one-shot compression "
                 f"of every layer and head — {common.subtitle(record)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("end_to_end"))
