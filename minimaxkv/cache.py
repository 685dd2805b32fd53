r"""The cache of one attention head, as a weighted measure over (key, value) atoms.

Axis glossary used in every signature of the package:

=======  =========================================================
``n``    atoms of a cache (tokens, or summary atoms)
``m``    atoms of a summary (the budget)
``p``    queries
``d``    key / query dimension
``dv``   value dimension
=======  =========================================================

A cache :math:`C = (K, V, b)` stands for the measure
:math:`\mu_C = \sum_j e^{b_j}\,\delta_{(k_j, v_j)}` (docs/theory.md §1.1). A raw cache has
:math:`b = 0`; summaries carry log-weights. An atom with :math:`b_j = -\infty` has zero weight:
it is padding, which lets rules return summaries of a fixed shape.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from . import _check
from .shapes import Arr, Float, Int


class _CacheFields(NamedTuple):
    keys: Float[Arr, "*heads n d"]  # leading axes: heads or layers stacked
    values: Float[Arr, "*heads n dv"]
    logw: Float[Arr, "*heads n"]


class Cache(_CacheFields):
    r"""Keys ``[n, d]``, values ``[n, dv]`` and log-weights ``[n]`` of one head.

    ``Cache(keys, values)`` gives a raw cache (log-weights zero). A ``Cache`` is a JAX pytree
    (a NamedTuple), so it passes through ``jit``, ``vmap`` and ``grad``; stack caches along a
    leading axis to batch heads or layers.

    Example:
        >>> import jax.numpy as jnp, minimaxkv as mkv
        >>> c = mkv.Cache(jnp.ones((4, 2)), jnp.arange(8.0).reshape(4, 2))
        >>> c.logw.shape
        (4,)
    """

    __slots__ = ()

    def __new__(cls, keys, values, logw=None):
        if logw is None and hasattr(keys, "shape"):
            keys = jnp.asarray(keys)
            dt = _check.compute_dtype(keys) if jnp.issubdtype(keys.dtype, jnp.floating) else jnp.float32
            logw = jnp.zeros(keys.shape[:-1], dt)
        return super().__new__(cls, keys, values, logw)

    @property
    def n(self) -> int:
        """Number of atoms (including zero-weight padding)."""
        return self.keys.shape[-2]

    @property
    def nbytes(self) -> int:
        """Memory of the summary: keys + values + log-weights, in bytes."""
        return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in self))


def live_atoms(cache: Cache) -> int:
    """Atoms that count (finite log-weight; ``-inf`` padding costs nothing), over every head."""
    return int(np.isfinite(np.asarray(cache.logw)).sum())


def compact(cache: Cache) -> Cache:
    """The same atoms with the padding dropped: along the atom axis (the last but one of the keys,
    any leading head axes), every head's live atoms first, in their order, then the cache cut to
    the most live atoms any head holds (the others keep padding to that width)."""
    live = np.isfinite(np.asarray(cache.logw))
    width = int(live.sum(-1).max()) if live.size else 0
    idx = jnp.asarray(np.argsort(~live, -1, kind="stable")[..., :width])
    return Cache(jnp.take_along_axis(cache.keys, idx[..., None], -2),
                 jnp.take_along_axis(cache.values, idx[..., None], -2),
                 jnp.take_along_axis(cache.logw, idx, -1))


def atom_bytes(d: int, dv: int, itemsize: int, logw: bool = True) -> int:
    """Bytes of one atom: a key (d numbers), a value (d_v) and a log-weight, at ``itemsize``
    bytes per number (``logw=False``: a raw cache's token, whose log-weight is 0 and need not
    be stored). Every byte count of the toolkit is a number of atoms times this."""
    return (d + dv + int(logw)) * itemsize


def live_bytes(cache: Cache, itemsize: int | None = None) -> int:
    """Bytes of the atoms that count (:func:`atom_bytes` each, ``itemsize`` by default the keys'
    dtype's)."""
    size = np.dtype(cache.keys.dtype).itemsize if itemsize is None else itemsize
    return live_atoms(cache) * atom_bytes(cache.keys.shape[-1], cache.values.shape[-1], size)


class Summary(NamedTuple):
    r"""What a compression rule returns: the summary cache and, for subset rules, the kept indices.

    ``kept`` is ``None`` for rules that build new atoms (merging); otherwise an int array ``[m]``
    of indices into the original cache (padding entries point at any atom and carry ``-inf``
    log-weight in ``cache``). ``mass_gap``, where the rule reports it (``minimax``), is the
    a-posteriori certificate of docs/theory.md U4(c) on the rule's own reference law:
    :math:`\eta=\max_i|1-Z(q_i)/\hat Z(q_i)|` over its query rows
    (:func:`minimaxkv.bounds.mass_gap`).
    """

    cache: Cache
    kept: Optional[Int[Arr, "*heads m"]] = None
    mass_gap: Optional[Float[Arr, "*heads"]] = None


def validate(cache: object, name: str = "cache") -> Cache:
    """Check a cache and return it with arrays converted to JAX arrays.

    Raises ``ValueError`` for: a non-``Cache`` argument, wrong ranks or disagreeing atom counts,
    non-float dtypes, NaN/Inf keys or values, NaN/+Inf log-weights, an empty cache (no atom, or
    every atom with weight zero).
    """
    if isinstance(cache, Summary):
        cache = cache.cache
    if not isinstance(cache, Cache):
        raise ValueError(f"{name}: expected a minimaxkv.Cache, got {type(cache).__name__}")
    keys = _check.array(cache.keys, f"{name}.keys", (None, None))
    values = _check.array(cache.values, f"{name}.values", (None, None))
    n = keys.shape[0]
    if values.shape[0] != n:
        raise ValueError(
            f"{name}: keys have {n} atoms but values have {values.shape[0]} "
            f"(keys {tuple(keys.shape)}, values {tuple(values.shape)})"
        )
    logw = _check.array(cache.logw, f"{name}.logw", (n,), allow_neg_inf=True)
    if n == 0:
        raise ValueError(f"{name}: the cache is empty (0 atoms)")
    if keys.shape[1] == 0:
        raise ValueError(f"{name}: keys have dimension 0")
    if _check.is_concrete(logw) and np.all(np.isneginf(np.asarray(logw, dtype=np.float64))):
        raise ValueError(f"{name}: the cache is empty (every atom has log-weight -inf)")
    return Cache(keys, values, logw)

