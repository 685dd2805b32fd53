"""RULER at the field's scale: task score against kvpress's compression ratio, in its leaderboard's
format.

One prompt is prefilled once and serves every rule and every ratio
(:func:`minimaxkv.evaluate.sweep` with :func:`minimaxkv.budgets.from_compression_ratio`:
``n_kept = int(T (1 - r))`` atoms per KV head, the fraction removed as kvpress counts it). Every
finished (prompt, rule, ratio) row is stored at once (:mod:`minimaxkv.store`), so an interrupted
run resumes where it stopped and ends with the same table. Protocols: query-aware (compression sees the question, kvpress's default) and
query-agnostic (the context is compressed before the question is read).

Rows are keyed by what their result depends on (model, length, generation length, observed
queries) and their identity (task, prompt, rule, ratio, protocol): runs with other tasks, prompts,
rules or ratios at the same scale add their rows to the store and reuse those they share.

Outputs (``bench-<scale>.*`` in the output folder): the store (``.json``), the leaderboard CSV
(average over tasks: dataset, data_dir, model, method, compression_ratio, query_aware, score,
ci_low, ci_high, n, bytes), the same per task (``-tasks.csv``, with a ``task`` column), a
markdown table and a figure of score against ratio, per task and averaged. Scores are RULER's
(``string_match_all``) in percent; intervals are percentile-bootstrap 95 % over prompts (per task)
and prompts resampled within each task (the average); the full cache is the method ``full`` at
ratio 0.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import jax
import numpy as np

from . import store, tasks

SEED = 0  # the key of the rules' random draws (minimax's reference law): the same for every row
RATIOS = (0.25, 0.5, 0.75, 0.875)
SCALES = {
    # a few seconds on a tiny model: the tests' configuration
    "tiny": {"length": 500, "tasks": ("niah_single_1", "niah_multikey_2"), "prompts": 2,
             "ratios": (0.5, 0.875), "protocols": (True,), "max_new": 12, "observed": 8,
             "rules": ("streaming_llm", "snapkv")},
    # the tasks SmolLM2-135M solves with the full cache at 4,096 tokens (docs/bench.md); four
    # rules fit 48 prompts in 70 minutes on 2 cores (measured in one piece, docs/bench.md);
    # minimax is left out (about 4 minutes of compression per prompt at 4,096 tokens), Expected
    # Attention with AdaKV is in `full`
    "quick": {"length": 4096, "tasks": ("niah_single_1", "niah_single_2", "niah_single_3"),
              "prompts": 16, "ratios": RATIOS, "protocols": (True,), "max_new": None,
              "observed": 64, "rules": ("streaming_llm", "snapkv", "tova", "expected_attention")},
    "full": {"length": 8192, "tasks": tasks.RULER, "prompts": 10, "ratios": RATIOS,
             "protocols": (True, False), "max_new": None, "observed": 64,
             "rules": ("streaming_llm", "h2o", "snapkv", "snapkv@adakv", "tova", "knorm",
                       "keydiff", "expected_attention", "expected_attention@adakv", "kvzip",
                       "attention_matching", "minimax")},
}
IDENT = ("family", "seed", "rule", "budget_spec", "query_aware")
COLUMNS = ("dataset", "data_dir", "model", "method", "compression_ratio", "query_aware", "score",
           "ci_low", "ci_high", "n", "bytes")


def config(scale: str, model_name: str, **override) -> dict:
    """The run's configuration: the scale's, with ``override`` (tasks, rules, prompts...)."""
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    return checked({**SCALES[scale], **{k: v for k, v in override.items() if v is not None}},
                   model_name)


def checked(cfg: dict, model_name: str) -> dict:
    """A whole configuration (every key of a scale) checked, for the model ``model_name``."""
    missing = set(SCALES["tiny"]) - set(cfg)
    if missing:
        raise ValueError(f"benchmark configuration: missing {', '.join(sorted(missing))}")
    for name in cfg["tasks"]:
        if name not in tasks.RULER:
            raise ValueError(f"task {name!r}: expected RULER's tasks: {', '.join(tasks.RULER)}")
    for r in cfg["ratios"]:
        if not 0 <= r < 1:
            raise ValueError(f"compression ratio {r}: expected the fraction removed in [0, 1)")
    if cfg["prompts"] < 1:
        raise ValueError(f"prompts: expected at least 1 per task, got {cfg['prompts']}")
    return {"model": model_name, **{k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in cfg.items()}}


def prompts(model, cfg: dict) -> list[tasks.Task]:
    """The run's prompts: ``prompts`` seeds of each task, sized in the model's tokens."""
    tok = model.tokenizer
    n_tokens = lambda text: len(tok.encode(text))  # noqa: E731
    if cfg["length"] > model.config.context:
        raise ValueError(f"length {cfg['length']}: beyond the model's context "
                         f"({model.config.context} tokens)")
    return [tasks.make(name, cfg["length"], n_tokens, seed=seed, chat=tok.chat,
                       max_new=cfg["max_new"])
            for name in cfg["tasks"] for seed in range(cfg["prompts"])]


ROW_CONFIG = ("model", "length", "max_new", "observed")  # what a row's result depends on


def row_config(cfg: dict) -> dict:
    """The part of a run's configuration its rows are keyed by: runs with other tasks, prompts,
    rules, ratios or protocols share the rows they have in common."""
    return {k: cfg[k] for k in ROW_CONFIG}


def selected(rows: list[dict], cfg: dict) -> list[dict]:
    """The rows of the run ``cfg`` among ``rows``."""
    want = row_config(cfg)
    return [r for r in rows if r["config"] == want and r["family"] in cfg["tasks"]
            and r["seed"] < cfg["prompts"] and r["rule"] in cfg["rules"]
            and r["budget_spec"] in cfg["ratios"] and r["query_aware"] in cfg["protocols"]]


def run(model, cfg: dict, path, *, force: bool = False, progress: bool = True) -> list[dict]:
    """Compute the rows of ``cfg`` missing from the store at ``path`` (all with ``force``), storing
    each as it finishes; returns every row of ``cfg``.

    Under several processes (:mod:`minimaxkv.distributed`) each takes its share of the prompts
    and stores its rows as they finish (the store is locked); at the end every process's rows
    are gathered and process 0 stores them again, so none is lost where a shared file system
    does not honour the lock."""
    from . import distributed, evaluate
    from .budgets import from_compression_ratio
    from .io import provenance

    path = Path(path)
    main_process = distributed.index() == 0
    moved = store.set_aside(path) if force and main_process else None  # only an unreadable one
    if moved is not None:
        print(f"{path}: not a readable results store, set aside as {moved}", file=sys.stderr)
    distributed.gather([])  # every process reads the store after process 0 set it aside
    done = [] if force else selected(store.read(path), cfg)
    task_list = distributed.shard(prompts(model, cfg))
    rules = {name: evaluate.resolve(name, **model.config.rule_hyper) for name in cfg["rules"]}
    prov = provenance()
    new = []

    def keep(row):
        new.append(store.keyed({**row, "provenance": prov}, row_config(cfg), IDENT))
        store.add(path, new[-1:])

    for aware in cfg["protocols"]:
        evaluate.sweep(
            model, task_list, rules, cfg["ratios"], query_aware=aware,
            observed=cfg["observed"], max_new=cfg["max_new"], progress=progress and main_process,
            kept=from_compression_ratio,
            done=[r for r in done if r["query_aware"] == aware], on_row=keep,
            key=jax.random.PRNGKey(SEED))
    if distributed.count() > 1:
        every = [r for part in distributed.gather(new) for r in part]
        if main_process:
            store.add(path, every)
        distributed.gather([])  # the store is whole before any process reads it
    return selected(store.read(path), cfg)


def interval(per_task: list[np.ndarray], reps: int = 10_000, seed: int = 0):
    """Percentile-bootstrap 95 % interval of the mean over tasks of each task's mean, resampling
    prompts within each task (NaN with a single prompt per task)."""
    if min(len(x) for x in per_task) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.mean([x[rng.integers(0, len(x), (reps, len(x)))].mean(1) for x in per_task], 0)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def leaderboard(rows: list[dict], cfg: dict, field: str = "score") -> tuple[list[dict],
                                                                             list[dict]]:
    """(average rows, per-task rows) in the leaderboard's columns: the mean over prompts of each
    task, and the mean over tasks, with 95 % intervals (:func:`interval`). ``field="score"``:
    RULER's score in percent, the full cache as ``method = "full"``, ``compression_ratio = 0``;
    another row field (``"kl"``) is averaged as it is, under its own name, without a full-cache
    row."""
    cells: dict = {}
    unit = 100.0 if field == "score" else 1.0
    for r in rows:
        cells.setdefault((r["query_aware"], r["rule"], r["budget_spec"], r["family"]),
                         {})[r["seed"]] = (r[field] * unit, r["bytes"])
        if field == "score":
            cells.setdefault((r["query_aware"], "full", 0.0, r["family"]),
                             {})[r["seed"]] = (r["score_full"] * unit, r["full_bytes"])
    base = {"dataset": "ruler", "data_dir": str(cfg["length"]), "model": cfg["model"]}
    per_task, groups = [], {}
    for (aware, method, ratio, task), by_seed in sorted(cells.items(), key=_order):
        s = np.array([v[0] for v in by_seed.values()], float)
        b = float(np.mean([v[1] for v in by_seed.values()]))
        lo, hi = interval([s])
        per_task.append({**base, "task": task, "method": method, "compression_ratio": ratio,
                         "query_aware": aware, field: float(s.mean()), "ci_low": lo,
                         "ci_high": hi, "n": len(s), "bytes": b})
        groups.setdefault((aware, method, ratio), []).append((s, b))
    average = []
    for (aware, method, ratio), parts in sorted(groups.items(), key=_order):
        scores = [s for s, _ in parts]
        lo, hi = interval(scores)
        average.append({**base, "method": method, "compression_ratio": ratio,
                        "query_aware": aware, field: float(np.mean([s.mean() for s in scores])),
                        "ci_low": lo, "ci_high": hi, "n": int(sum(len(s) for s in scores)),
                        "bytes": float(np.mean([b for _, b in parts]))})
    return average, per_task


def _order(item):
    key = item[0]
    return (not key[0], key[1] != "full", key[1], key[2]) + tuple(key[3:])


def write_csv(path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: _fmt(r[c]) for c in columns})


def _fmt(x):
    return f"{x:.4g}" if isinstance(x, float) else x


def _bytes_int(rows: list[dict]) -> list[dict]:
    return [{**r, "bytes": int(round(r["bytes"]))} for r in rows]


def markdown(average: list[dict]) -> str:
    """Average score (95 % interval) per method and ratio, one table per protocol, the full
    cache's above it."""
    out = []
    for aware in sorted({r["query_aware"] for r in average}, reverse=True):
        rs = [r for r in average if r["query_aware"] == aware]
        ratios = sorted({r["compression_ratio"] for r in rs if r["method"] != "full"})
        full = [r for r in rs if r["method"] == "full"]
        out.append(f"**{'query-aware' if aware else 'query-agnostic'}**: RULER average score "
                   f"(%, 95 % interval over prompts); full cache {_score(full[0]) if full else '-'}"
                   "\n")
        out.append("| method | " + " | ".join(f"r = {x:g}" for x in ratios) + " |")
        out.append("|---|" + "---:|" * len(ratios))
        for method in dict.fromkeys(r["method"] for r in rs if r["method"] != "full"):
            cell = {r["compression_ratio"]: r for r in rs if r["method"] == method}
            out.append(f"| {method} | " + " | ".join(_score(cell[x]) if x in cell else ""
                                                     for x in ratios) + " |")
        out.append("")
    return "\n".join(out)


