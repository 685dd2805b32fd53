"""(b, real) and (c): every layer and KV head of SmolLM2 -- spectra, predictors and measured risk.

SmolLM2-135M reads the first ``tokens`` tokens of ``minimaxkv/data/<text>.txt``; each KV head's
context (all but the last ``future`` tokens) is compressed by each rule from the queries of its
last ``observed`` context tokens and scored on the queries of the ``future`` tokens
(:mod:`minimaxkv.analyze`). Reported per head: the spectrum of the response covariance on the
probes and its eps-rank (the heatmap) and the other diagnostics that read the probes (spectral
tail, L2, U4, entropy), the predictors computed from the observed window only (docs/theory.md
§10; the primary P1 drawn against the measured risk) and the risk of each rule at each budget,
with Spearman's rho of every predictor against the measured relative risk across heads (the
`predictions` experiment tests them over four texts and two lengths).
"""

from __future__ import annotations

from minimaxkv.experiments import common
from minimaxkv.rules import DEFAULTS

RULES = DEFAULTS["heads"]  # those of `minimaxkv analyze`

CONFIGS = {
    "tiny": {"text": "water", "tokens": 96, "future": 32, "observed": 8, "budgets": [0.25],
             "rules": ["snapkv", "minimax"], "heads": [[0, 0], [15, 1], [29, 2]], "eps": 0.05,
             "seed": 0},
    "quick": {"text": "water", "tokens": 640, "future": 128, "observed": 32,
              "budgets": [0.05, 0.1, 0.25], "rules": list(RULES), "heads": None, "eps": 0.05,
              "seed": 0},
    "full": {"text": "water", "tokens": 1306, "future": 256, "observed": 64,
             "budgets": [0.02, 0.05, 0.1, 0.25], "rules": list(RULES), "heads": None, "eps": 0.05,
             "seed": 0},
}

FLOAT64 = True  # computed in float64: common.compute sets it for the run


def run(config: dict) -> dict:
    """``{"rows": [per-head dict], "spearman": {rule: {predictor: [rho per budget]}}, ...}``."""
    from minimaxkv import analyze, capture, rules

    cap = common.smollm2_capture(config["text"], config["tokens"])
    hyper = capture.rule_hyper(cap)  # the model's RoPE and scale, for the rules that use them
    rows = analyze.analyze(cap, config["budgets"],
                           {r: rules.get(r, **hyper) for r in config["rules"]},
                           future=config["future"], observed=config["observed"],
                           eps=config["eps"], heads=config["heads"], spectrum=True)
    return {"rows": rows, "layers": cap.layers, "kv_heads": cap.kv_heads, "group": cap.group,
            "model": cap.meta["model"], "context": rows[0]["n"], "probes": config["future"] * cap.group,
            "spearman": {r: analyze.rank_correlation(rows, r) for r in config["rules"]}}


if __name__ == "__main__":
    raise SystemExit(common.main("real_heads"))
