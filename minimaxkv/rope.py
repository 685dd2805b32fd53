r"""Rotary position embedding (RoPE, Su et al. 2021) in both pairing conventions.

Frequencies :math:`\omega_i = \theta^{-2i/d}`, :math:`i = 0..d/2-1`. At position :math:`t` the pair
:math:`(x_a, x_b)` of frequency :math:`\omega_i` is rotated by the angle :math:`t\,\omega_i`:

* ``"half"`` (Hugging Face layout): pairs ``(x[i], x[i + d/2])``;
* ``"interleaved"`` (original / GGUF layout): pairs ``(x[2i], x[2i+1])``.

A base :math:`\theta = 0` stands for "no RoPE": every frequency is 0 and every rotation is the
identity (the synthetic caches that have no positions use it, so the rules that model RoPE can be
told so).

Wherever a RoPE is passed (``theta``: the model, the rules that model RoPE, the query laws) it is
either a number, the base :math:`\theta` above, or a :class:`Llama3` -- the base with Llama 3.1's
frequency scaling (``rope_type: llama3``, Meta's Llama 3.1 release and Hugging Face's
``rope_scaling``): with :math:`\lambda_i = 2\pi/\omega_i` the wavelength, :math:`C` the original
context, factor :math:`s` and the low/high frequency factors :math:`a < b`,

.. math::
    \omega_i' = \begin{cases} \omega_i & \lambda_i < C/b \\ \omega_i / s & \lambda_i > C/a \\
    (1-\mu_i)\,\omega_i/s + \mu_i\,\omega_i & \text{otherwise},\quad
    \mu_i = \frac{C/\lambda_i - a}{b - a}. \end{cases}

Only :func:`frequencies` reads it, so every function here accepts either form.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax.numpy as jnp


class Llama3(NamedTuple):
    """A RoPE base with Llama 3.1's frequency scaling (hashable: a static of the rules)."""

    base: float
    factor: float  # s: the low frequencies are divided by it
    low_freq_factor: float  # a
    high_freq_factor: float  # b
    original_context: int  # C: the context the model was pre-trained at

CONVENTIONS = ("half", "interleaved")


def _check(d: int, convention: str):
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d = {d}")


def frequencies(d: int, theta: float | Llama3 = 10000.0):
    r""":math:`\omega_i = \theta^{-2i/d}`, ``[d/2]``; all 0 for ``theta = 0`` (no RoPE); a
    :class:`Llama3` RoPE scales them as the module docstring says."""
    if isinstance(theta, Llama3):
        return _llama3(d, theta)
    if isinstance(theta, numbers.Real):  # (a traced base is the model's own, not checked)
        if not (theta == 0 or theta > 1):
            raise ValueError(f"theta: expected a RoPE base > 1, or 0 for no RoPE, got {theta!r}")
        if theta == 0:
            return jnp.zeros((d // 2,), jnp.float32)
    return theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)


def _llama3(d: int, r: Llama3):
    if not (r.factor >= 1 and 0 < r.low_freq_factor < r.high_freq_factor and r.original_context > 0):
        raise ValueError(f"llama3 RoPE: expected factor >= 1, 0 < low_freq_factor < "
                         f"high_freq_factor and original_context > 0, got {r}")
    omega = frequencies(d, r.base)
    wavelength = 2 * math.pi / omega
    mu = (r.original_context / wavelength - r.low_freq_factor) / (
        r.high_freq_factor - r.low_freq_factor)
    smooth = (1 - mu) * omega / r.factor + mu * omega
    return jnp.where(wavelength < r.original_context / r.high_freq_factor, omega,
                     jnp.where(wavelength > r.original_context / r.low_freq_factor,
                               omega / r.factor, smooth))


def apply(x, positions, theta: float | Llama3 = 10000.0, convention: str = "half"):
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


def rotations(positions, d: int, theta: float | Llama3 = 10000.0, convention: str = "half"):
    r"""Rotation matrices :math:`R_t` with ``apply(x, t) == R_t @ x``; ``[len(positions), d, d]``."""
    pos = jnp.asarray(positions)
    basis = jnp.broadcast_to(jnp.eye(d), (pos.shape[0], d, d))  # row j = e_j
    return jnp.swapaxes(apply(basis, pos[:, None], theta, convention), 1, 2)  # column j = R e_j
