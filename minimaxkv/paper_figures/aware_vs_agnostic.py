"""(d) The query-aware vs query-agnostic gap: paired rules' risk vs budget, per family."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common
from minimaxkv.tables import REFIT

STYLE = {"minimax": ("black", "-"), "minimax_agnostic": ("black", "--"),
         "snapkv": ("tab:blue", "-"), "expected_attention": ("tab:blue", "--"),
         REFIT: ("tab:green", ":")}
LABEL = {"minimax": "minimax (query-aware)", "minimax_agnostic": "minimax_agnostic",
         "snapkv": "SnapKV (query-aware)", "expected_attention": "Expected Attention (agnostic)",
         REFIT: f"{REFIT} (oracle-like)"}


def draw(record):
    res = record["result"]
    fams = common.families(record)
    cols = min(len(fams), 3)
    rows = -(-len(fams) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.6 * rows), squeeze=False)
    for ax, fam in zip(axes.flat, fams):
        row = res["families"][fam]
        x = [m / res["n"] for m in row["budgets"]]
        for rule in sorted(row["risk"], key=lambda r: list(STYLE).index(r) if r in STYLE else 99):
            runs = np.asarray(row["risk"][rule], float)
            col, ls = STYLE.get(rule, ("tab:gray", "-"))
            mean = runs.mean(axis=0)
            ax.plot(x, common.floor(mean), color=col, ls=ls, marker="o", ms=3, lw=1.5,
                    label=LABEL.get(rule, rule))
            if runs.shape[0] > 1:
                ax.fill_between(x, common.floor(runs.min(axis=0)), common.floor(runs.max(axis=0)),
                                color=col, alpha=0.1, lw=0)
        gap = row["gap"]
        ax.set_title(f"{fam}: agnostic/aware minimax risk {min(gap):.2g}–{max(gap):.2g}×")
        ax.set_yscale("log")
        common.budget_axis(ax, x)
        ax.set_xlabel("budget m / n (fraction of atoms kept)")
        ax.set_ylabel("risk on held-out queries")
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    nseeds = len(next(iter(res["families"].values()))["risk"]["minimax"])
    if len(fams) < rows * cols:
        axes.flat[-1].legend(handles, labels, loc="center", title="rule (solid = sees queries)")
    else:
        fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"Query-aware vs query-agnostic, n = {res['n']}, mean over {nseeds} seed(s) "
                 f"(band: min–max) — {common.subtitle(record)}")
    fig.tight_layout(rect=(0, 0 if len(fams) < rows * cols else 0.08, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("aware_vs_agnostic"))
