"""Shared plotting helpers: Agg backend, one style, atomic PNG + PDF output.

Each figure module ``minimaxkv/paper_figures/<name>.py`` exposes ``draw(record) -> Figure`` for
the cached result record of experiment ``<name>`` (see :mod:`minimaxkv.experiments.common`);
:func:`render` loads that record and writes ``<out>/<name>.png`` and ``.pdf``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimaxkv.experiments import common  # noqa: E402
from minimaxkv import io  # noqa: E402

from minimaxkv.plots import FLOOR, budget_axis, floor  # noqa: E402,F401  (one place for each)

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9,
                     "axes.titlesize": 10, "legend.fontsize": 7.5, "axes.grid": True,
                     "grid.alpha": 0.3})


def save(fig, out_dir, name: str) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf`` atomically; closes it."""
    out_dir = Path(out_dir)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(io.atomic_write(out_dir / f"{name}.{ext}",
                                     lambda tmp, ext=ext: fig.savefig(tmp, format=ext,
                                                                      bbox_inches="tight")))
    plt.close(fig)
    return paths


def render(name: str, scale: str, *, results=None, out=None, record=None) -> list[Path]:
    """Draw figure ``name`` from the cached result at ``scale``; returns the files written."""
    mod = importlib.import_module(f"{__package__}.{common.check_name(name)}")
    record = record or common.load(name, scale, results)
    return save(mod.draw(record), common.figures_dir(out), name)


def families(record) -> list[str]:
    """Families in the order of the config (JSON files store keys sorted)."""
    found = record["result"]["families"]
    order = record["config"].get("families", sorted(found))
    return [f for f in order if f in found]


def subtitle(record) -> str:
    seed = "" if record["seed"] is None else f", seed {record['seed']}"
    return f"scale {record['scale']}{seed}, config {record['hash']}"


def main(name: str, argv=None) -> int:
    """``python -m minimaxkv.paper_figures.<name> [--scale S]``: draw one figure from its cached
    result."""
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}.{name}")
    ap.add_argument("--scale", default="quick", choices=common.SCALES)
    args = ap.parse_args(argv)
    for p in render(name, args.scale):
        print(p)
    return 0
