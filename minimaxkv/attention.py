r"""Softmax attention over a weighted cache: outputs, log-masses and weights.

For a query :math:`q` and a cache :math:`(K, V, b)` (docs/theory.md §1.1)

.. math::
    s_j(q) = \tau \langle q, k_j\rangle + b_j,\qquad Z(q) = \sum_j e^{s_j(q)},\qquad
    A(q) = \sum_j \frac{e^{s_j(q)}}{Z(q)} v_j ,

with :math:`\tau = 1/\sqrt d` by default. With causal positions, query :math:`t` sees the atoms
whose position is :math:`\le t`.

Two evaluation paths give the same numbers up to float round-off:

* **dense** materialises the ``[p, n]`` logits;
* **chunked** runs an online softmax over key blocks (running stabiliser, running mass, running
  numerator), so peak memory is ``O(p * chunk)``, not ``O(p * n)``. Blocks combine by the
  block-decomposition identity I1 (``docs/theory.md``), which :func:`combine` implements.
  Without a causal mask the stabiliser of a block is an upper bound of its logits computed from
  the block's centroid and radius (I4), which saves a pass over the ``[p, chunk]`` logits; a
  guard checks that no precision was lost to underflow and otherwise reruns with the exact
  running maximum. Under ``vmap`` the guard becomes a select, so both paths run.

Inputs of any float dtype are accumulated in at least float32; logits are stabilised, so
logits of magnitude 1e4 are handled exactly.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from . import _check
from .cache import Cache, validate
from .shapes import Arr, Float, Int, Scalar

HIGHEST = lax.Precision.HIGHEST
DENSE_MAX_N = 4096  # above this many atoms the automatic path is chunked
DEFAULT_CHUNK = 2048  # key block of the online softmax: p x 2048 float32 logits per step


def default_scale(d: int) -> float:
    """The softmax temperature :math:`\\tau = 1/\\sqrt d`."""
    return float(d) ** -0.5


def prepare(queries, cache, scale=None, query_pos=None, key_pos=None, *, name="cache",
            checked=False):
    """Validate the arguments of an attention call; return them as arrays in compute dtype.

    ``checked=True`` skips re-validating a cache that :func:`~minimaxkv.cache.validate` has just
    returned (its data checks read every entry, a cost comparable to the attention itself on
    long caches)."""
    cache = cache if checked else validate(cache, name)
    n, d = cache.keys.shape
    q = _check.array(queries, "queries", (None, d))
    if q.shape[0] == 0:
        raise ValueError("queries: expected at least one query, got shape (0, %d)" % d)
    if query_pos is None and key_pos is not None:
        raise ValueError("key_pos given without query_pos: causal masking needs both positions")
    qpos = _check.positions(query_pos, q.shape[0], "query_pos")
    kpos = _check.positions(key_pos, n, "key_pos")
    if qpos is not None and kpos is None:
        kpos = jnp.arange(n)
    dt = _check.compute_dtype(q, cache.keys, cache.values, cache.logw)
    cache = Cache(*(a.astype(dt) for a in cache))
    scale = default_scale(d) if scale is None else scale
    return q.astype(dt), cache, scale, qpos, kpos


def logits(q, keys, logw, scale, qpos=None, kpos=None):
    """Masked logits ``[p, n]``: :math:`\\tau q k^T + b`, ``-inf`` where causally hidden.

    The temperature multiplies the ``[p, d]`` queries, not the ``[p, n]`` products."""
    s = jnp.einsum("pd,nd->pn", q * scale, keys, precision=HIGHEST) + logw[None, :]
    if qpos is not None:
        s = jnp.where(kpos[None, :] <= qpos[:, None], s, -jnp.inf)
    return s


def _safe_max(s, axis):
    mx = jnp.max(s, axis=axis)
    return jnp.where(jnp.isfinite(mx), mx, 0.0)


def _dense(q, keys, values, logw, scale, qpos, kpos):
    s = logits(q, keys, logw, scale, qpos, kpos)
    mx = _safe_max(s, 1)
    e = jnp.exp(s - mx[:, None])
    z = jnp.sum(e, axis=1)
    num = jnp.einsum("pn,nv->pv", e, values, precision=HIGHEST)
    return _finish(num, z, mx)


def _finish(num, z, mx):
    out = jnp.where(z[:, None] > 0, num / jnp.where(z > 0, z, 1.0)[:, None], 0.0)
    return out, mx + jnp.log(z)


def _chunked(q, keys, values, logw, scale, qpos, kpos, chunk):
    n = keys.shape[0]
    nb = -(-n // chunk)
    pad = nb * chunk - n
    keys = jnp.pad(keys, ((0, pad), (0, 0)))
    values = jnp.pad(values, ((0, pad), (0, 0)))
    logw = jnp.pad(logw, (0, pad), constant_values=-jnp.inf)
    kpos = None if kpos is None else jnp.pad(kpos, (0, pad))
    blocks = (
        keys.reshape(nb, chunk, -1),
        values.reshape(nb, chunk, -1),
        logw.reshape(nb, chunk),
        None if kpos is None else kpos.reshape(nb, chunk),
    )
    qs = q * scale  # once, outside the loop
    if qpos is not None:
        return _finish(*_online(qs, blocks, None, qpos))
    # Without a mask, stabilise each block by an upper bound of its logits (no max pass over the
    # [p, chunk] logits); the exact running max is the fallback when the guard fails.
    bounded, ok = _online_bounded(qs, blocks)
    return lax.cond(ok, lambda: bounded, lambda: _finish(*_online(qs, blocks, None, None)))


def fold(state, s, v, top=None, precision=HIGHEST):
    """One online-softmax step (theory.md, "Online softmax"): fold logits ``s [..., m, n]``
    (``-inf`` = hidden) and values ``v [..., n, dv]`` into ``state = (stabiliser, mass,
    numerator)`` of shapes ``[..., m]``, ``[..., m]``, ``[..., m, dv]``. The new stabiliser is the
    larger of the old one and ``top`` (default: the rows' maxima of ``s``; I4: any upper bound)."""
    mx, z, num = state
    new = jnp.maximum(mx, jnp.max(s, axis=-1) if top is None else top)
    safe = jnp.where(jnp.isfinite(new), new, 0.0)
    alpha = jnp.exp(mx - safe)
    e = jnp.exp(s - safe[..., None])
    return (new, z * alpha + jnp.sum(e, axis=-1),
            num * alpha[..., None] + jnp.einsum("...mn,...nd->...md", e, v, precision=precision))


def _online(qs, blocks, stabiliser, qpos):
    """Online softmax over key blocks (theory.md, "Online softmax"). ``stabiliser``: ``None`` for
    the exact running max, or ``[nb, p]`` per-block values :math:`\beta_t - S` (bounded form)."""
    p, dv = qs.shape[0], blocks[1].shape[2]

    def step(carry, blk):
        k, v, b, kp, beta = blk
        return fold(carry, logits(qs, k, b, 1.0, qpos, kp), v, beta), None

    init = (
        jnp.full((p,), -jnp.inf, qs.dtype),
        jnp.zeros((p,), qs.dtype),
        jnp.zeros((p, dv), qs.dtype),
    )
    (mx, z, num), _ = lax.scan(step, init, (*blocks, stabiliser))
    return num, z, jnp.where(jnp.isfinite(mx), mx, 0.0)


def block_bounds(qs, keys, logw):
    r"""Upper bounds of each block's logits (theory.md, "Bounded stabiliser"); ``[nb, p]``.

    ``keys [nb, c, d]``, ``logw [nb, c]``, ``qs`` the scaled queries. With the block's centroid
    :math:`c_t` and radius :math:`r_t=\max_j\lVert k_j-c_t\rVert`,
    :math:`\beta_t(q)=\langle q,c_t\rangle+\lVert q\rVert r_t+\max_j b_j\ge\max_j s_j(q)`
    (Cauchy-Schwarz); ``-inf`` for a block whose atoms all have weight zero."""
    live = jnp.isfinite(logw)
    cnt = jnp.maximum(jnp.sum(live, axis=1), 1)
    cen = jnp.einsum("tc,tcd->td", live.astype(keys.dtype), keys, precision=HIGHEST) / cnt[:, None]
    dist = jnp.sum((keys - cen[:, None, :]) ** 2, axis=2)
    rad = jnp.sqrt(jnp.max(jnp.where(live, dist, 0.0), axis=1))
    qn = jnp.sqrt(jnp.sum(qs * qs, axis=1))
    return (jnp.einsum("td,pd->tp", cen, qs, precision=HIGHEST) + rad[:, None] * qn[None, :]
            + jnp.max(logw, axis=1)[:, None])


def _online_bounded(qs, blocks):
    """The online softmax with the bounded stabiliser, and whether its guard holds.

    Every exponent is at most ``S``, chosen so that ``n e^S max(1, |v|_max)`` stays below a quarter
    of the dtype's largest float: nothing overflows. Exponentials below the smallest normal float
    may flush to zero; the guard ``z >= 4 (n + nb) tiny / eps * max(1, 1 / |v|_max)`` on every
    query keeps what that loses within a relative eps/2 of the mass and 2 eps |v|_max of each
    output coordinate (I4 (c) in theory.md)."""
    keys, values, logw, _ = blocks
    nb, c = logw.shape
    n = nb * c
    fi = jnp.finfo(qs.dtype)
    vmax = jnp.max(jnp.abs(values))
    head = jnp.log(fi.max) - jnp.log(4.0 * n * jnp.maximum(vmax, 1.0))
    shift = jnp.clip(head, 0.0, 0.5 * jnp.log(fi.max)).astype(qs.dtype)
    beta = block_bounds(qs, keys, logw) - shift
    num, z, mx = _online(qs, blocks, beta, None)
    floor = 4.0 * (n + nb) * fi.tiny / fi.eps * jnp.maximum(1.0, 1.0 / jnp.maximum(vmax, fi.tiny))
    ok = jnp.all(z >= floor) & jnp.all(jnp.isfinite(z)) & jnp.all(jnp.isfinite(num))
    return _finish(num, z, mx), ok


@partial(jax.jit, static_argnames=("chunk",))
def _attend_core(q, keys, values, logw, scale, qpos, kpos, chunk):
    if chunk is None or chunk >= keys.shape[0]:
        return _dense(q, keys, values, logw, scale, qpos, kpos)
    return _chunked(q, keys, values, logw, scale, qpos, kpos, chunk)


def _chunk_for(n: int, chunk):
    if chunk is None:
        return None if n <= DENSE_MAX_N else DEFAULT_CHUNK
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int or None, got {chunk!r}")
    return chunk


def attend_and_mass(
    queries: Float[Arr, "p d"],
    cache: Cache,
    scale: Scalar | None = None,
    *,
    query_pos: Int[Arr, " p"] | None = None,
    key_pos: Int[Arr, " n"] | None = None,
    chunk: int | None = None,
) -> tuple[Float[Arr, "p dv"], Float[Arr, " p"]]:
    r"""Attention output :math:`A(q)` and log-mass :math:`\log Z(q)` in one pass.

    Args:
        queries: ``[p, d]``.
        cache: a :class:`~minimaxkv.Cache` (or a ``Summary``).
        scale: :math:`\tau`, default :math:`1/\sqrt d`.
        query_pos, key_pos: integer positions; when ``query_pos`` is given the attention is causal
            (atom j visible to query i iff ``key_pos[j] <= query_pos[i]``; ``key_pos`` defaults to
            ``arange(n)``).
        chunk: key-block size of the online softmax; ``None`` picks dense for ``n <= 4096``.

    Returns:
        ``(A [p, dv], log Z [p])`` in the accumulation dtype (float32 at least). A query that sees
        no atom gets output 0 and log-mass ``-inf``.
    """
    q, c, scale, qpos, kpos = prepare(queries, cache, scale, query_pos, key_pos)
    out, lz = _attend_core(q, c.keys, c.values, c.logw, scale, qpos, kpos, _chunk_for(c.n, chunk))
    return _check.finite_outputs(out, "attend: the attention output"), lz


def attend(queries, cache, scale=None, **kw) -> Float[Arr, "p dv"]:
    r"""Attention output :math:`A(q) = \sum_j p_j(q) v_j` for each query; ``[p, dv]``.

    See :func:`attend_and_mass` for the arguments.

    Example:
        >>> import jax.numpy as jnp, minimaxkv as mkv
        >>> c = mkv.Cache(jnp.eye(2), jnp.array([[1.0], [3.0]]))
        >>> float(mkv.attend(jnp.zeros((1, 2)), c)[0, 0])
        2.0
    """
    return attend_and_mass(queries, cache, scale, **kw)[0]


def log_mass(queries, cache, scale=None, **kw) -> Float[Arr, " p"]:
    r"""Log-mass :math:`\log Z(q) = \log\sum_j e^{\tau\langle q,k_j\rangle + b_j}`; ``[p]``."""
    return attend_and_mass(queries, cache, scale, **kw)[1]


def attention_weights(queries, cache, scale=None, *, query_pos=None, key_pos=None):
    r"""The attention operator :math:`P_{ij} = p_j(q_i) = e^{s_j(q_i)}/Z(q_i)`; dense ``[p, n]``."""
    q, c, scale, qpos, kpos = prepare(queries, cache, scale, query_pos, key_pos)
    return _weights_core(q, c.keys, c.logw, scale, qpos, kpos)


@jax.jit
def _weights_core(q, keys, logw, scale, qpos, kpos):
    s = logits(q, keys, logw, scale, qpos, kpos)
    mx = _safe_max(s, 1)
    e = jnp.exp(s - mx[:, None])
    z = jnp.sum(e, axis=1, keepdims=True)
    return jnp.where(z > 0, e / jnp.where(z > 0, z, 1.0), 0.0)


def combine(
    outputs: Float[Arr, "B p dv"], log_masses: Float[Arr, "B p"]
) -> tuple[Float[Arr, "p dv"], Float[Arr, " p"]]:
    r"""Combine per-block attention into the attention of the union (identity I1).

    .. math:: A(q) = \sum_B \lambda_B(q) A_B(q),\quad \lambda_B = Z_B/Z,\quad Z = \sum_B Z_B.

    Blocks that a query cannot see (log-mass ``-inf``) get weight zero.
    """
    mx = _safe_max(log_masses, 0)
    e = jnp.exp(log_masses - mx[None, :])
    z = jnp.sum(e, axis=0)
    num = jnp.einsum("bp,bpv->pv", e, outputs, precision=HIGHEST)
    return _finish(num, z, mx)
