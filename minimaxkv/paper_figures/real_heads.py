"""(b, real) and (c): SmolLM2 heads -- eps-rank heatmap, spectra, predicted vs measured risk.

The drawing is :func:`minimaxkv.plots.heads_figure` (also the plot of ``minimaxkv analyze``).
"""

from __future__ import annotations

from minimaxkv import plots
from minimaxkv.paper_figures import common


def draw(record):
    res, cfg = record["result"], record["config"]
    return plots.heads_figure(res["rows"], eps=cfg["eps"], model=res["model"],
                              probes=res["probes"], subtitle=common.subtitle(record))


if __name__ == "__main__":
    raise SystemExit(common.main("real_heads"))
