"""(b, synthetic) Normalised response-covariance spectra of the synthetic families."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from minimaxkv.paper_figures import common


def _tail(e):
    e = np.asarray(e, float)
    tails = np.cumsum(e[::-1])[::-1] / e.sum()  # tails[m] = sum_{i>=m} / total (0-based)
    return tails


def draw(record):
    res = record["result"]
    fams = res["families"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    cmap = plt.get_cmap("tab10")
    eps_key = "0.05" if "0.05" in next(iter(fams.values()))["eps_rank"] else \
        next(iter(next(iter(fams.values()))["eps_rank"]))
    for i, (fam, row) in enumerate(fams.items()):
        col = cmap(i % 10)
        k = np.arange(1, len(row["eigs"]) + 1)
        axes[0].plot(k, common.floor(row["eigs"]), color=col, lw=1.4,
                     label=f"{fam} (ε-rank {row['eps_rank'][eps_key]})")
        axes[1].plot(k, common.floor(row["eigs_centred"]), color=col, lw=1.4, label=fam)
        axes[2].plot(np.arange(len(row["eigs"])) / res["n"], common.floor(_tail(row["eigs"])),
                     color=col, lw=1.4, label=fam)
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue index i")
    axes[0].set_ylabel("λ_i / λ_1 (response covariance G)")
    axes[0].set_title("Spectrum of G")
    axes[1].set_ylabel("λ_i / λ_1 (value-centred Γ)")
    axes[1].set_title("Spectrum of the value-centred Γ")
    axes[2].set_yscale("log")
    axes[2].axhline(float(eps_key), color="0.3", ls=":", lw=1)
    axes[2].text(0.98, float(eps_key) * 1.15, f"ε = {eps_key}", ha="right", va="bottom",
                 fontsize=8, color="0.3", transform=axes[2].get_yaxis_transform())
    axes[2].set_xlabel("m / n (atoms kept, fraction)")
    axes[2].set_ylabel("tail fraction Σ_{i>m} λ_i / Σ λ_i")
    axes[2].set_title("Tail mass (the L2 bound's shape)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
               title=f"family (ε-rank at ε = {eps_key}: atoms for a tail below ε of the trace)")
    fig.suptitle(f"Response-covariance spectra, n = {res['n']} atoms — {common.subtitle(record)} "
                 f"(values below {common.FLOOR:g} drawn at it)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("spectra"))
