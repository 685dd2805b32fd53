"""Figures drawn by the library itself (the command line's plots); matplotlib, Agg backend.

The paper figures (:mod:`minimaxkv.paper_figures`) that show the same objects call these functions, so each
picture is defined once.
"""

from __future__ import annotations

import numpy as np

FLOOR = 1e-8  # values at round-off level are drawn at this floor on log axes


def floor(values):
    """Values clipped to :data:`FLOOR` for log axes."""
    return [max(float(v), FLOOR) for v in values]


def budget_axis(ax, fractions):
    """Log x axis with one plain tick per budget fraction (no overlapping minor labels)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def agg():
    """Select the non-interactive Agg backend unless a backend is already in use."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg") and "inline" not in \
            matplotlib.get_backend().lower():
        matplotlib.use("Agg")


PREDICTOR_LABEL = {
    "heldout": "held-out blind risk (P1, primary)", "blind": "blind risk under the fitted law",
    "gamma_tail": "Γ tail", "shift": "law shift"}


def prediction_panel(ax, rows: list[dict], rule: str, summary: dict | None, *,
                     predictor: str = "heldout", title: str = ""):
    """Predicted (``predictor`` of each row's ``predicted``) against measured relative risk of
    ``rule`` on the probes, one colour per budget, the line measured = predicted and the
    calibration band (:data:`minimaxkv.analyze.CALIBRATION_BAND`); the legend gives Spearman's
    rho with its bootstrap 95 % interval and the share of heads inside the band
    (``summary``: :func:`minimaxkv.analyze.prediction_summary`, None for no statistics)."""
    import matplotlib.pyplot as plt

    from .analyze import CALIBRATION_BAND

    bcol = plt.get_cmap("tab10")
    budgets = rows[0]["budgets"]
    n = rows[0]["n"]
    xs, ys = [], []
    for i, m in enumerate(budgets):
        x = floor([r["predicted"][predictor][i] for r in rows])
        y = floor([r["relative"][rule][i] for r in rows])
        xs += x
        ys += y
        label = f"m = {m} ({m / n:.0%})"
        if summary:
            c = summary[predictor][i]
            label += f": ρ = {c['rho']:.2f} [{c['low']:.2f}, {c['high']:.2f}]"
            if "calibrated" in c:
                label += f", {c['calibrated']:.0%} in band"
        ax.scatter(x, y, s=10, color=bcol(i), alpha=0.7, label=label)
    lo, hi = min(xs + ys), max(xs + ys)
    line = np.geomspace(lo, hi, 50)
    if predictor in ("heldout", "blind"):
        ax.plot(line, line, color="0.3", lw=0.8, label="measured = predicted")
        ax.fill_between(line, CALIBRATION_BAND[0] * line, CALIBRATION_BAND[1] * line,
                        color="0.5", alpha=0.15, lw=0,
                        label=f"calibration band ×[{CALIBRATION_BAND[0]:g}, {CALIBRATION_BAND[1]:g}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted: {PREDICTOR_LABEL.get(predictor, predictor)}")
    ax.set_ylabel(f"measured: relative risk of {rule} on the probes")
    ax.set_title(title or f"Predicted vs measured, {len(rows)} heads")
    ax.legend(loc="lower right", framealpha=0.9, edgecolor="0.8", fontsize=7)


def _grid(rows, field, layers, heads):
    g = np.full((heads, layers), np.nan)
    for r in rows:
        g[r["kv_head"], r["layer"]] = r[field]
    return g


