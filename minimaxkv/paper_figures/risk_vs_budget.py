"""(a) Risk on held-out queries vs budget, every rule, per family, with the reference band."""

from __future__ import annotations

import matplotlib.pyplot as plt

from minimaxkv.paper_figures import common
from minimaxkv.tables import L2_LOWER, REFIT

HIGHLIGHT = {"minimax": ("black", "-", 2.2), "minimax_agnostic": ("0.35", "--", 1.6)}


def draw(record):
    res = record["result"]
    fams = common.families(record)
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 4.0), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab20")
    for ax, fam in zip(axes, fams):
        row = res["families"][fam]
        x = [m / res["n"] for m in row["budgets"]]
        lo = common.floor(row["risk"][L2_LOWER])
        ref = common.floor(row["risk"][REFIT])
        ax.fill_between(x, lo, ref, color="tab:green", alpha=0.15, lw=0,
                        label="between L2 lower bound and eval-query refit")
        ax.plot(x, lo, color="tab:green", lw=1, ls=":", label="L2 lower bound (worst case)")
        ax.plot(x, ref, color="tab:green", lw=1, ls="-.", label="refit on eval queries (oracle-like)")
        others = [r for r in row["risk"] if r not in HIGHLIGHT and "(" not in r
                  and r != REFIT]
        for i, rule in enumerate(others):
            ax.plot(x, common.floor(row["risk"][rule]), color=cmap(i % 20), lw=1, marker=".",
                    ms=4, label=rule)
        for rule, (col, ls, lw) in HIGHLIGHT.items():
            if rule in row["risk"]:
                ax.plot(x, common.floor(row["risk"][rule]), color=col, ls=ls, lw=lw, marker="o",
                        ms=3, label=rule)
        ax.set_yscale("log")
        common.budget_axis(ax, x)
        ax.set_title(f"{fam} (n = {res['n']})")
        ax.set_xlabel("budget m / n (fraction of atoms kept, = bytes)")
    axes[0].set_ylabel("risk: mean squared output error on held-out queries")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Risk vs budget on synthetic caches (values at round-off drawn at "
                 f"{common.FLOOR:g}) — {common.subtitle(record)}", y=1.0)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(labels) // 6), 1, 0.97))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("risk_vs_budget"))
