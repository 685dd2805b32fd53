r"""Predictions of a head's compression risk from what a rule sees (docs/theory.md §10, P1-P3).

A captured head is split in time (:mod:`minimaxkv.analyze`): the context (the cache to compress),
the queries of its last ``observed`` tokens (what a query-aware rule sees), and the probes (the
queries of the tokens that follow, on which risk is measured). Every predictor here is computed
from the context and the observed queries alone, never from a probe, and is invariant under
:math:`v\mapsto av+c` applied to every value (:math:`a\ne0`), as the relative risk of a rule whose
summary moves with its values is (P2 of docs/theory.md):

* :func:`fitted_law` -- the law :math:`F` of future queries the predictors use: the observed queries
  and draws from the RoPE mixture of a Gaussian fitted to them, mixed as the ``minimax`` rule's
  reference law mixes them (V4), without isolating probes;
* ``heldout`` (P1, the primary predictor, named in docs/theory.md before any measurement): the
  best value-blind rank-``m`` map (M1's: the projector onto the top ``m`` right singular vectors of
  :math:`X=W^{1/2}P`) fitted under the law of the first half of the observed window, applied to
  the head's centred values; its relative risk on the *second* half's queries, which it never saw;
* ``blind`` (secondary): the same map fitted under the law of the whole window, its relative risk under
  that law (compressibility alone, no query mismatch);
* ``gamma_tail`` (secondary): the relative spectral tail :math:`\sum_{i>m}\lambda_i(\Gamma)/\mathrm{tr}\,\Gamma`
  of the value-centred response covariance under the law of the whole window;
* ``shift`` (secondary): ``heldout`` less the first-half map's risk under its own law: what the change
  of the queries within the window adds to the risk (the law-shift term).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import queries as Q
from . import rope
from .attention import attention_weights, default_scale
from .cache import Cache, validate
from .compressibility import value_centred_covariance
from .linalg import matmul as _mm
from .shapes import Arr, Float, Scalar

PREDICTORS = ("heldout", "blind", "gamma_tail", "shift")
PRIMARY = "heldout"  # P1, named in docs/theory.md §10 before the measurement


def centred_values(cache: Cache) -> Float[Arr, "n dv"]:
    r""":math:`V-\mathbf 1\bar v^\top`, :math:`\bar v=\mathrm{softmax}(b)^\top V` (the mean value that
    :func:`minimaxkv.risk.relative_risk` measures spread from)."""
    c = validate(cache)
    return c.values - jax.nn.softmax(c.logw.astype(c.values.dtype)) @ c.values


def fitted_law(cache: Cache, observed: Float[Arr, "g p d"], key, *, theta: float | rope.Llama3,
               scale: Scalar | None = None, draws: int = 512, horizon: int = 512,
               convention: str = "half", observed_end: int | None = None) -> Q.QuerySet:
    """The observed queries (positions ``observed_end - p .. observed_end - 1``, default the
    cache's last ``p``) and ``draws`` draws of future queries from the RoPE mixture (base
    ``theta``, future positions ``n .. n + horizon - 1``) of each query head's Ledoit-Wolf
    Gaussian, weighted as the ``minimax`` rule weighs them (V4), no isolating probes."""
    c = validate(cache)
    tau = default_scale(c.keys.shape[1]) if scale is None else scale
    if observed.shape[1] < 2:
        raise ValueError(f"observed: a fitted law needs at least 2 queries per head, got "
                         f"{observed.shape[1]}")
    dt = jnp.promote_types(c.keys.dtype, jnp.float32)
    c = Cache(*(x.astype(dt) for x in c))
    return _fitted_law(c, jnp.asarray(observed, dt), key, scale=float(tau), draws=draws,
                       horizon=horizon, theta=theta, convention=convention,
                       observed_end=observed_end)


@partial(jax.jit, static_argnames=("scale", "draws", "horizon", "theta", "convention",
                                   "observed_end"))
def _fitted_law(cache, observed, key, *, scale, draws, horizon, theta, convention, observed_end):
    from .rules.minimax import reference_law

    law = reference_law(cache, observed, key, draws=draws, horizon=horizon, theta=theta,
                        convention=convention, agnostic=False, logit_std=2.0, scale=scale,
                        probes=0.0, observed_end=observed_end)
    return Q.QuerySet(law.queries, law.weights / jnp.sum(law.weights))


def blind_map_risk(fit: Q.QuerySet, judge: Q.QuerySet, cache: Cache, budgets: list[int], *,
                   scale: Scalar | None = None) -> Float[Arr, " b"]:
    r"""Relative risk under the law ``judge`` of the value-blind rank-``m`` map fitted to the law
    ``fit``, for each ``m`` of ``budgets``: with :math:`X_F=W_F^{1/2}P_F` and :math:`\Pi_m` the
    projector onto its top ``m`` right singular vectors, the summary answering
    :math:`\bar v+P(q)\,\Pi_mV_c` has relative risk
    :math:`\lVert X_J(I-\Pi_m)V_c\rVert_F^2/\lVert X_JV_c\rVert_F^2` (P1; ``nan`` where every output
    under ``judge`` is the mean value)."""
    c = validate(cache)
    tau = default_scale(c.keys.shape[1]) if scale is None else scale
    dt = jnp.promote_types(c.keys.dtype, jnp.float32)
    return _blind_map_risk(*(Q.QuerySet(*(jnp.asarray(x, dt) for x in law)) for law in (fit, judge)),
                           Cache(*(x.astype(dt) for x in c)), jnp.asarray(tau, dt),
                           budgets=tuple(budgets))


@partial(jax.jit, static_argnames=("budgets",))
def _blind_map_risk(fit, judge, c, scale, *, budgets):
    vc = centred_values(c)
    xf = jnp.sqrt(fit.weights)[:, None] * attention_weights(fit.queries, c, scale)
    xj = jnp.sqrt(judge.weights)[:, None] * attention_weights(judge.queries, c, scale)
    _, _, rt = jnp.linalg.svd(xf, full_matrices=False)  # rows: right singular vectors, descending
    y = _mm(xj, vc)  # [r, dv]: the judged outputs less the mean value
    z = _mm(xj, rt.T)  # [r, k]
    coef = _mm(rt, vc)  # [k, dv]
    den = jnp.sum(y * y)
    out = []
    for m in budgets:
        k = min(m, rt.shape[0])
        res = y - _mm(z[:, :k], coef[:k])
        out.append(jnp.sum(res * res) / den)
    return jnp.stack(out)


def gamma_tail(law: Q.QuerySet, cache: Cache, budgets: list[int], *,
               scale: Scalar | None = None) -> Float[Arr, " b"]:
    r""":math:`\sum_{i>m}\lambda_i(\Gamma)/\mathrm{tr}\,\Gamma` under ``law`` for each ``m``."""
    gam = value_centred_covariance(law.queries, cache, weights=law.weights, scale=scale)
    return _relative_tails(gam, budgets=tuple(budgets))


@partial(jax.jit, static_argnames=("budgets",))
def _relative_tails(gram, *, budgets):
    ev = jnp.clip(jnp.linalg.eigvalsh(gram)[::-1], 0.0, None)
    tails = jnp.cumsum(ev[::-1])[::-1]  # tails[m] = sum of the eigenvalues after the m-th
    return jnp.stack([tails[m] / tails[0] if m < ev.shape[0] else 0.0 * tails[0]
                      for m in budgets])


def predictors(cache: Cache, observed: Float[Arr, "g p d"], budgets: list[int], key, *,
               theta: float | rope.Llama3, scale: Scalar | None = None,
               draws: int | None = None, horizon: int = 512, convention: str = "half",
               judge: Float[Arr, "r d"] | None = None) -> dict:
    """Every predictor of the module docstring at each budget (atoms), as JSON-ready lists:
    ``{"heldout", "blind", "gamma_tail", "shift"}``; with ``judge`` (queries) also ``"judged"``,
    the map of ``blind`` judged on them -- the future's own, in
    :func:`minimaxkv.analyze.analyze_head`: what the predictors would give with a perfect
    forecast of the future queries (it reads them: a diagnostic, not a predictor). ``draws`` defaults to
    ``max(256, 2 max(budgets))`` so the law's operator has rank above every budget; the
    held-out split needs ``p >= 4`` observed tokens (the first ``p // 2`` fit, the rest judge).
    ``jax.random.split(key)`` gives the draws of the whole window's law and of the first half's."""
    c = validate(cache)
    n = c.keys.shape[0]
    g, p, d = observed.shape
    if p < 4:
        raise ValueError(f"observed: the held-out predictors split the window in two halves of "
                         f"at least 2 tokens; got {p} observed tokens")
    if key is None:
        raise ValueError("predictors draw random future queries: pass key=")
    if not budgets or not all(1 <= m < n for m in budgets):
        raise ValueError(f"budgets {budgets}: expected atom counts in [1, {n - 1}]")
    draws = max(256, 2 * max(budgets)) if draws is None else draws
    k_all, k_half = jax.random.split(key)
    opts = {"theta": theta, "scale": scale, "draws": draws, "horizon": horizon,
            "convention": convention}
    law = fitted_law(c, observed, k_all, **opts)
    h = p // 2
    first = fitted_law(c, observed[:, :h], k_half, observed_end=n - (p - h), **opts)
    second = Q.empirical(jnp.reshape(observed[:, h:], (-1, d)).astype(law.queries.dtype))
    blind = blind_map_risk(law, law, c, budgets, scale=scale)
    own = blind_map_risk(first, first, c, budgets, scale=scale)
    held = blind_map_risk(first, second, c, budgets, scale=scale)
    out = {"heldout": held.tolist(), "blind": blind.tolist(),
           "gamma_tail": gamma_tail(law, c, budgets, scale=scale).tolist(),
           "shift": (held - own).tolist()}
    if judge is not None:
        future = Q.empirical(jnp.asarray(judge, law.queries.dtype))
        out["judged"] = blind_map_risk(law, future, c, budgets, scale=scale).tolist()
    return out