def heads_figure(rows: list[dict], *, eps: float, model: str, probes: int, subtitle: str = ""):
    """The figure of :func:`minimaxkv.analyze.analyze` rows: eps-rank heatmap over layers x KV
    heads, every head's spectrum, predicted (spectral tail) vs measured (relative risk of
    ``minimax``, or of the first rule) with Spearman's rho, and each rule's median relative risk
    vs budget beside the probe-fitted refit. Rows need ``eigs`` (``analyze(..., spectrum=True)``)."""
    import matplotlib.pyplot as plt

    from .analyze import prediction_summary

    rules = list(rows[0]["relative"])
    focus = "minimax" if "minimax" in rules else rules[0]
    summary = prediction_summary(rows, focus) if len(rows) >= 3 else None
    layers = max(r["layer"] for r in rows) + 1
    heads = max(r["kv_head"] for r in rows) + 1
    n = rows[0]["n"]
    budgets = rows[0]["budgets"]
    agg()
    fig = plt.figure(figsize=(15, 8.4))
    gs = fig.add_gridspec(2, 3, height_ratios=[0.9, 2.0], hspace=0.45, wspace=0.42)

    ax = fig.add_subplot(gs[0, :])
    grid = _grid(rows, "eps_rank", layers, heads)
    im = ax.imshow(grid, aspect="auto", cmap="magma_r", interpolation="nearest",
                   vmin=0, vmax=np.nanmax(grid))
    for (h, i), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(i, h, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                    color="white" if v > 0.6 * np.nanmax(grid) else "black")
    ax.set_xticks(range(layers))
    ax.set_yticks(range(heads))
    ax.set_xlabel("layer")
    ax.set_ylabel("KV head")
    ax.grid(False)
    ax.set_title(f"ε-rank of the response covariance G (ε = {eps}): atoms a value-linear "
                 f"summary needs, of n = {n} context tokens, per layer and KV head")
    fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02, label="ε-rank (atoms)")

    ax = fig.add_subplot(gs[1, 0])
    cmap = plt.get_cmap("viridis")
    for r in rows:
        e = floor(r["eigs"])
        ax.plot(np.arange(1, len(e) + 1), e, color=cmap(r["layer"] / max(layers - 1, 1)),
                lw=0.6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-8)
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("λ_i / λ_1 of G on the probe queries")
    ax.set_title("Spectra of all heads (colour: layer)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, layers - 1))
    fig.colorbar(sm, ax=ax, pad=0.01, label="layer")

    ax = fig.add_subplot(gs[1, 1])
    prediction_panel(ax, rows, focus, summary,
                     title=f"Predicted (no probe seen) vs measured, {len(rows)} heads")
    if summary:
        table = "\n".join(f"{k:>10}: " + " / ".join(f"{c['rho']:.2f}" for c in cells)
                          for k, cells in summary.items())
        ax.text(0.02, 0.98, f"ρ per budget, {focus}\n" + table, transform=ax.transAxes,
                ha="left", va="top", fontsize=6.5, family="monospace", zorder=5,
                bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.9))

    ax = fig.add_subplot(gs[1, 2])
    bcol = plt.get_cmap("tab10")
    x = [m / n for m in budgets]
    for j, rule in enumerate(rules):
        med = [np.median([r["relative"][rule][i] for r in rows]) for i in range(len(budgets))]
        style = dict(color="black", lw=2.2) if rule == "minimax" else dict(color=bcol(j + 3), lw=1.2)
        ax.plot(x, floor(med), marker="o", ms=3, label=rule, **style)
    ref = [np.median([r["refit_relative"][i] for r in rows]) for i in range(len(budgets))]
    ax.plot(x, floor(ref), color="tab:green", ls="-.", lw=1,
            label="LS refit on the probes (oracle-like)")
    ax.set_yscale("log")
    budget_axis(ax, x)
    ax.set_xticklabels([f"{m}\n({m / n:.0%})" for m in budgets])
    ax.set_xlabel("budget: atoms kept per head (fraction of the context; = bytes)")
    ax.set_ylabel("median relative risk over heads")
    ax.set_title("Rules on the real heads")
    ax.legend(frameon=False)
    fig.suptitle(f"{model}: {len(rows)} KV heads, context {n} tokens, {probes} probe queries "
                 f"per head{' — ' + subtitle if subtitle else ''}", y=0.99)
    return fig
