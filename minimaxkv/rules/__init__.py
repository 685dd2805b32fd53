"""Compression rules: one registry for the published baselines and the ``minimax`` rule.

``get(name, **hyper)`` builds a rule, ``available()`` lists the names. A rule is called as
``rule(cache, budget, queries=None, key=None) -> Summary``; see :mod:`minimaxkv.rules.base` for
the conventions (GQA groups, protected atoms, fixed shapes). Appending ``+fit`` to an eviction
rule's name refits its support (mass-matching log-weights, least-squares values).

Every rule takes the softmax temperature ``scale`` (default :math:`d^{-1/2}`, d the head
dimension), the model's attention scale, as ``get(name, scale=tau)``; the rules that never compute
attention (``TEMPERATURE_FREE``) accept and ignore it. Likewise the rules that model RoPE
(``ROPE_AWARE``: they undo the rotation of the observed queries and draw future ones) take the
model's RoPE ``theta`` -- its base (0 for a cache without RoPE; SmolLM2 uses 10^5), or a
:class:`minimaxkv.rope.Llama3` for Llama 3's scaled frequencies -- and ``convention``, and every
other rule accepts and ignores them. ``get(name, **model.config.rule_hyper)`` passes a model's RoPE
and attention scale (``capture.rule_hyper(cap)`` a capture's); the evaluator and the commands on
captured caches do so, the commands on synthetic caches pass the instance's base
(``Instance.theta``). ``expected_attention`` has no default base (a call without one is an
error); ``minimax`` defaults to 10^4.
"""

from __future__ import annotations

from functools import lru_cache

from . import allocation, base, eviction, fitting, minimax as _minimax
from .base import Rule, group_queries, select

_FACTORIES = {
    "random": eviction.random,
    "window": eviction.window,
    "streaming_llm": eviction.streaming_llm,
    "h2o": eviction.h2o,
    "snapkv": eviction.snapkv,
    "tova": eviction.tova,
    "knorm": eviction.knorm,
    "keydiff": eviction.keydiff,
    "expected_attention": eviction.expected_attention,
    "leverage": eviction.leverage,
    "gvote": eviction.gvote,
    "kmeans_merge": fitting.kmeans_merge,
    "attention_matching": fitting.attention_matching,
    "minimax": _minimax.minimax,
    "minimax_agnostic": lambda **kw: _minimax.minimax(agnostic=True, **kw),
}
# rules that never compute attention logits: the temperature ``scale`` is accepted and unused
TEMPERATURE_FREE = ("random", "window", "streaming_llm", "knorm", "keydiff", "leverage",
                    "kmeans_merge")
# rules that model RoPE: ``theta`` and ``convention`` are accepted by every rule, used by these
ROPE_AWARE = ("expected_attention", "minimax")  # minimax_agnostic draws isotropic queries
EVICTION = ("random", "window", "streaming_llm", "h2o", "snapkv", "tova", "knorm", "keydiff",
            "expected_attention", "leverage")

# the rules a comparison runs when none are named, per setting; the commands and the experiments
# read them here
DEFAULTS = {
    # synthetic caches: `minimaxkv compare`, the risk_vs_budget experiment
    "synthetic": ("window", "streaming_llm", "h2o", "snapkv", "tova", "knorm", "keydiff",
                  "expected_attention", "leverage", "gvote", "kmeans_merge",
                  "attention_matching", "snapkv+fit", "minimax", "minimax_agnostic"),
    # causal prefill and decoding: `minimaxkv causal`, the causal experiment
    "causal": ("minimax", "streaming_llm", "snapkv", "attention_matching", "gvote",
               "kmeans_merge"),
    # every head of a captured cache: `minimaxkv analyze`, the real_heads experiment
    "heads": ("minimax", "snapkv", "expected_attention", "streaming_llm"),
    # a model reading compressed caches: `minimaxkv evaluate`
    "model": ("streaming_llm", "snapkv", "tova", "expected_attention", "gvote",
              "attention_matching", "kmeans_merge", "minimax"),
}


def available() -> list[str]:
    """Names accepted by :func:`get` (``+fit`` variants of the eviction rules included)."""
    return sorted(_FACTORIES) + [f"{r}+fit" for r in EVICTION]


def get(name: str, **hyper) -> Rule:
    """Build the rule ``name`` with hyperparameters ``hyper`` (defaults as the rule's paper gives
    them; see its docstring).

    The same name and hyperparameters give the same rule object, so its compiled code is reused;
    hyperparameters the rule ignores (``scale`` of a ``TEMPERATURE_FREE`` rule, ``theta`` and
    ``convention`` of a rule not in ``ROPE_AWARE``) do not count.
    """
    hyper = _used(name, hyper)
    try:
        return _cached(name, tuple(sorted(hyper.items())))
    except TypeError:  # unhashable hyperparameters: build afresh
        return _build(name, hyper)


def _used(name: str, hyper: dict) -> dict:
    """``hyper`` without the hyperparameters that rule ``name`` accepts and ignores."""
    base_name = name[: -len("+fit")] if name.endswith("+fit") else name
    ignored = set() if base_name in ROPE_AWARE else {"theta", "convention"}
    if base_name in TEMPERATURE_FREE and not name.endswith("+fit"):
        ignored.add("scale")  # the rule never computes attention (its refit would)
    return {k: v for k, v in hyper.items() if k not in ignored}


@lru_cache(maxsize=256)
def _cached(name, items):
    return _build(name, dict(items))


def _build(name: str, hyper: dict) -> Rule:
    fit = name.endswith("+fit")
    base_name = name[: -len("+fit")] if fit else name
    if base_name not in _FACTORIES or (fit and base_name not in EVICTION):
        raise ValueError(f"unknown rule {name!r}; available: {', '.join(available())}")
    factory = _FACTORIES[base_name]
    own = _used(base_name, hyper)  # a +fit rule's scale goes to its refit
    try:
        rule = factory(**own)
    except TypeError as err:
        raise ValueError(f"rule {base_name!r}: bad hyperparameters {hyper}: {err}") from None
    return fitting.with_fit(rule, hyper.get("scale")) if fit else rule


__all__ = ["DEFAULTS", "ROPE_AWARE", "Rule", "allocation", "available", "base", "eviction", "fitting", "get", "group_queries", "select"]
