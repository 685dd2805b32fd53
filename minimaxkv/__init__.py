"""minimaxkv: the minimax risk of KV-cache compression, computed exactly in JAX.

Public names (stable): :class:`Cache`, :class:`Summary`, :func:`attend`, :func:`log_mass`,
:func:`risk`, :func:`checked` (a NaN-reporting ``jax.jit``) and the modules ``bounds``,
``compressibility``, ``queries``, ``synthetic``, ``fit``, ``summarize``, ``rope``.
"""

__version__ = "0.1.0"

from . import (bounds, budgets, capture, causal, compressibility, evaluate, fit, io, linalg,
               model, programs, queries, rope, rules, summarize, synthetic, tasks)
from ._check import checked
from .attention import attend, attend_and_mass, attention_weights, combine, log_mass
from .cache import Cache, Summary, validate
from .risk import bootstrap_interval, errors, mass_error, mc_interval, relative_risk, risk

__all__ = [
    "Cache",
    "Summary",
    "attend",
    "attend_and_mass",
    "attention_weights",
    "bootstrap_interval",
    "bounds",
    "budgets",
    "capture",
    "causal",
    "checked",
    "combine",
    "compressibility",
    "errors",
    "evaluate",
    "fit",
    "io",
    "linalg",
    "log_mass",
    "mass_error",
    "mc_interval",
    "model",
    "programs",
    "queries",
    "relative_risk",
    "risk",
    "rope",
    "rules",
    "summarize",
    "synthetic",
    "tasks",
    "validate",
]
