"""The README's Python example runs as written (a newcomer copies it first)."""

from pathlib import Path

import numpy as np
from conftest import np_attention

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## In Python"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs():
    namespace: dict = {}
    exec(compile(python_example(), str(README), "exec"), namespace)
    cache, queries = namespace["cache"], namespace["queries"]
    # the README's instance is float32 (its default dtype): float32 round-off of the reference
    np.testing.assert_allclose(namespace["out"], np_attention(queries, *cache)[0], rtol=1e-5,
                               atol=1e-6)
    assert namespace["summary"].cache.keys.shape == (32, 32)  # minimax's summary: 32 atoms
    res = namespace["res"]  # the last line ran: a causal run over all 1,280 tokens
    assert res.errors.shape == (1280,) and np.isfinite(res.errors).all()
