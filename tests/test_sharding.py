"""A sweep over heads split across 8 host devices equals the single-device sweep.

The device count of the CPU backend is fixed when JAX starts, so the check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the exact spectrum of
the response covariance of 16 synthetic heads, lifted over heads with ``vmap``, once under
``jit`` on one device and once under ``shard_map`` over 8 devices (two heads each). Reference:
the same per-head function called head by head, in float64 (``scipy.linalg.eigvalsh`` of the
covariance built with NumPy).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import scipy.linalg

CHILD = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from minimaxkv import Cache, compressibility, synthetic
    assert len(jax.devices()) == 8, jax.devices()
    heads = [synthetic.make("power_law", jax.random.PRNGKey(i), n=48, d=8, dv=8, p=12)
             for i in range(16)]
    keys = jnp.stack([h.cache.keys for h in heads])
    values = jnp.stack([h.cache.values for h in heads])
    queries = jnp.stack([h.queries for h in heads])
    sweep = jax.vmap(lambda q, k, v: compressibility.spectrum(q, Cache(k, v)))
    mesh = jax.make_mesh((8,), ("h",))
    sharded = jax.jit(jax.shard_map(sweep, mesh=mesh, in_specs=(P("h"),) * 3, out_specs=P("h")))
    put = NamedSharding(mesh, P("h"))
    out = sharded(*(jax.device_put(x, put) for x in (queries, keys, values)))
    print(json.dumps({
        "single": np.asarray(jax.jit(sweep)(queries, keys, values)).tolist(),
        "sharded": np.asarray(out).tolist(),
        "devices": len(out.sharding.device_set),
        "keys": np.asarray(keys, np.float64).tolist(),
        "values": np.asarray(values, np.float64).tolist(),
        "queries": np.asarray(queries, np.float64).tolist()}))
""")


def _spectrum_f64(q, k, v):
    """Eigenvalues of G = P^T W P o (1 1^T + V V^T) (docs/theory.md §3), uniform weights 1/p and
    scale 1/sqrt(d), in float64, descending."""
    s = q @ k.T / np.sqrt(k.shape[1])
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    g = (a.T @ a / len(a)) * (1.0 + v @ v.T)
    return scipy.linalg.eigvalsh(g)[::-1]


def test_sweep_on_8_host_devices_equals_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    single, sharded = np.asarray(res["single"]), np.asarray(res["sharded"])
    assert single.shape == (16, 48)
    top = np.max(single, axis=1, keepdims=True)
    np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-5 * float(top.max()))
    ref = np.stack([_spectrum_f64(*(np.asarray(res[x][h]) for x in ("queries", "keys", "values")))
                    for h in range(16)])
    np.testing.assert_allclose(sharded, ref, rtol=0, atol=1e-4 * float(top.max()))
