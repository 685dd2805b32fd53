r"""Per-head analysis of a captured cache: compressibility, bounds and measured risk.

A capture of ``T`` tokens (:mod:`minimaxkv.capture`) is split in time: the first ``n = T - future``
tokens are the **context** (the cache to compress), the last ``future`` tokens are **probes**,
queries that arrive after compression and read the context (their attention is restricted to the
context: the composition identity I1 makes the context part's error the quantity that matters).
Query-aware rules see the queries of the last ``observed`` context tokens (a SnapKV-style window);
nothing sees the probes except the references marked as such.

For every layer and KV head (the probe law of a KV head pools the queries of its GQA group),
:func:`analyze_head` reports

* **predictors** (``predicted``), computed from the context and the observed queries only, never
  from a probe, and invariant under a shift and scale of the values (:mod:`minimaxkv.predict`,
  docs/theory.md §10): the primary ``heldout`` and the secondary ``blind``, ``gamma_tail``,
  ``shift``;
* **diagnostics on the probes** (they see the evaluation queries, so they describe the head, they
  do not predict): the ε-rank of the response covariance :math:`G` on the probes (docs/theory.md
  §3), its relative spectral tail at each budget, the value-class width
  :math:`\sigma_{m+1}(W^{1/2}P)^2` (L2), the attention entropy, the achievable worst case U4 of the
  pivoted, mass-matched, least-squares-refit support (per unit-norm value column), and the actual
  risk of that refit on the head's values (an oracle-like reference, not a rule);
* **measured**: the risk and relative risk (risk over the spread of the outputs,
  :func:`minimaxkv.risk.relative_risk`) of each rule at each budget on the probes.

:func:`rank_correlation` gives Spearman's :math:`\rho` of each predictor against a measured column
across heads; :func:`prediction_summary` adds bootstrap intervals, the within-layer correlation
and the calibration of the primary predictor.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import bounds, compressibility, fit, predict, rope
from . import budgets as budgets_mod
from .cache import Cache
from .capture import Captured, attn_scale, rope_theta
from .risk import relative_risk, risk


class HeadCase(NamedTuple):
    """One KV head split in time: the context cache, the observed window and the probes."""

    cache: Cache  # [n, hd]
    observed: jnp.ndarray  # [g, observed, hd]: queries of the last context tokens
    probes: jnp.ndarray  # [g * future, hd]: queries of the tokens after the context
    scale: float | None = None  # the model's attention scale tau (None: hd ** -0.5)
    theta: float | rope.Llama3 | None = None  # the model's RoPE (None: none recorded)


def _check_split(T: int, future: int, observed: int) -> int:
    if future < 1 or observed < 1:
        raise ValueError(f"future and observed: expected positive counts, got {future}, {observed}")
    n = T - future
    if n < max(observed, 2):
        raise ValueError(f"a capture of {T} tokens cannot hold {future} probe tokens and a context "
                         f"of at least {max(observed, 2)} tokens (observed window {observed})")
    return n


def head_case(cap: Captured, layer: int, kv_head: int, *, future: int, observed: int,
              dtype=None) -> HeadCase:
    """The :class:`HeadCase` of ``(layer, kv_head)``; ``dtype`` defaults to float64 when x64 is
    enabled, else float32."""
    n = _check_split(cap.keys.shape[2], future, observed)
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    cache, q = cap.head(layer, kv_head)
    ctx = Cache(cache.keys[:n].astype(dtype), cache.values[:n].astype(dtype))
    return HeadCase(ctx, q[:, n - observed:n].astype(dtype),
                    q[:, n:].reshape(-1, q.shape[-1]).astype(dtype), attn_scale(cap),
                    rope_theta(cap))


def analyze_head(case: HeadCase, budgets: list[int], rules: dict, *, eps: float = 0.05,
                 key=None, spectrum: bool = False, diagnostics: bool = True) -> dict:
    """Predictors, references and measured risks of one head (see the module docstring).

    ``budgets`` are atom counts (``1 <= m < n``), ``rules`` a ``{name: Rule}`` dict (built with
    the model's scale, as ``capture.rule_hyper`` gives it: every attention here uses
    ``case.scale``). Returns a
    JSON-ready dict: ``n``, ``predicted[predictor]`` per budget (lists in the order of
    ``budgets``; :mod:`minimaxkv.predict`), ``blind_on_probes`` (the map of ``blind`` judged on
    the probes: the ceiling a perfect forecast of the future queries would give; it reads the
    probes), ``risk[rule]`` / ``relative[rule]``, and
    ``mass_gap[rule]`` for the rules whose summaries report one (``minimax``: U4(c)'s certificate
    on its own law); with ``diagnostics`` (the default) also ``eps_rank``, ``entropy``,
    ``trace`` and per budget ``tail``, ``lower`` (L2), ``upper`` (U4), ``refit`` /
    ``refit_relative`` (the probe-fitted reference); with ``spectrum=True`` also ``eigs``, the
    spectrum of G over its top eigenvalue. ``key``: the random draws of the predictors' law
    (``fold_in(key, 1)``) and of the rules that make them (``key``); required.
    """
    c, probes, tau = case.cache, case.probes, case.scale
    n = c.n
    bad = [m for m in budgets if not 1 <= m < n]
    if bad:
        raise ValueError(f"budgets {bad}: expected atom counts in [1, {n - 1}] (context n = {n})")
    if key is None:
        raise ValueError("analyze_head: the predictors draw future queries from a fitted law: "
                         "pass key=")
    if case.theta is None:
        raise ValueError("analyze_head: the predictors' law needs the model's RoPE: a HeadCase "
                         "with theta (head_case reads it from the capture)")
    predicted = predict.predictors(c, case.observed, list(budgets), jax.random.fold_in(key, 1),
                                   theta=case.theta, scale=tau, judge=probes)
    out = {"n": n, "blind_on_probes": predicted.pop("judged"), "predicted": predicted,
           "risk": {name: [] for name in rules}, "relative": {name: [] for name in rules},
           "mass_gap": {}}
    for m in budgets:
        for name, rule in rules.items():
            s = rule(c, m, case.observed, key)
            out["risk"][name].append(float(risk(probes, c, s, scale=tau)))
            out["relative"][name].append(float(relative_risk(probes, c, s, scale=tau)))
            if s.mass_gap is not None:
                out["mass_gap"].setdefault(name, []).append(float(s.mass_gap))
    if diagnostics:
        out.update(probe_diagnostics(case, budgets, eps=eps, spectrum=spectrum))
    return out


def probe_diagnostics(case: HeadCase, budgets: list[int], *, eps: float = 0.05,
                      spectrum: bool = False) -> dict:
    """The diagnostics of :func:`analyze_head` that read the probes (see the module docstring)."""
    c, probes, tau = case.cache, case.probes, case.scale
    eigs = np.asarray(compressibility.spectrum(probes, c, scale=tau), np.float64)
    total = eigs.sum()
    out = {"eps_rank": int(compressibility.eps_rank(eigs, eps)),
           "entropy": float(jnp.mean(compressibility.attention_entropy(probes, c, scale=tau))),
           "trace": float(total), "tail": [], "lower": [], "upper": [], "refit": [],
           "refit_relative": []}
    if spectrum:
        out["eigs"] = (eigs / eigs[0]).tolist() if eigs[0] > 0 else eigs.tolist()
    for m in budgets:
        out["tail"].append(float(eigs[m:].sum() / total) if total > 0 else 0.0)
        out["lower"].append(float(bounds.width_lower(probes, c, m, scale=tau)))
        up, support = bounds.width_upper(probes, c, m, scale=tau)
        out["upper"].append(float(up))
        refit = fit.refit(probes, c, jnp.sort(jnp.asarray(support)), scale=tau)  # U4's summary
        out["refit"].append(float(risk(probes, c, refit, scale=tau)))
        out["refit_relative"].append(float(relative_risk(probes, c, refit, scale=tau)))
    return out


def analyze(cap: Captured, budgets, rules: dict, *, future: int = 128, observed: int = 32,
            eps: float = 0.05, heads=None, spectrum: bool = False, diagnostics: bool = True,
            done: list[dict] | None = None, on_row=None, progress: bool = True) -> list[dict]:
    """:func:`analyze_head` for every ``(layer, kv_head)`` in ``heads`` (default: all).

    ``budgets`` are atoms (integers) or fractions of the context (see
    :func:`minimaxkv.budgets.atoms`). Rows carry ``layer``, ``kv_head`` and ``budgets``
    (atoms) besides the fields of :func:`analyze_head`, in the order of ``heads``.

    Heads with a row in ``done`` (same ``layer`` and ``kv_head``) are not recomputed: that row is
    returned. ``on_row(row)`` is called after every new head (e.g. to store it), so a long run
    can be interrupted and resumed; each head's key is fixed by its position, so a resumed run
    gives the rows of an uninterrupted one.

    Under several processes (:mod:`minimaxkv.distributed`) each computes its share of the heads
    (``on_row`` sees those), then every process returns every row.
    """
    from tqdm import tqdm

    from . import distributed

    n = _check_split(cap.keys.shape[2], future, observed)
    atoms = [budgets_mod.atoms(b, n) for b in budgets]
    heads = [(i, h) for i in range(cap.layers) for h in range(cap.kv_heads)] if heads is None \
        else [tuple(x) for x in heads]
    have = {(r["layer"], r["kv_head"]): r for r in done or ()}
    todo = distributed.shard([x for x in heads if x not in have])
    bar = tqdm(total=len(todo), desc="heads", disable=not progress,
               file=sys.stderr)  # stored heads are not counted: the estimate is of what is left
    new = []
    for layer, h in todo:
        case = head_case(cap, layer, h, future=future, observed=observed)
        row = analyze_head(case, atoms, rules, eps=eps, spectrum=spectrum,
                           diagnostics=diagnostics,
                           key=jax.random.fold_in(jax.random.PRNGKey(layer), h))
        new.append({"layer": layer, "kv_head": h, "budgets": atoms, **row})
        if on_row is not None:
            on_row(new[-1])
        bar.update(1)
    bar.close()
    if distributed.count() > 1:
        new = [r for part in distributed.gather(new) for r in part]
    have.update({(r["layer"], r["kv_head"]): r for r in new})
    return [have[x] for x in heads]


IDENT = ("layer", "kv_head")  # a row's identity within its run, in the results store


def stored(cap: Captured, budgets, names, path, *, future: int = 128, observed: int = 32,
           eps: float = 0.05, layers=None, spectrum: bool = False,
           force: bool = False) -> list[dict]:
    """:func:`analyze` of the rules ``names`` (registry names; each given the capture's RoPE and
    attention scale) on every head of ``layers`` (default: all), each head stored in the results
    store at ``path`` as soon as it is done, so an interrupted run resumes where it stopped
    (``force``: recompute every head). Under several processes (:mod:`minimaxkv.distributed`)
    each computes its share of the heads and process 0 stores every row (its own as they come,
    the others' when gathered)."""
    from . import capture, distributed, io, rules, store

    distributed.initialize()
    main_process = distributed.index() == 0
    heads = None
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < cap.layers]
        if bad:
            raise ValueError(f"--layers {bad}: the capture has layers 0..{cap.layers - 1}")
        heads = [(i, h) for i in layers for h in range(cap.kv_heads)]
    names = list(names)
    hyper = capture.rule_hyper(cap)  # the model's RoPE and scale, for the rules that use them
    chosen = {name: rules.get(name, **hyper) for name in names}
    config = {"command": "analyze",
              "capture": {k: cap.meta.get(k) for k in ("model", "tokens", "text_sha256")},
              "budgets": [float(b) for b in budgets], "rules": names, "future": future,
              "observed": observed, "eps": eps, "spectrum": spectrum}
    done = store.resume(path, config, force=force)
    provenance = io.provenance()
    kept = {(r["layer"], r["kv_head"]) for r in done}

    def keep(new_rows):
        store.add(path, [store.keyed({**row, "provenance": provenance}, config, IDENT)
                         for row in new_rows])
        kept.update((r["layer"], r["kv_head"]) for r in new_rows)

    rows = analyze(cap, budgets, chosen, future=future, observed=observed, eps=eps, heads=heads,
                   spectrum=spectrum, done=done, progress=main_process,
                   on_row=(lambda row: keep([row])) if main_process else None)
    if main_process:
        keep([r for r in rows if (r["layer"], r["kv_head"]) not in kept])
    return rows


