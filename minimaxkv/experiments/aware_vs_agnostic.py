"""(d) The query-aware vs query-agnostic gap: risk vs budget of paired rules.

Two pairs at equal bytes: the ``minimax`` rule with and without the observed queries
(``minimax_agnostic``), and the published pair SnapKV (observed-window attention) vs Expected
Attention (a fitted future-query law). Cells are :func:`minimaxkv.tables.compare_table` (held-out
queries of the same law; the eval-query refit is an oracle-like reference), averaged over seeds.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from minimaxkv.experiments import common

PAIRS = (("minimax", "minimax_agnostic"), ("snapkv", "expected_attention"))

CONFIGS = {
    "tiny": {"families": ["clustered"], "n": 16, "d": 32, "dv": 8, "p_obs": 8, "p_eval": 8,
             "fractions": [0.5], "seeds": [0]},
    "quick": {"families": ["clustered", "power_law", "heavy", "recency", "lookup"], "n": 128,
              "d": 32, "dv": 16, "p_obs": 32, "p_eval": 128, "fractions": [0.05, 0.1, 0.2, 0.3, 0.5],
              "seeds": [0, 1]},
    "full": {"families": ["clustered", "power_law", "heavy", "recency", "isotropic", "lookup"],
             "n": 512, "d": 64, "dv": 64, "p_obs": 128, "p_eval": 512,
             "fractions": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5], "seeds": [0, 1, 2, 3]},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def run(config: dict) -> dict:
    """``{"families": {family: {"budgets": [m...], "risk": {rule: [[risk per budget] per seed]}}}}``."""
    from minimaxkv.tables import REFIT, compare_table

    rules = [r for pair in PAIRS for r in pair]
    out = {}
    cells = [(f, s) for f in config["families"] for s in config["seeds"]]
    for family, seed in tqdm(cells, desc="aware_vs_agnostic"):
        table = compare_table(family, config["n"], config["d"], config["dv"], config["p_obs"],
                              config["p_eval"], config["fractions"], rules, seed)
        row = out.setdefault(family, {"budgets": list(table),
                                      "risk": {c: [] for c in rules + [REFIT]}})
        for c in row["risk"]:
            row["risk"][c].append([table[m][c] for m in table])
    for row in out.values():
        aware, agnostic = (np.mean(row["risk"][r], axis=0) for r in PAIRS[0])
        row["gap"] = (agnostic / np.maximum(aware, 1e-300)).tolist()  # agnostic / aware risk
    return {"families": out, "n": config["n"], "pairs": [list(p) for p in PAIRS]}


if __name__ == "__main__":
    raise SystemExit(common.main("aware_vs_agnostic"))
