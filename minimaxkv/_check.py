"""Input validation shared by every public function.

Two kinds of problems:

* static ones -- wrong rank, mismatched axes, a non-float dtype, an impossible budget -- raise
  ``ValueError`` at call or trace time, saying what was expected and what was given;
* data-dependent ones -- NaN or Inf entries, a cache whose atoms all have zero weight -- are
  checked whenever the array is concrete (outside ``jax.jit``); under tracing they cannot be
  inspected, so callers that jit should validate their inputs once before entering the jit.
"""

from __future__ import annotations

import numbers
import re

import jax
import jax.numpy as jnp
import numpy as np

def is_concrete(x) -> bool:
    """True when ``x`` holds actual numbers (not a tracer inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(*arrays):
    """Accumulation dtype: the inputs' common float type, at least float32."""
    dt = jnp.result_type(*arrays)
    return jnp.promote_types(dt, jnp.float32)


def array(x, name: str, shape: tuple, *, allow_neg_inf: bool = False):
    """Convert ``x`` to a float JAX array and check it against ``shape``.

    ``shape`` is a tuple whose entries are ints (exact size), strings (named axes that must agree
    across calls sharing ``sizes``) or ``None`` (any size). Returns the array unchanged in dtype.
    """
    if x is None:
        raise ValueError(f"{name}: expected an array of shape {_fmt(shape)}, got None")
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name}: expected a floating-point array (float16, bfloat16, float32 or float64), "
            f"got dtype {x.dtype}"
        )
    if x.ndim != len(shape):
        raise ValueError(
            f"{name}: expected {len(shape)} axes {_fmt(shape)}, got shape {tuple(x.shape)}"
        )
    for axis, (want, got) in enumerate(zip(shape, x.shape)):
        if isinstance(want, int) and want != got:
            raise ValueError(
                f"{name}: expected shape {_fmt(shape)}, got {tuple(x.shape)} (axis {axis}: "
                f"expected {want}, got {got})"
            )
    x = jnp.asarray(x)
    if is_concrete(x) and x.size and not _all_finite(x):
        finite = np.isfinite(np.asarray(x, dtype=np.float64))
        if not finite.all():
            bad = np.asarray(x, dtype=np.float64)[~finite]
            if allow_neg_inf and np.all(bad == -np.inf):
                return x
            kinds = sorted({"NaN" if np.isnan(b) else ("+Inf" if b > 0 else "-Inf") for b in bad})
            raise ValueError(
                f"{name}: contains {int((~finite).sum())} non-finite entries ({', '.join(kinds)})"
                + ("; only -inf is allowed here (a zero-weight atom)" if allow_neg_inf else "")
            )
    return x


@jax.jit
def _device_all_finite(x):
    return jnp.all(jnp.isfinite(x))


def _all_finite(x) -> bool:
    """Whether every entry is finite: on the host array itself when ``x`` lives on the CPU (a
    zero-copy view, one pass, no float64 copy), else a reduction on its device (one bool back)."""
    if all(d.platform == "cpu" for d in x.devices()):
        return bool(np.isfinite(np.asarray(x)).all())
    return bool(_device_all_finite(x))


def same_size(a: int, b: int, what: str):
    if a != b:
        raise ValueError(f"{what}: sizes disagree ({a} vs {b})")


def budget(m, n: int, name: str = "budget") -> int:
    """A static budget: a Python integer with ``1 <= m <= n``."""
    if isinstance(m, bool) or not isinstance(m, numbers.Integral):
        raise ValueError(f"{name}: expected a Python int (static), got {type(m).__name__} {m!r}")
    m = int(m)
    if m < 1:
        raise ValueError(f"{name}: must be at least 1 atom, got {m}")
    if m > n:
        raise ValueError(f"{name}: cannot keep {m} atoms of a cache with only n = {n}")
    return m


def weights(w, p: int, name: str = "weights"):
    """Query weights: non-negative, length ``p``, normalised to sum to one. ``None`` is uniform."""
    if w is None:
        return None
    w = array(w, name, (p,))
    if is_concrete(w):
        wn = np.asarray(w, dtype=np.float64)
        if (wn < 0).any():
            raise ValueError(f"{name}: query weights must be non-negative")
        if wn.sum() <= 0:
            raise ValueError(f"{name}: query weights sum to zero")
    return w / jnp.sum(w)


def positions(pos, length: int, name: str):
    if pos is None:
        return None
    pos = jnp.asarray(pos)
    if pos.ndim != 1 or pos.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(pos.shape)}")
    if not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"{name}: expected integer token positions, got dtype {pos.dtype}")
    return pos


def _fmt(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def _leaves(tree):
    """``(name, leaf)`` of every floating-point array in ``tree``; names like ``[0].keys``."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            out.append((jax.tree_util.keystr(path), leaf))
    return out


def _finite(name: str, x):
    """Entries allowed: finite, and ``-inf`` in log-weights (a zero-weight atom)."""
    ok = jnp.isfinite(x)
    return ok | (x == -jnp.inf) if name.endswith(".logw") else ok


def finite_outputs(tree, what: str):
    """Raise ``ValueError`` if a concrete result holds NaN or Inf (``-inf`` allowed in log-weights):
    a compiled computation that produced non-numbers from checked inputs is reported, never
    passed on as if it were a result. Tracers (inside ``jit``/``vmap``) are returned unchecked."""
    for name, x in _leaves(tree):
        if is_concrete(x) and x.size and not bool(jnp.all(_finite(name, x))):
            raise ValueError(f"{what}{name} holds NaN or Inf although the inputs were finite "
                             "(an overflow or a singular system inside the computation)")
    return tree


def checked(fn, **jit_kwargs):
    """``jax.jit(fn)`` that reports NaN/Inf instead of computing with them.

    Inside a compiled function the data-dependent checks of the public functions cannot look at
    the numbers (a NaN key would silently give an attention output or a risk that looks like a
    number). ``checked(fn)`` compiles ``fn`` with a check of every floating-point argument and
    result (``jax.experimental.checkify``; ``-inf`` allowed in log-weights ``.logw``) and raises
    ``ValueError`` naming the first offending array.

    Example:
        >>> import jax.numpy as jnp, minimaxkv as mkv
        >>> attend = mkv.checked(mkv.attend)
        >>> k = jnp.ones((4, 2)).at[1, 0].set(jnp.nan)
        >>> attend(jnp.ones((1, 2)), mkv.Cache(k, jnp.ones((4, 2))))
        Traceback (most recent call last):
        ValueError: argument 1.keys holds NaN or Inf
    """
    from jax.experimental import checkify

    def body(*args, **kwargs):
        for name, x in _leaves((args, kwargs)):
            label = re.sub(r"^\[(\d+)\]", r"\1", name[3:]) if name.startswith("[0]") \
                else "keyword " + name[3:]
            checkify.check(jnp.all(_finite(name, x)), f"argument {label} holds NaN or Inf")
        out = fn(*args, **kwargs)
        for name, x in _leaves(out):
            checkify.check(jnp.all(_finite(name, x)),
                           f"result{name} holds NaN or Inf although the arguments are finite")
        return out

    compiled = jax.jit(checkify.checkify(body), **jit_kwargs)

    def run(*args, **kwargs):
        err, out = compiled(*args, **kwargs)
        message = err.get()
        if message:
            raise ValueError(message.splitlines()[0].replace(" (`check` failed)", ""))
        return out

    run.__wrapped__ = fn
    run.__doc__ = fn.__doc__
    return run