REFIT_COLUMN = "refit (sees the probes)"


def rule_summary(rows: list[dict]) -> dict:
    """Per rule of the rows (and the probe-fitted refit, :data:`REFIT_COLUMN`), per budget:
    ``(mean, geometric mean, wins)`` of the relative risk over the heads, wins = the heads where
    the rule is the lowest of the rules (``None`` for the refit, which is not a rule)."""
    names = list(rows[0]["relative"])
    out = {}
    for col in names + [REFIT_COLUMN]:
        cells = []
        for i in range(len(rows[0]["budgets"])):
            v = np.array([r["refit_relative"][i] if col == REFIT_COLUMN else r["relative"][col][i]
                          for r in rows])
            wins = sum(min(names, key=lambda k: r["relative"][k][i]) == col for r in rows)
            gm = float(np.exp(np.mean(np.log(np.maximum(v, 1e-300)))))
            cells.append((float(v.mean()), gm, None if col == REFIT_COLUMN else int(wins)))
        out[col] = cells
    return out


def spearman(x, y) -> float:
    r"""Spearman's :math:`\rho`: Pearson correlation of the (average-tie) ranks of x and y."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"spearman: expected two 1-D arrays of equal length >= 3, got {x.shape}, "
                         f"{y.shape}")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def column(rows: list[dict], field: str, budget_index: int | None = None, rule: str | None = None):
    """One value per head: ``field`` (``"eps_rank"``...), a per-budget field at ``budget_index``
    (a predictor of ``predicted`` by its name), or ``risk``/``relative`` of ``rule`` at
    ``budget_index``."""
    if rule is not None:
        return np.array([r[field][rule][budget_index] for r in rows], np.float64)
    if field in predict.PREDICTORS:
        return np.array([r["predicted"][field][budget_index] for r in rows], np.float64)
    if budget_index is not None:
        return np.array([r[field][budget_index] for r in rows], np.float64)
    return np.array([r[field] for r in rows], np.float64)


PREDICTORS = predict.PREDICTORS


def rank_correlation(rows: list[dict], rule: str, measured: str = "relative") -> dict:
    r"""Spearman's :math:`\rho` across heads of every predictor against ``measured`` (``"risk"``
    or ``"relative"``) of ``rule``, per budget: ``{predictor: [rho per budget]}``."""
    k = len(rows[0]["budgets"])
    return {p: [spearman(column(rows, p, i), column(rows, measured, i, rule)) for i in range(k)]
            for p in PREDICTORS}


def spearman_interval(x, y, *, reps: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    r"""Spearman's :math:`\rho` of paired samples and its percentile-bootstrap interval (pairs
    resampled with replacement, ``reps`` times; resamples whose ranks are constant are left out)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, (reps, x.size))
    boot = np.array([spearman(x[i], y[i]) for i in idx])
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return rho, float("nan"), float("nan")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi)


