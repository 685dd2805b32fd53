"""(f) End to end on SmolLM2: next-token KL and task accuracy vs cache bytes for every rule.

Passkey prompts (``task``, ``samples`` seeds, about ``tokens`` tokens each) are read by
SmolLM2-135M; each rule compresses every layer and KV head of the prompt's cache once after the
prefill (query-aware: the question is part of the prefix, the SnapKV protocol), and the model then
reads the gold answer and generates its own (:func:`minimaxkv.evaluate.sweep`). Rules named
``rule@alloc`` give each head its own budget of the same total (adaptive: PyramidKV, AdaKV and the
spectral allocation); they are drawn as Pareto points of (bytes, KL).
"""

from __future__ import annotations

from minimaxkv.experiments import common

RULES = ("streaming_llm", "snapkv", "tova", "expected_attention", "attention_matching", "minimax",
         "snapkv@pyramid", "snapkv@adakv", "minimax@spectral")

CONFIGS = {
    "tiny": {"task": "passkey", "tokens": 96, "samples": 1, "budgets": [0.25],
             "rules": ["minimax", "snapkv@adakv"], "query_aware": True, "observed": 8,
             "max_new": 2, "seed": 0},
    "quick": {"task": "passkey", "tokens": 512, "samples": 2, "budgets": [0.1, 0.25, 0.5],
              "rules": list(RULES), "query_aware": True, "observed": 32, "max_new": 12, "seed": 0},
    "full": {"task": "passkey", "tokens": 2048, "samples": 8,
             "budgets": [0.05, 0.1, 0.25, 0.5, 0.75], "rules": list(RULES), "query_aware": True,
             "observed": 64, "max_new": 16, "seed": 0},
}


def run(config: dict) -> dict:
    """``{"rows": [one per (sample, rule, budget)], "summary": [mean per (rule, budget)]}``."""
    from minimaxkv import evaluate, tasks

    model = common.smollm2()
    tok = model.tokenizer
    task_list = [tasks.make(config["task"], config["tokens"], lambda t: len(tok.encode(t)),
                            seed=config["seed"] + i, chat=tok.chat)
                 for i in range(config["samples"])]
    chosen = {name: evaluate.resolve(name, **model.config.rule_hyper)
              for name in config["rules"]}
    rows = evaluate.sweep(model, task_list, chosen, config["budgets"],
                          query_aware=config["query_aware"], observed=config["observed"],
                          max_new=config["max_new"])
    return {"rows": rows, "summary": evaluate.summarize_rows(rows), "model": model.config.name,
            "full_bytes": rows[0]["full_bytes"],
            "prefix_tokens": sorted({r["prefix_tokens"] for r in rows})}


if __name__ == "__main__":
    raise SystemExit(common.main("end_to_end"))
