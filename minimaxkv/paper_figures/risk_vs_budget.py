"""(a) Risk on held-out queries vs budget, every rule, per family, beside the refit that sees the
evaluation queries (a reference, not a bound).

No lower bound is drawn: L2 (stored beside, printed by ``minimaxkv compare``) bounds the *worst
case over unit-norm values* of value-linear rank-m summaries, not the risk of these rules on these
values (with random values the rules sit well below it), and no bound of docs/theory.md holds for
every rule drawn here on one instance (``minimax`` reads V; L1's oracle needs n <= 16)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from minimaxkv.paper_figures import common
from minimaxkv.tables import REFIT

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
        ref = common.floor(row["risk"][REFIT])
        ax.plot(x, ref, color="tab:green", lw=1, ls="-.",
                label="reference, not a bound: LS refit fitted on the eval queries")
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
