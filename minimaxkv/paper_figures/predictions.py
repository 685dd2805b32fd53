"""(i) Predicted vs measured relative risk on SmolLM2 heads: one panel per (length, rule), the
primary predictor P1 (held-out blind risk, docs/theory.md §10) against each rule's risk on the
probes, with the calibration band, and Spearman's rho with its bootstrap interval per budget."""

from __future__ import annotations

from minimaxkv import plots
from minimaxkv.paper_figures import common


def draw(record):
    import matplotlib.pyplot as plt

    res, cfg = record["result"], record["config"]
    lengths, rules = cfg["lengths"], cfg["rules"]
    fig, axes = plt.subplots(len(lengths), len(rules), figsize=(5.2 * len(rules),
                                                                4.6 * len(lengths)),
                             squeeze=False)
    for a, length in enumerate(lengths):
        rows = [r for r in res["rows"] if r["length"] == length]
        for b, rule in enumerate(rules):
            summary = res["summary"][str(length)][rule] if len(rows) >= 3 else None
            plots.prediction_panel(
                axes[a, b], rows, rule, summary, predictor=res["primary"],
                title=f"{rule}, {length} tokens ({rows[0]['n']} in context): {len(rows)} heads "
                      f"of {len(cfg['sources'])} texts")
    fig.suptitle(f"{res['model']}: predicted from the observed window only vs measured on the "
                 f"{cfg['future']} tokens that follow — {common.subtitle(record)}", y=1.0)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main("predictions"))
