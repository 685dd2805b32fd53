r"""Budgets across heads and layers: AdaKV, PyramidKV and the spectral allocation.

Each function returns integer budgets (``minimaxkv.evaluate.compress`` applies a rule head by head
with them). Budgets are per KV head; a layer's total is ``heads * m``.

* :func:`adakv_budgets` (Feng et al. 2024): every head keeps its top ``alpha * m`` atoms; the rest
  of the layer's budget goes to the highest remaining scores across heads (scores must be
  comparable across heads, e.g. attention weights).
* :func:`pyramid_budgets` (Cai et al. 2024): layer budgets fall linearly from bottom
  (:math:`2m - m/\beta`) to top (:math:`m/\beta`), mean m.
* :func:`spectral_budgets` (this toolkit): the eigenvalues of all heads' response covariances
  compete for the total budget; head h gets the number of its eigenvalues among the global top,
  the allocation that minimises :math:`\sum_h\sum_{i>m_h}\lambda^{(h)}_i` (docs/theory.md M1, U4:
  the risk of a head at budget m is governed by its spectral tail). :func:`target_budgets` instead
  gives each head the least m whose tail is at most a target.
* :func:`quantized` rounds per-head budgets to a few distinct values (multiples of a unit) within
  the same total, for rules compiled once per budget.
"""

from __future__ import annotations

import numpy as np

from ..shapes import Arr, Float, Int, Shaped


def _largest_remainder(weights, total: int, lo: int = 1):
    """Integers >= lo proportional to ``weights`` summing exactly to ``total``."""
    w = np.asarray(weights, np.float64)
    n = len(w)
    if total < lo * n:
        raise ValueError(f"total budget {total} cannot give {lo} atom(s) to each of {n} parts")
    share = lo + (total - lo * n) * w / w.sum()
    out = np.floor(share).astype(int)
    out[np.argsort(-(share - out))[: total - out.sum()]] += 1
    return out


def adakv_budgets(scores: Float[Arr, "h n"], m: int, alpha: float = 0.2) -> Int[Arr, " h"]:
    """Per-head budgets ``[H]`` from per-atom scores ``[H, n]`` (sum = H * m, each <= n)."""
    s = np.asarray(scores, np.float64)
    h, n = s.shape
    if not 1 <= m <= n:
        raise ValueError(f"m: expected 1 <= m <= n = {n}, got {m}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a fraction in [0, 1], got {alpha}")
    base = int(np.floor(alpha * m))
    order = np.argsort(-s, axis=1, kind="stable")
    rest = np.take_along_axis(s, order, axis=1)[:, base:]  # scores not yet kept
    flat = np.argsort(-rest.ravel(), kind="stable")[: h * m - h * base]
    return base + np.bincount(flat // rest.shape[1], minlength=h)


def pyramid_budgets(m: int, layers: int, beta: float = 20.0,
                    n: int | None = None) -> Int[Arr, " L"]:
    """Per-layer budgets ``[L]`` falling linearly from bottom to top, mean m (sum = L * m)."""
    if layers < 1 or m < 1 or beta < 1:
        raise ValueError("pyramid_budgets needs m >= 1, layers >= 1, beta >= 1")
    top, bottom = m / beta, 2 * m - m / beta
    lin = np.linspace(bottom, top, layers) if layers > 1 else np.array([float(m)])
    out = _largest_remainder(lin, layers * m)
    if n is not None and out.max() > n:
        raise ValueError(f"the bottom layer's budget {out.max()} exceeds the cache length {n}")
    return out


def spectral_budgets(spectra: Float[Arr, "h n"], total: int,
                     lo: int = 1) -> Int[Arr, " h"]:
    """Per-head budgets ``[H]`` from spectra ``[H, n]``: greedy water-filling on the tails."""
    e = np.maximum(np.asarray(spectra, np.float64), 0.0)
    h, n = e.shape
    if not lo * h <= total <= h * n:
        raise ValueError(f"total: expected {lo * h} <= total <= {h * n}, got {total}")
    e = -np.sort(-e, axis=1)
    rest = e[:, lo:]
    flat = np.argsort(-rest.ravel(), kind="stable")[: total - lo * h]
    return lo + np.bincount(flat // rest.shape[1], minlength=h)


def target_budgets(spectra: Float[Arr, "h n"], target: float) -> Int[Arr, " h"]:
    """Least m per head with relative tail :math:`\\sum_{i>m}\\lambda_i/\\sum_i\\lambda_i\\le` target."""
    e = -np.sort(-np.maximum(np.asarray(spectra, np.float64), 0.0), axis=1)
    tails = np.concatenate([np.cumsum(e[:, ::-1], axis=1)[:, ::-1], np.zeros((e.shape[0], 1))], 1)
    ok = tails <= target * e.sum(1, keepdims=True)
    return np.maximum(np.argmax(ok, axis=1), 1)


def quantized(b: Shaped[Arr, " h"], total: int, n: int, unit: int) -> Int[Arr, " h"]:
    """Budgets rounded down to multiples of ``unit`` (at least ``unit``, at most n), then leftover
    units given to the largest remainders, keeping the sum <= ``total``: few distinct budgets mean
    few compilations of the rule."""
    b = np.minimum(np.asarray(b, np.int64), n)
    q = np.where(b >= n, n, np.maximum(unit, unit * (b // unit)))
    for i in np.argsort(-(b - q), kind="stable"):
        if q.sum() + unit > total:
            break
        if b[i] - q[i] > 0 and q[i] + unit <= n:
            q[i] += unit
    while q.sum() > total:  # the floor of `unit` per head can overshoot: take from the largest
        i = int(np.argmax(q))
        q[i] -= min(unit, q[i] - 1)
    return q
