"""(i) Theory that predicts: predicted vs measured risk on every SmolLM2 head, over texts of four
kinds and two context lengths (docs/theory.md §10).

SmolLM2-135M reads the first ``length`` tokens of a prompt of each ``source`` (RULER tasks generated
locally, each a different kind of text: an essay with a needle, UUID key-value pairs, chains of
variable assignments, a list of words). Each KV head is split in time (:mod:`minimaxkv.analyze`):
the context, the queries of its last ``observed`` tokens (all any rule or predictor sees), and the
``future`` tokens that follow, whose queries measure each rule's relative risk. The predictors
(:mod:`minimaxkv.predict`) see no probe; the primary one (P1, ``heldout``) was named in
docs/theory.md before this experiment was first run. Reported per (length, rule, budget) over all
heads of all sources: Spearman's rho with its bootstrap 95 % interval, the within-layer
correlation and the calibration (share of heads whose measured / predicted lies in [0.5, 2]), for
every predictor, for ``minimax``'s mass gap, and for ``blind_on_probes`` -- the ``blind`` map
judged on the probes themselves, the ceiling of a perfect forecast of the future queries (it
reads them: it separates the forecast's error from the gap between a rule and the map).

Every finished (source, length) capture's rows are stored at once (``ROWS``): an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

from minimaxkv.experiments import common

ROWS = True  # run(config, rows=PATH): rows stored as they finish (common.compute)
FLOAT64 = True  # computed in float64: common.compute sets it for the run
SOURCES = ("niah_single_2", "niah_multikey_3", "vt", "cwe")  # essay, UUIDs, code-like, word list
RULES = ("minimax", "snapkv", "expected_attention")

CONFIGS = {
    "tiny": {"sources": ["niah_single_2", "vt"], "lengths": [160], "future": 32, "observed": 8,
             "budgets": [0.25], "rules": ["snapkv", "minimax"], "heads": [[0, 0], [15, 1], [29, 2]],
             "seed": 0},
    "quick": {"sources": list(SOURCES), "lengths": [512], "future": 64, "observed": 32,
              "budgets": [0.05, 0.1, 0.25], "rules": list(RULES), "heads": None, "seed": 0},
    "full": {"sources": list(SOURCES), "lengths": [512, 2048], "future": 128, "observed": 64,
             "budgets": [0.05, 0.1, 0.25], "rules": list(RULES), "heads": None, "seed": 0},
}
IDENT = ("source", "length", "layer", "kv_head")


def prompt(source: str, length: int, seed: int) -> list[int]:
    """The first ``length`` token ids of the ``source`` task's prompt (generated for twice the
    length, at least 1,024 tokens, then cut: the smallest prompts of some tasks are longer than
    a short length)."""
    from minimaxkv import capture

    ids, _ = capture.prompt_ids(common.smollm2(), task=source, length=max(2 * length, 1024),
                                seed=seed)
    if len(ids) < length:
        raise ValueError(f"{source}: its prompt has {len(ids)} tokens, fewer than {length}")
    return ids[:length]


def run(config: dict, rows=None) -> dict:
    """``{"rows": [per head, with source and length], "summary": {length: {rule:
    analyze.prediction_summary}}, ...}``; ``rows``: the store the rows are kept in as they finish
    (default: a temporary file)."""
    import tempfile
    from pathlib import Path

    from minimaxkv import analyze, capture, io, rules, store

    model = common.smollm2()
    keep = {k: config[k] for k in ("future", "observed", "budgets", "rules", "heads", "seed")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(rows or Path(tmp) / "rows.json")
        have = store.resume(path, keep)
        for length in config["lengths"]:
            for source in config["sources"]:
                done = [r for r in have if r["source"] == source and r["length"] == length]
                todo = config["heads"]
                expected = (len(todo) if todo is not None else
                            model.config.layers * model.config.kv_heads)
                if len(done) == expected:
                    continue
                cap = capture.capture(model, prompt(source, length, config["seed"]),
                                      source=f"task:{source}:{config['seed']}")
                hyper = capture.rule_hyper(cap)
                chosen = {r: rules.get(r, **hyper) for r in config["rules"]}
                tag = {"source": source, "length": length}

                def add(row, tag=tag):
                    store.add(path, [store.keyed({**tag, **row, "provenance": io.provenance()},
                                                 keep, IDENT)])

                analyze.analyze(cap, config["budgets"], chosen, future=config["future"],
                                observed=config["observed"], heads=todo, diagnostics=False,
                                done=[{k: v for k, v in r.items() if k not in tag}
                                      for r in done], on_row=add)
                have = store.resume(path, keep)
        out = sorted(({k: v for k, v in r.items() if k not in ("config", "key")} for r in have),
                     key=lambda r: (config["lengths"].index(r["length"]),
                                    config["sources"].index(r["source"]), r["layer"],
                                    r["kv_head"]))
    summary = {str(length): {rule: analyze.prediction_summary(
        [r for r in out if r["length"] == length], rule, seed=config["seed"])
        for rule in config["rules"]} for length in config["lengths"]}
    return {"rows": out, "summary": summary, "model": model.config.name,
            "primary": "heldout", "layers": model.config.layers,
            "kv_heads": model.config.kv_heads}


def table(scale: str = "quick", root=None) -> str:
    """The stored result's statistics as a markdown table (docs/predictions.md prints it with
    ``python -c "from minimaxkv.experiments import predictions; print(predictions.table('full'))"``):
    one line per (length, rule, predictor), per budget ``rho [low, high]``, the within-layer rho
    and, for those in units of relative risk, the share of heads within the calibration band and
    the median measured / predicted."""
    record = common.load("predictions", scale, root)
    res, cfg = record["result"], record["config"]
    head = "| length | rule | predictor | " + " | ".join(
        f"{b:.0%} of the context" for b in cfg["budgets"]) + " |"
    lines = [head, "|" + "---|" * (3 + len(cfg["budgets"]))]
    for length in cfg["lengths"]:
        for rule in cfg["rules"]:
            for name, cells in res["summary"][str(length)][rule].items():
                text = []
                for c in cells:
                    t = f"{c['rho']:.2f} [{c['low']:.2f}, {c['high']:.2f}]; within layer " \
                        f"{c['within_layer']:.2f}"
                    if "calibrated" in c:
                        t += f"; {c['calibrated']:.0%} in band, ratio {c['ratio']:.2g}"
                    text.append(t)
                lines.append(f"| {length} | {rule} | {name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(common.main("predictions"))
