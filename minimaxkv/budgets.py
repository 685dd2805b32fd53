"""Budgets: how many atoms a KV head keeps, from the forms users give them.

A budget is either a count of atoms (an int >= 1) or the fraction of the context kept (a float in
(0, 1]); :func:`atoms` turns either into atoms, the one conversion every command, experiment and
benchmark uses. The field's compression ratio (kvpress) is the fraction *removed*:
:func:`from_compression_ratio` gives its atoms, ``int(T (1 - r))``. Equal atoms are equal bytes
(:func:`minimaxkv.cache.live_bytes`).
"""

from __future__ import annotations

import numpy as np


def atoms(budget, n: int) -> int:
    """Atoms kept of a context of ``n`` tokens: ``budget`` atoms (int >= 1, at most n) or the
    fraction ``budget`` in (0, 1] of n, rounded to the nearest atom and at least 1."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget: expected atoms (int) or a fraction in (0, 1], got {budget!r}")
    if float(budget) <= 0:
        raise ValueError(f"budget: must be positive, got {budget}")
    if float(budget) <= 1 and not (isinstance(budget, (int, np.integer)) and budget == 1):
        return max(1, int(round(float(budget) * n)))
    if float(budget) != int(budget):
        raise ValueError(f"budget: a budget above 1 counts atoms and must be an integer, got {budget}")
    if int(budget) > n:
        raise ValueError(f"budget: {int(budget)} atoms, but the context has only {n} tokens "
                         "(nothing would be compressed); give a fraction or fewer atoms")
    return int(budget)


def from_compression_ratio(ratio: float, n: int) -> int:
    """Atoms kept at kvpress's ``compression_ratio`` (the fraction removed, in [0, 1)):
    ``int(n (1 - ratio))``, at least 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)) \
            or not 0 <= float(ratio) < 1:
        raise ValueError(f"compression_ratio: expected the fraction removed in [0, 1), got {ratio!r}")
    return max(1, int(n * (1 - float(ratio))))
