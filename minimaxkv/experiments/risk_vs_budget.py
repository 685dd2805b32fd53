"""(a) Risk on held-out queries vs budget for the main rules on synthetic families.

Each cell is :func:`minimaxkv.tables.compare_table` (the numbers of ``minimaxkv compare``): rules see
``p_obs`` observed queries and are scored on ``p_eval`` held-out queries of the same law; beside
them the mass-matched least-squares refit that sees the evaluation queries (an oracle-like
reference) and, stored but not drawn, L2 (the worst case over unit-norm values of value-linear
rank-m summaries, times dv: a statement about a class's worst case, not a floor for these rules on
these values).
"""

from __future__ import annotations

from tqdm import tqdm

from minimaxkv.experiments import common
from minimaxkv.rules import DEFAULTS

RULES = DEFAULTS["synthetic"]  # those of `minimaxkv compare`

CONFIGS = {
    "tiny": {"families": ["clustered", "lookup"], "n": 16, "d": 32, "dv": 8, "p_obs": 8,
             "p_eval": 8, "fractions": [0.5], "rules": ["snapkv", "minimax"], "seed": 0},
    "quick": {"families": ["clustered", "power_law", "lookup"], "n": 128, "d": 32, "dv": 16,
              "p_obs": 32, "p_eval": 128, "fractions": [0.05, 0.1, 0.2, 0.3, 0.5],
              "rules": list(RULES), "seed": 0},
    "full": {"families": ["clustered", "power_law", "lookup"], "n": 512, "d": 64, "dv": 64,
             "p_obs": 128, "p_eval": 512, "fractions": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
             "rules": list(RULES), "seed": 0},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def run(config: dict) -> dict:
    """``{"families": {family: {"budgets": [m...], "risk": {column: [risk per budget]}}}}``."""
    from minimaxkv.tables import REFERENCES, compare_table

    out = {}
    for family in tqdm(config["families"], desc="risk_vs_budget"):
        table = compare_table(family, config["n"], config["d"], config["dv"], config["p_obs"],
                              config["p_eval"], config["fractions"], config["rules"],
                              config["seed"])
        budgets = list(table)
        cols = list(config["rules"]) + list(REFERENCES)
        out[family] = {"budgets": budgets,
                       "risk": {c: [table[m][c] for m in budgets] for c in cols}}
    return {"families": out, "n": config["n"]}


if __name__ == "__main__":
    raise SystemExit(common.main("risk_vs_budget"))
