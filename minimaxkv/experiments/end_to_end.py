"""(f) End to end on SmolLM2: RULER score and KL to the full cache per rule, with 95 % intervals
over prompts: a slice of ``minimaxkv bench`` (:mod:`minimaxkv.bench`, docs/bench.md).

``prompts`` seeds of each of RULER's ``tasks``, ``length`` tokens of the model's tokenizer, are
prefilled once by SmolLM2-135M; each rule compresses every layer and KV head of the prompt's cache
once to ``n_kept = int(T (1 - r))`` atoms per head at each compression ratio ``r`` (kvpress's
fraction removed), seeing the last ``observed`` prefix tokens' queries (query-aware: the question
is part of the prefix, kvpress's default); the model then answers greedily (RULER's
``string_match_all`` score, at most ``max_new`` tokens) and reads the gold answer (the KL to the
full cache per answer token). Scores and KL are averaged over tasks; intervals are
percentile-bootstrap 95 % intervals resampling prompts within each task
(:func:`minimaxkv.bench.interval`).

At ``quick`` (the main job) the slice is sized for its 30 minutes on 2 cores: one ratio, 0.75 (a
quarter of the atoms kept), 3 needle tasks x 8 prompts at 2,048 tokens, RULER's answers capped at
48 tokens (a UUID is 37 SmolLM2 tokens); ``minimax`` costs 13 s of compression per prompt there,
the field's rules 0.5-1.5 s. ``full`` is the bench's grid at 4,096 tokens.

Every finished (prompt, rule, ratio) row is stored at once (``ROWS``): an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

from minimaxkv.experiments import common

ROWS = True  # run(config, rows=PATH): rows stored as they finish (common.compute)
NEEDLES = ("niah_single_1", "niah_single_2", "niah_single_3")
RULES = ("streaming_llm", "snapkv", "tova", "expected_attention", "minimax")

CONFIGS = {
    "tiny": {"length": 256, "tasks": ["niah_single_1"], "prompts": 2, "ratios": [0.5],
             "protocols": [True], "max_new": 12, "observed": 8, "rules": ["snapkv", "minimax"]},
    "quick": {"length": 2048, "tasks": list(NEEDLES), "prompts": 8, "ratios": [0.75],
              "protocols": [True], "max_new": 48, "observed": 64, "rules": list(RULES)},
    "full": {"length": 4096, "tasks": list(NEEDLES) + ["niah_multikey_1", "niah_multiquery"],
             "prompts": 16, "ratios": [0.25, 0.5, 0.75, 0.875], "protocols": [True],
             "max_new": None, "observed": 64, "rules": list(RULES) + ["kvzip", "snapkv@adakv"]},
}


def run(config: dict, rows=None) -> dict:
    """``{"rows": [one per (prompt, rule, ratio)], "average": [bench's leaderboard rows],
    "per_task": [...], "kl": [mean KL and interval per (rule, ratio)], ...}``; ``rows``: the
    store the rows are kept in as they finish (default: a temporary file)."""
    import tempfile
    from pathlib import Path

    from minimaxkv import bench

    model = common.smollm2()
    cfg = bench.checked(config, model.config.name)
    with tempfile.TemporaryDirectory() as tmp:
        done = bench.run(model, cfg, rows or Path(tmp) / "rows.json")
    average, per_task = bench.leaderboard(done, cfg)
    kl = bench.leaderboard(done, cfg, field="kl")[0]
    return {"rows": done, "average": average, "per_task": per_task, "kl": kl,
            "model": model.config.name, "full_bytes": done[0]["full_bytes"],
            "prefix_tokens": sorted({r["prefix_tokens"] for r in done})}


if __name__ == "__main__":
    raise SystemExit(common.main("end_to_end"))
