"""(h) Cost vs cache length: time and memory of risk evaluation and of each rule, per head."""

from __future__ import annotations

import matplotlib.pyplot as plt

from minimaxkv.paper_figures import common


def draw(record):
    res, cfg = record["result"], record["config"]
    ns = res["ns"]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.3))
    cmap = plt.get_cmap("tab10")
    for i, (name, row) in enumerate(res["rules"].items()):
        style = dict(color="black", lw=2.2) if name == "minimax" else \
            dict(color=cmap(i % 10), lw=1.2)
        axes[0].plot(ns, row["steady"], marker="o", ms=3, label=name, **style)
        axes[1].plot(ns, [b / 2**20 for b in row["bytes"]], marker="o", ms=3, label=name, **style)
    rn = res["risk_ns"]
    twin = axes[2].twinx()
    for mode, ls in (("dense", "--"), ("chunked", "-")):
        row = res["risk"][mode]
        axes[2].plot(rn, row["steady"], color="tab:blue", ls=ls, marker="o", ms=3,
                     label=f"{mode}: time")
        twin.plot(rn, [b / 2**20 for b in row["bytes"]], color="tab:red", ls=ls, marker="s",
                  ms=3, label=f"{mode}: memory")
    twin.set_ylabel("XLA memory, MiB (squares)", color="tab:red")
    twin.set_yscale("log")
    twin.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    twin.grid(False)
    for ax, xs in zip(axes, (ns, ns, rn)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{n // 1024}k" if n >= 1024 else str(n) for n in xs])
        ax.set_xlabel("cache length n (atoms)")
        ax.set_yscale("log")
    axes[0].set_ylabel("seconds per head (steady state, median)")
    axes[0].set_title(f"Compression time, budget {cfg['fraction']:.0%} of n")
    axes[1].set_ylabel("MiB (arguments + outputs + temporaries)")
    axes[1].set_title("Compression memory (XLA's account)")
    axes[2].set_ylabel("seconds, steady state (circles)", color="tab:blue")
    axes[2].set_title(f"Risk of a summary on {cfg['p']} queries")
    h1, l1 = axes[2].get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    axes[2].legend(h1 + h2, l1 + l2, loc="upper left", frameon=False, fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(9, len(labels)), frameon=False)
    fig.suptitle(f"Cost per head (d = dv = {cfg['d']}, float32, {cfg['observed']} observed "
                 f"queries) — {common.subtitle(record)}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("cost"))