def within_group_spearman(x, y, groups) -> float:
    r"""Spearman's :math:`\rho` within groups (e.g. layers): the Pearson correlation of the ranks of
    x and y across all samples after each group's mean rank is removed from its members -- the
    partial rank correlation given the group."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    groups = np.asarray(groups)
    if x.shape != y.shape or x.ndim != 1 or groups.shape != x.shape or x.size < 3:
        raise ValueError(f"within_group_spearman: expected three 1-D arrays of equal length >= 3, "
                         f"got {x.shape}, {y.shape}, {groups.shape}")
    rx, ry = rankdata(x), rankdata(y)
    for gval in np.unique(groups):
        at = groups == gval
        rx[at] -= rx[at].mean()
        ry[at] -= ry[at].mean()
    den = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / den) if den > 0 else float("nan")


CALIBRATION_BAND = (0.5, 2.0)  # measured / predicted within this band: calibrated (issue 16)


def calibration(measured, predicted, band=CALIBRATION_BAND) -> tuple[float, float]:
    """``(share of heads with measured / predicted inside band, median of that ratio)``."""
    ratio = np.asarray(measured, np.float64) / np.asarray(predicted, np.float64)
    ok = np.isfinite(ratio)
    inside = (ratio >= band[0]) & (ratio <= band[1]) & ok
    return float(inside.mean()), float(np.median(ratio[ok])) if ok.any() else float("nan")


def prediction_summary(rows: list[dict], rule: str, *, measured: str = "relative",
                       reps: int = 2000, seed: int = 0) -> dict:
    """Per predictor and budget index: ``{"rho", "low", "high"}`` (Spearman across the rows with
    its bootstrap 95 % interval), ``"within_layer"`` (:func:`within_group_spearman` by layer), and
    for the predictors in units of relative risk (``heldout``, ``blind``) ``"calibrated"`` and
    ``"ratio"`` (:func:`calibration`). A rule whose summaries report a mass gap (``minimax``,
    U4(c)'s certificate on its own law) also gets its row ``"mass_gap"``, and rows with
    ``blind_on_probes`` (it reads the probes: the ceiling of a perfect forecast, not a
    predictor) a row of that name, calibrated too."""
    k = len(rows[0]["budgets"])
    layers = np.array([r["layer"] for r in rows])
    extra = (("mass_gap",) if all(rule in r.get("mass_gap", {}) for r in rows) else ()) + \
        (("blind_on_probes",) if all("blind_on_probes" in r for r in rows) else ())
    out = {}
    for p in PREDICTORS + extra:
        cells = []
        for i in range(k):
            x = column(rows, p, i, rule if p == "mass_gap" else None)
            y = column(rows, measured, i, rule)
            rho, lo, hi = spearman_interval(x, y, reps=reps, seed=seed)
            cell = {"rho": rho, "low": lo, "high": hi,
                    "within_layer": within_group_spearman(x, y, layers)}
            if p in ("heldout", "blind", "blind_on_probes"):
                cell["calibrated"], cell["ratio"] = calibration(y, x)
            cells.append(cell)
        out[p] = cells
    return out
