"""minimaxkv: the minimax risk of KV-cache compression, computed exactly in JAX.

Public names (stable): :class:`Cache`, :class:`Summary`, :func:`attend`, :func:`log_mass`,
:func:`risk` and the modules ``bounds``, ``compressibility``, ``queries``, ``synthetic``, ``fit``,
``summarize``, ``rope``.
"""

from . import bounds, causal, compressibility, fit, linalg, queries, rope, rules, summarize, synthetic
from .attention import attend, attend_and_mass, attention_weights, combine, log_mass
from .cache import Cache, Summary, validate
from .risk import errors, mass_error, mc_interval, relative_risk, risk

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "Summary",
    "attend",
    "attend_and_mass",
    "attention_weights",
    "bounds",
    "causal",
    "combine",
    "compressibility",
    "errors",
    "fit",
    "linalg",
    "log_mass",
    "mass_error",
    "mc_interval",
    "queries",
    "relative_risk",
    "risk",
    "rope",
    "rules",
    "summarize",
    "synthetic",
    "validate",
]