def _score(r) -> str:
    if np.isnan(r["ci_low"]):
        return f"{r['score']:.1f}"
    return f"{r['score']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def figure(average: list[dict], per_task: list[dict], path) -> None:
    """Score against compression ratio: the average (with intervals) and each task."""
    from .plots import agg

    agg()
    import matplotlib.pyplot as plt

    task_names = sorted({r["task"] for r in per_task}, key=tasks.RULER.index)
    panels = ["average"] + task_names
    cols = min(4, len(panels))
    rows_ = -(-len(panels) // cols)
    protocols = sorted({r["query_aware"] for r in average}, reverse=True)
    fig, axes = plt.subplots(rows_ * len(protocols), cols, figsize=(3.6 * cols,
                             2.9 * rows_ * len(protocols)), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in average if r["method"] != "full"))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for p, aware in enumerate(protocols):
        for i, panel in enumerate(panels):
            ax = axes[p * rows_ + i // cols, i % cols]
            rs = [r for r in (average if panel == "average" else per_task)
                  if r["query_aware"] == aware and (panel == "average" or r["task"] == panel)]
            for r in rs:
                if r["method"] == "full":
                    ax.axhline(r["score"], color="k", ls="--", lw=1, label="full cache")
            for m in methods:
                pts = sorted((r["compression_ratio"], r["score"], r["ci_low"], r["ci_high"])
                             for r in rs if r["method"] == m)
                if not pts:
                    continue
                x, y, lo, hi = map(np.asarray, zip(*pts))
                ax.plot(x, y, marker="o", ms=3, color=colors[m], label=m)
                if panel == "average" and np.all(np.isfinite(lo)):
                    ax.fill_between(x, lo, hi, color=colors[m], alpha=0.15)
            ax.set_title(f"{panel} ({'query-aware' if aware else 'query-agnostic'})", fontsize=9)
            ax.set_ylim(-3, 103)
            ax.set_xlabel("compression ratio (fraction removed)", fontsize=8)
            ax.grid(alpha=0.3)
        for j in range(len(panels), rows_ * cols):
            axes[p * rows_ + j // cols, j % cols].axis("off")
    axes[0, 0].set_ylabel("score (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def outputs(rows: list[dict], cfg: dict, folder, scale: str) -> dict:
    """Write the CSVs, the markdown table and the figure; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    average, per_task = leaderboard(rows, cfg)
    paths = {"csv": folder / f"bench-{scale}.csv", "tasks": folder / f"bench-{scale}-tasks.csv",
             "md": folder / f"bench-{scale}.md", "png": folder / f"bench-{scale}.png"}
    write_csv(paths["csv"], _bytes_int(average), COLUMNS)
    write_csv(paths["tasks"], _bytes_int(per_task), COLUMNS[:4] + ("task",) + COLUMNS[4:])
    paths["md"].write_text(markdown(average))
    figure(average, per_task, paths["png"])
    return paths


def main(model, cfg: dict, folder, scale: str, *, force: bool = False) -> int:
    """Run (or resume) the benchmark and write its outputs; prints the table."""
    from . import distributed

    folder = Path(folder)
    rows = run(model, cfg, folder / f"bench-{scale}.json", force=force)
    if distributed.index() != 0:  # process 0 writes the outputs of every process
        return 0
    paths = outputs(rows, cfg, folder, scale)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
