"""The ``minimaxkv`` command: each subcommand parses its arguments, calls the library and prints
(``minimaxkv --help`` lists them)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from . import bounds, io, synthetic, tables
from .rules import DEFAULTS


def report(args) -> int:
    t0 = time.perf_counter()
    rows = list(tables.report_rows(args.n, args.p, args.d, args.dv, args.seed, args.budgets,
                                   args.oracle_n))
    cols = list(rows[0])
    width = [max(len(c), 10) for c in cols]
    print("Compressibility and value-class bounds on the synthetic families")
    print(f"(n={args.n} atoms, p={args.p} queries, d={args.d}, dv={args.dv}, seed={args.seed};"
          " eps_rank at 5% of the response-covariance trace; lower = sigma_{m+1}(P)^2 per unit"
          " value column; upper = best mass-matched LS-refit subset (pivoted QR))")
    print("  ".join(c.rjust(w) for c, w in zip(cols, width)))
    for r in rows:
        cells = [r[c] if isinstance(r[c], str) else
                 (f"{r[c]:d}" if isinstance(r[c], int) else f"{r[c]:.3g}") for c in cols]
        print("  ".join(s.rjust(w) for s, w in zip(cells, width)))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def compare(args) -> int:
    if args.cache:
        args.cachefile, args.plot = args.cache, None
        return compare_cache(args)
    t0 = time.perf_counter()
    names = args.rules or list(DEFAULTS["synthetic"])
    for family in args.families:
        table = tables.compare_table(family, args.n, args.d, args.dv, args.p, args.p,
                                     args.budgets, names, args.seed)
        budgets = list(table)
        print(f"\n{family}: risk on {args.p} held-out queries (n={args.n}, d={args.d}, "
              f"dv={args.dv}; rules see {args.p} observed queries)")
        print("rule".ljust(24) + "".join(f"m={m:<5d}".rjust(12) for m in budgets))
        cols = names + list(tables.REFERENCES)
        for col in cols:
            cells = "".join(f"{table[m][col]:12.4g}" for m in budgets)
            best = [min(names, key=lambda r: table[m][r]) for m in budgets]
            mark = "  <- best at " + ",".join(str(m) for m, b in zip(budgets, best) if b == col) \
                if col in best else ""
            print(col.ljust(24) + cells + mark)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; 'L2 lower' is the value-class worst case "
          "over unit-norm values x dv (not a per-instance bound); 'refit on eval queries' is a "
          "mass-matched least-squares refit that sees the evaluation queries (an oracle-like "
          "achievable reference).")
    return 0



def causal_cmd(args) -> int:
    from . import causal, rules

    t0 = time.perf_counter()
    st = synthetic.stream(jax.random.PRNGKey(args.seed), T=args.prefill + args.decode, d=args.d,
                          dv=args.dv)
    print(f"Causal compression of a {args.prefill}-token prefill + {args.decode} decoded tokens "
          f"(d={args.d}, dv={args.dv}): summary budget {args.budget} atoms + exact block of "
          f"{args.block}; errors of every position's query against exact causal attention")
    print(f"{'rule':20s}{'prefill risk':>14s}{'decode risk':>14s}{'max bytes':>11s}"
          f"{'compress s':>12s}")
    for name in args.rules or DEFAULTS["causal"]:
        hyper = {"block": args.block} if name.startswith("minimax") else {}
        res = causal.run(rules.get(name, theta=st.theta, **hyper), st.keys, st.values, st.queries,
                         args.budget, prefill=args.prefill, block=args.block,
                         key=jax.random.PRNGKey(args.seed), progress=True)
        print(f"{name:20s}{res.prefill_risk:14.4g}{res.decode_risk:14.4g}{res.nbytes.max():11d}"
              f"{res.compress_seconds:12.2f}")
    print(f"done in {time.perf_counter() - t0:.1f} s (minimax uses the driver's block size)")
    return 0



def capture_cmd(args) -> int:
    from . import capture, model

    t0 = time.perf_counter()
    m = model.load(args.model)
    ids, source = capture.prompt_ids(m, text=args.text, task=args.task, length=args.length,
                                     seed=args.seed)
    cap = capture.capture(m, ids, source=source)
    path = capture.save(args.out, cap)
    mb = path.stat().st_size / 2**20
    print(f"captured {len(ids)} tokens of {source} from {m.config.name}: {cap.layers} layers x "
          f"{cap.kv_heads} KV heads (keys, values, {cap.group} query heads each) -> {path} "
          f"({mb:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0



def _head_rows(args):
    """The capture and its per-head rows for ``analyze`` / ``compare --cache`` (stored as they
    finish, :func:`minimaxkv.analyze.stored`); no rows on a process other than 0, which reports
    for every process."""
    from . import analyze, capture, distributed

    distributed.initialize()  # before the capture's arrays: several processes share the heads
    cap = capture.load(args.cachefile)
    rows = analyze.stored(cap, args.budgets, args.rules or DEFAULTS["heads"], _store_path(args),
                          future=args.future, observed=args.observed,
                          eps=getattr(args, "eps", 0.05), layers=args.layers,
                          spectrum=bool(getattr(args, "plot", None)), force=args.force)
    return cap, (rows if distributed.index() == 0 else None)


def _resume_note(args) -> str:
    """What an interrupted command saved and how to go on."""
    if args.command == "evaluate" or args.command == "analyze" or (
            args.command == "compare" and args.cache):
        return (f"; every finished row is stored in {_store_path(args)}, the same command "
                "resumes from them")
    if args.command == "bench":
        return (f"; every finished row is stored in {_bench_folder(args)}, the same command "
                "resumes from them")
    return ""


def _store_path(args) -> Path:
    """The results store of ``evaluate``/``analyze``/``compare --cache``: ``--out``, else the
    command's default (:func:`minimaxkv.store.default_path`)."""
    from . import store

    return Path(args.out) if getattr(args, "out", None) else store.default_path(args.command)


