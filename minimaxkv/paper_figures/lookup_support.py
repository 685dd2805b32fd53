"""(g) Lookup family: relative risk vs m/n and the support needed vs n (linear growth)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common
from minimaxkv.tables import REFIT

STYLE = {"minimax": ("black", "o", "-"), REFIT: ("tab:green", "s", "--"),
         "L3": ("tab:red", None, ":")}
LABEL = {"minimax": "minimax", REFIT: "pivoted-QR subset + refit",
         "L3": "L3 (value-linear summaries)"}


def draw(record):
    res = record["result"]
    ns = res["ns"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13.5, 4.2))
    shades = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ns)))
    for n, col in zip(ns, shades):
        row = res["curves"][str(n)]
        f = np.asarray(row["m"]) / n
        ax0.plot(f, row["minimax"], color=col, marker="o", ms=3, label=f"n = {n}")
        ax0.plot(f, row[REFIT], color=col, ls="--", lw=1)
    for t in res["targets"]:
        ax0.axhline(float(t), color="0.5", ls=":", lw=0.8)
    ax0.set_xlabel("budget m / n")
    ax0.set_ylabel("relative risk (1 = answering the mean value)")
    ax0.set_title("Risk vs budget fraction: the curves collapse\n(solid minimax, dashed subset "
                  "+ refit)")
    ax0.legend(loc="upper right")
    ax0.set_xlim(0, 1)
    ax0.set_ylim(bottom=0)
    for j, t in enumerate(res["targets"]):
        for name, vals in res["support"].items():
            col, mk, _ = STYLE[name]
            vals = np.maximum(vals[t], 0.5)
            slope = np.polyfit(np.log(ns), np.log(vals), 1)[0] if len(ns) > 1 else float("nan")
            ax1.plot(ns, vals, color=col, marker=mk, ms=4, ls=("-", "--", ":")[j % 3],
                     label=f"{LABEL[name]}, r = {t} (slope {slope:.2f})")
    ax1.plot(ns, ns, color="0.6", lw=0.8, label="m = n (the whole cache)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log", base=2)
    ax1.set_xlabel("cache size n (atoms; keys orthonormal, d = n)")
    ax1.set_ylabel("support m needed for relative risk ≤ r (atoms)")
    ax1.set_title("Support needed grows linearly with n (log-log slope 1)\n"
                  "L3 holds for value-linear summaries in expectation over random values",
                  fontsize=9)
    ax1.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
               title="rule, target r (log-log slope)", title_fontsize=7)
    fig.suptitle(f"Lookup family: worst-case incompressibility — {common.subtitle(record)}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("lookup_support"))
