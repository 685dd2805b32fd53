r"""Rotary position embedding (RoPE, Su et al. 2021) in both pairing conventions.

Frequencies :math:`\omega_i = \theta^{-2i/d}`, :math:`i = 0..d/2-1`. At position :math:`t` the pair
:math:`(x_a, x_b)` of frequency :math:`\omega_i` is rotated by the angle :math:`t\,\omega_i`:

* ``"half"`` (Hugging Face layout): pairs ``(x[i], x[i + d/2])``;
* ``"interleaved"`` (original / GGUF layout): pairs ``(x[2i], x[2i+1])``.

A base :math:`\theta = 0` stands for "no RoPE": every frequency is 0 and every rotation is the
identity (the synthetic caches that have no positions use it, so the rules that model RoPE can be
told so).
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp

CONVENTIONS = ("half", "interleaved")


def _check(d: int, convention: str):
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d = {d}")


def frequencies(d: int, theta: float = 10000.0):
    r""":math:`\omega_i = \theta^{-2i/d}`, ``[d/2]``; all 0 for ``theta = 0`` (no RoPE)."""
    if isinstance(theta, numbers.Real):  # (a traced base is the model's own, not checked)
        if not (theta == 0 or theta > 1):
            raise ValueError(f"theta: expected a RoPE base > 1, or 0 for no RoPE, got {theta!r}")
        if theta == 0:
            return jnp.zeros((d // 2,), jnp.float32)
    return theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)


def apply(x, positions, theta: float = 10000.0, convention: str = "half"):
    """Rotate ``x [..., d]`` at integer ``positions`` (broadcastable to ``x.shape[:-1]``, e.g.
    ``[n]`` for ``x [n, d]``)."""
    d = x.shape[-1]
    _check(d, convention)
    ang = jnp.asarray(positions)[..., None].astype(jnp.float32) * frequencies(d, theta)
    cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
    if convention == "half":
        a, b = x[..., : d // 2], x[..., d // 2:]
        return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def rotations(positions, d: int, theta: float = 10000.0, convention: str = "half"):
    r"""Rotation matrices :math:`R_t` with ``apply(x, t) == R_t @ x``; ``[len(positions), d, d]``."""
    pos = jnp.asarray(positions)
    basis = jnp.broadcast_to(jnp.eye(d), (pos.shape[0], d, d))  # row j = e_j
    return jnp.swapaxes(apply(basis, pos[:, None], theta, convention), 1, 2)  # column j = R e_j