def analyze_cmd(args) -> int:
    """Compressibility, bounds and measured risk per layer and KV head of a captured cache."""
    from . import analyze, io, plots

    t0 = time.perf_counter()
    cap, rows = _head_rows(args)
    if rows is None:
        return 0
    budgets = rows[0]["budgets"]
    rules_ = list(rows[0]["relative"])
    print(f"{cap.meta.get('model', '?')}: {len(rows)} KV heads, context n = {rows[0]['n']} tokens, "
          f"{args.future} probe tokens x {cap.group} query heads; rules see the last "
          f"{args.observed} context tokens' queries. Relative risk = risk / spread of the outputs.\n"
          "P1 = the primary predictor (from the observed window only, docs/theory.md §10); "
          "eps-rank, tail, L2, U4 and refit read the probes (diagnostics, not predictions).")
    for i, m in enumerate(budgets):
        print(f"\nbudget m = {m} ({m / rows[0]['n']:.1%} of the context)")
        head = ["layer", "head", "eps-rank", "P1", "tail", "L2", "U4", "refit"] + rules_
        print("".join(h.rjust(11) for h in head))
        for r in rows:
            cells = [r["layer"], r["kv_head"], r["eps_rank"]]
            vals = [r["predicted"]["heldout"][i], r["tail"][i], r["lower"][i], r["upper"][i],
                    r["refit_relative"][i]] + \
                [r["relative"][name][i] for name in rules_]
            print("".join(f"{c:11d}" for c in cells) + "".join(f"{v:11.3g}" for v in vals))
    gaps = sorted({name for r in rows for name in r.get("mass_gap", {})})
    if gaps:
        print("\nMass gap eta = max |1 - Z/Z_hat| on each rule's own reference law (the certificate of "
              "docs/theory.md U4(c)), median [max] over heads, per budget:")
        for name in gaps:
            per = np.array([r["mass_gap"][name] for r in rows if name in r.get("mass_gap", {})])
            print(f"  {name:20s}" + "  ".join(f"m={m}: {np.median(per[:, i]):.3g} "
                                              f"[{per[:, i].max():.3g}]"
                                              for i, m in enumerate(budgets)))
    if len(rows) >= 3:
        print("\nSpearman rho across heads (predictor, from the observed window only, vs measured "
              "relative risk), per budget:")
        for name in rules_:
            rho = analyze.rank_correlation(rows, name)
            print(f"  {name:20s}" + "  ".join(f"{p} " + "/".join(f"{v:.2f}" for v in vals)
                                              for p, vals in rho.items()))
    print(f"\nrows: {_store_path(args)}")
    if args.plot:
        fig = plots.heads_figure(rows, eps=args.eps, model=cap.meta.get("model", "?"),
                                 probes=args.future * cap.group, subtitle=Path(args.cachefile).name)
        io.atomic_write(Path(args.plot), lambda tmp: fig.savefig(
            tmp, format=Path(args.plot).suffix.lstrip(".") or "png", bbox_inches="tight"))
        print(f"plot: {args.plot}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def compare_cache(args) -> int:
    """``compare --cache FILE``: every rule at every budget on the heads of a captured cache."""
    from . import analyze

    t0 = time.perf_counter()
    cap, rows = _head_rows(args)
    if rows is None:
        return 0
    print(f"{cap.meta.get('model', '?')}: {len(rows)} KV heads, context {rows[0]['n']} tokens, "
          f"scored on {args.future} later tokens' queries; mean relative risk over heads "
          "(geometric mean in brackets), wins = heads where the rule is lowest")
    print("rule".ljust(22) + "".join(f"m={m:<6d}".rjust(26) for m in rows[0]["budgets"]))
    for col, cells in analyze.rule_summary(rows).items():
        print(col.ljust(22) + "".join(
            f"{mean:10.3g} [{gm:8.3g}]" + ("     " if wins is None else f" {wins:3d}w")
            for mean, gm, wins in cells))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def bench_cmd(args) -> int:
    from . import bench, distributed, model

    distributed.initialize()  # before any computation: several processes share the prompts
    m = model.load(args.model)
    cfg = bench.config(args.scale, m.config.name, tasks=args.tasks, rules=args.rules,
                       prompts=args.prompts)
    return bench.main(m, cfg, _bench_folder(args), args.scale, force=args.force)


def _bench_folder(args) -> Path:
    from . import store

    return Path(args.out) if args.out else store.results_dir() / "bench"


def evaluate_cmd(args) -> int:
    """End to end on a real model; every row is stored as soon as it is done (see
    :mod:`minimaxkv.store`), keyed by the run's configuration, sample, rule and budget."""
    from . import evaluate, model

    t0 = time.perf_counter()
    m = model.load(args.model)
    out = _store_path(args)
    rows = evaluate.stored_sweep(
        m, args.task, args.length, args.samples, args.seed, args.rules or DEFAULTS["model"],
        args.budgets, out, query_aware=args.query_aware, block=args.block,
        observed=args.observed, max_new=args.max_new, decode_block=args.decode_block,
        force=args.force)
    mode = "query-aware (compression sees the question)" if args.query_aware else \
        "query-agnostic (context compressed before the question)"
    n = rows[0]["prefix_tokens"] if rows else 0
    print(f"\nEnd to end on {m.config.name}: {args.samples} x {args.task} prompt(s) of ~{args.length} "
          f"tokens, {mode}; {'causal prefill, block ' + str(args.block) if args.block else 'one-shot compression after prefill'}"
          f"{'; compressed again every ' + str(args.decode_block) + ' decoded tokens' if args.decode_block else ''}")
    print(f"full cache: {n} atoms per head = {n * m.config.cache_bytes(1) / 1024:.0f} KiB, "
          f"task score {np.mean([r['score_full'] for r in rows]):.2f}")
    cols = ("rule", "atoms", "KiB", "kl", "top1", "ppl", "score", "95% CI", "compress_s")
    print("rule".ljust(20) + "".join(c.rjust(14 if c == "95% CI" else 12) for c in cols[1:])
          + "   (ppl of the gold answer; full: "
          f"{np.mean([r['ppl_full'] for r in rows]):.3g}; CI: bootstrap over prompts)")
    for r in evaluate.summarize_rows(rows):
        ci = "" if r["tasks"] < 2 else f"[{r['score_low']:.2f}, {r['score_high']:.2f}]"
        print(r["rule"].ljust(20) + f"{r['atoms']:12.0f}{r['KiB']:12.0f}{r['kl']:12.4f}"
              f"{r['top1']:12.3f}{r['ppl']:12.3g}{r['score']:12.2f}{ci:>14}{r['compress_s']:12.2f}")
    print(f"results: {out}; done in {time.perf_counter() - t0:.1f} s")
    return 0


def figures_cmd(args) -> int:
    """Compute every missing or stale experiment result at ``--scale``, then draw every figure
    (:func:`minimaxkv.experiments.common.refresh`); exits non-zero if an experiment or a figure
    failed. Results and figures go to ``--results`` / ``--figures`` (default ``./results``,
    ``./figures``)."""

    from .experiments import common

    t0 = time.perf_counter()
    try:
        failed = common.refresh(args.only or common.EXPERIMENTS, args.scale,
                                results=args.results, figures=args.figures, force=args.force)
    except KeyboardInterrupt:
        print("\nminimaxkv: interrupted; every result computed so far is stored (a rerun "
              "reuses it)", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - t0:.1f} s")
    if failed:
        print(f"minimaxkv: error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _check_args(args, fail, compare_default) -> None:
    """Refuse bad option values before any work: ``fail(message)`` ends the command with one
    line naming it (exit status 2)."""
    if args.command == "evaluate":
        if args.samples < 1 or args.observed < 1 or (args.max_new is not None
                                                     and args.max_new < 1):
            fail("--samples, --observed and --max-new must be positive")
        if (args.block is not None and args.block < 1) or (
                args.decode_block is not None and args.decode_block < 1):
            fail("--block and --decode-block must be positive")
        if any(b <= 0 or (b > 1 and b != int(b)) for b in args.budgets):
            fail("--budgets: atoms (integers >= 1) or fractions in (0, 1]")
        from .evaluate import resolve

        for name in args.rules or []:
            try:
                resolve(name)
            except ValueError as err:
                fail(f"--rules: {err}, each optionally as RULE@pyramid, RULE@adakv or "
                     "RULE@spectral")
    elif args.command == "bench":
        from . import bench
        from .evaluate import resolve

        try:
            bench.config(args.scale, "", tasks=args.tasks, prompts=args.prompts)
            for name in args.rules or []:
                resolve(name)
        except ValueError as err:
            fail(str(err))
    elif args.command in ("compare", "causal", "analyze") and args.rules:
        for name in args.rules:
            if "@" in name:
                fail(f"--rules {name}: allocations across heads (RULE@...) apply to "
                     "`evaluate` only; here each head is compressed alone")
            try:
                from . import rules

                rules.get(name)
            except ValueError as err:
                fail(f"--rules: {err}")
    if getattr(args, "length", 1) < 1:
        fail("--length must be a positive integer")
    for name in ("n", "p", "d", "dv"):
        if getattr(args, name, 1) < 1:
            fail(f"--{name} must be a positive integer")
    oracle_n = getattr(args, "oracle_n", 0)
    if oracle_n and not 8 <= oracle_n <= bounds.MAX_ORACLE_N:
        fail(f"--oracle-n must be 0 or lie in [8, {bounds.MAX_ORACLE_N}]")
    if args.command == "causal" and (args.budget < 1 or args.block < 1 or args.prefill < 1
                                     or args.decode < 1):
        fail("--budget, --block, --prefill and --decode must be positive integers")
    if args.command == "causal" and args.budget >= args.prefill:
        fail(f"--budget {args.budget} must be below --prefill {args.prefill}: a summary "
             "that keeps the whole prefill compresses nothing")
    if args.command == "compare":
        unused = (("families", "n", "p", "d", "dv", "seed") if args.cache else
                  ("future", "observed", "layers", "force"))
        moved = [f"--{k}" for k in unused if getattr(args, k) != compare_default(k)]
        if moved:
            where = "to synthetic families, not with --cache" if args.cache else "with --cache"
            fail(f"{' '.join(moved)}: apply only {where}")
    if args.command == "compare" and "clustered" in args.families and args.n < 8:
        fail("--n must be at least 8 for the clustered family (8 clusters)")
    if getattr(args, "command", "") == "report" and args.n < 8:
        fail("--n must be at least 8 (the clustered family has 8 clusters)")
    if args.command != "evaluate" and any(not 0 < b <= 1 for b in getattr(args, "budgets", [])):
        fail("--budgets must be fractions in (0, 1]")


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr and exit status 2 (``--help`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# commands whose risks, spectra and bounds are computed in float64 (the others: the model's dtype)
FLOAT64_COMMANDS = ("report", "compare", "analyze")


MODEL_HELP = ("'smollm2' (default), a .gguf file (Llama architecture) or a Hugging Face directory "
              "(Llama 2/3.x, Qwen2, Qwen3, Mistral: config.json + *.safetensors)")


def main(argv=None) -> int:
    parser = _Parser(prog="minimaxkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", help="compressibility and bounds on the synthetic families")
    rp.add_argument("--n", type=int, default=256, help="atoms per cache (default 256)")
    rp.add_argument("--p", type=int, default=128, help="queries (default 128)")
    rp.add_argument("--d", type=int, default=32, help="key dimension (default 32)")
    rp.add_argument("--dv", type=int, default=16, help="value dimension (default 16)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25],
                    help="budgets as fractions of n (default 0.1 0.25)")
    rp.add_argument("--oracle-n", type=int, default=10,
                    help="cache size of the brute-force oracle column (8..16; 0 skips it)")
    rp.set_defaults(func=report)
    def analysis_args(p):
        p.add_argument("--future", type=int, default=128,
                       help="last tokens of the capture whose queries score the rules (default 128)")
        p.add_argument("--observed", type=int, default=32,
                       help="context tokens whose queries query-aware rules see (default 32)")
        p.add_argument("--layers", type=int, nargs="+", default=None,
                       help="only these layers (default: all)")
        p.add_argument("--force", action="store_true",
                       help="recompute heads already stored (an unreadable store is set aside)")

    cp = sub.add_parser("compare", help="risk vs budget of every rule on synthetic families")
    cp.add_argument("--families", nargs="+", default=["clustered", "power_law", "lookup"],
                    choices=sorted(synthetic.FAMILIES))
    cp.add_argument("--n", type=int, default=256)
    cp.add_argument("--p", type=int, default=64, help="observed and held-out queries (each)")
    cp.add_argument("--d", type=int, default=32)
    cp.add_argument("--dv", type=int, default=16)
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5])
    cp.add_argument("--rules", nargs="+", default=None, help="default: the main rules")
    cp.add_argument("--cache", default=None, metavar="CACHEFILE",
                    help="compare on the heads of a captured cache (minimaxkv capture) instead of "
                    "synthetic families; with --future, --observed, --layers")
    analysis_args(cp)
    cp.set_defaults(func=compare)
    np_ = sub.add_parser("analyze", help="compressibility, bounds and rules' risk per head of a "
                         "captured cache, with a plot")
    np_.add_argument("cachefile", help="a .safetensors capture (minimaxkv capture --out FILE)")
    np_.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25],
                     help="fractions of the context (default 0.05 0.1 0.25)")
    np_.add_argument("--rules", nargs="+", default=None,
                     help=f"default: {' '.join(DEFAULTS['heads'])}")
    np_.add_argument("--eps", type=float, default=0.05, help="eps of the eps-rank (default 0.05)")
    np_.add_argument("--plot", default=None, help="write the figure here (.png or .pdf)")
    np_.add_argument("--out", default=None, help="results store of the per-head rows, shared by "
                     "runs and merged (default $MINIMAXKV_RESULTS/analyze.json, else "
                     "results/analyze.json; compare --cache uses the default)")
    analysis_args(np_)
    np_.set_defaults(func=analyze_cmd)
    kp = sub.add_parser("causal", help="causal prefill + decoding risk and memory of the rules")
    kp.add_argument("--prefill", type=int, default=1024)
    kp.add_argument("--decode", type=int, default=256)
    kp.add_argument("--budget", type=int, default=128, help="summary atoms (default 128)")
    kp.add_argument("--block", type=int, default=64, help="exact block size (default 64)")
    kp.add_argument("--d", type=int, default=32)
    kp.add_argument("--dv", type=int, default=16)
    kp.add_argument("--seed", type=int, default=0)
    kp.add_argument("--rules", nargs="+", default=None)
    kp.set_defaults(func=causal_cmd)
    from .tasks import FAMILIES as TASKS

    def prompt_args(p, length, text=True):
        src = p.add_mutually_exclusive_group() if text else p
        if text:
            src.add_argument("--text", default=None, help="a UTF-8 text file to read")
        src.add_argument("--task", default="passkey", choices=TASKS,
                         help="a generated long-context task (default passkey)")
        p.add_argument("--length", type=int, default=length, help=f"tokens (default {length})")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--model", default="smollm2", help=MODEL_HELP)

    ap = sub.add_parser("capture", help="capture keys, values and queries of a real model")
    prompt_args(ap, 1536)
    ap.add_argument("--out", required=True, help="output .safetensors file")
    ap.set_defaults(func=capture_cmd)
    ep = sub.add_parser("evaluate", help="end to end: a real model reading compressed caches")
    prompt_args(ep, 1536, text=False)
    ep.add_argument("--rules", nargs="+", default=None,
                    help=f"default: {' '.join(DEFAULTS['model'])}; RULE@pyramid, RULE@adakv or "
                    "RULE@spectral give each head its own budget (same total)")
    ep.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25],
                    help="atoms per head, or fractions of the context (default 0.05 0.1 0.25)")
    ep.add_argument("--samples", type=int, default=1, help="prompts (seeds seed..seed+k-1)")
    ep.add_argument("--query-aware", action="store_true",
                    help="let compression see the question (default: compress the context first)")
    ep.add_argument("--block", type=int, default=None,
                    help="compress causally after every BLOCK prefill tokens (default: once)")
    ep.add_argument("--decode-block", type=int, default=None,
                    help="also compress while decoding, every DECODE_BLOCK new tokens")
    ep.add_argument("--observed", type=int, default=32,
                    help="observed queries per head for query-aware rules (default 32)")
    ep.add_argument("--max-new", type=int, default=None,
                    help="greedy answer tokens (default: the task's own: 128 for RULER's NIAH "
                    "tasks, 30 vt, 120 cwe, 50 fwe, 16 the others)")
    ep.add_argument("--out", default=None, help="results store, shared by runs and merged "
                    "(default $MINIMAXKV_RESULTS/evaluate.json, else results/evaluate.json)")
    ep.add_argument("--force", action="store_true",
                    help="recompute this run's rows already stored (an unreadable store is set "
                    "aside, not deleted)")
    ep.set_defaults(func=evaluate_cmd)
    bp = sub.add_parser("bench", help="RULER's tasks: score against compression ratio for every "
                        "rule (kvpress leaderboard format), resumable")
    bp.add_argument("--scale", default="quick", choices=("tiny", "quick", "full"),
                    help="quick: 4,096 tokens, query-aware (default); full: 8,192 tokens, both "
                    "protocols, more rules and prompts; tiny: seconds, for tests")
    bp.add_argument("--model", default="smollm2", help=MODEL_HELP)
    bp.add_argument("--tasks", nargs="+", default=None, help="a subset of RULER's tasks")
    bp.add_argument("--rules", nargs="+", default=None, help="instead of the scale's rules")
    bp.add_argument("--prompts", type=int, default=None, help="prompts per task")
    bp.add_argument("--out", default=None, help="output folder (default $MINIMAXKV_RESULTS/bench, "
                    "else results/bench)")
    bp.add_argument("--force", action="store_true", help="recompute every row")
    bp.set_defaults(func=bench_cmd)
    fp = sub.add_parser("figures", help="compute missing or stale experiment results, draw figures")
    fp.add_argument("--scale", default="quick", choices=("tiny", "quick", "full"),
                    help="experiment size: tiny (seconds), quick (minutes on a CPU, default), "
                    "full (a GPU)")
    fp.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="only these experiments/figures (default: all)")
    fp.add_argument("--force", action="store_true", help="recompute even if a cached result matches")
    fp.add_argument("--results", default=None, metavar="DIR",
                    help="result folder (default $MINIMAXKV_RESULTS, else ./results)")
    fp.add_argument("--figures", default=None, metavar="DIR",
                    help="figure folder (default $MINIMAXKV_FIGURES, else ./figures)")
    fp.set_defaults(func=figures_cmd)
    args = parser.parse_args(argv)
    _check_args(args, sub.choices[args.command].error, cp.get_default)
    try:  # the float64 commands choose their precision here, for this call only
        precision = (jax.enable_x64(True) if args.command in FLOAT64_COMMANDS
                     else contextlib.nullcontext())
        with io.sigterm_exits(), precision:
            return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # the input checks: one line, no traceback
        if os.environ.get("MINIMAXKV_TRACEBACK"):
            raise
        print(f"minimaxkv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminimaxkv {args.command}: interrupted{_resume_note(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
