"""CONTRIBUTING.md's worked example, run as written there: the new scored rule's factory,
registered as the guide says, passes every registry invariant and the reference test the guide
shows."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest
import test_rule_invariants as invariants

import minimaxkv as mkv
from minimaxkv import rules
from minimaxkv.rules import eviction

GUIDE = Path(__file__).resolve().parent.parent / "CONTRIBUTING.md"


def guide_code() -> tuple[str, str]:
    """(the factory, the reference test): the guide's two Python blocks, in order."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 2, "CONTRIBUTING.md: expected the factory and the test blocks"
    return blocks[0], blocks[1]


@pytest.fixture
def registered(monkeypatch):
    """The guide's factory executed in ``eviction.py``'s namespace and registered as its step 2
    says (for this test only)."""
    factory, _ = guide_code()
    namespace = dict(vars(eviction))
    exec(factory, namespace)
    monkeypatch.setitem(rules._FACTORIES, "value_norm", namespace["value_norm"])
    monkeypatch.setattr(rules, "TEMPERATURE_FREE", rules.TEMPERATURE_FREE + ("value_norm",))
    monkeypatch.setattr(rules, "EVICTION", rules.EVICTION + ("value_norm",))
    rules._cached.cache_clear()
    yield
    rules._cached.cache_clear()


def test_the_guides_rule_passes_the_invariants_and_its_reference_test(registered):
    assert {"value_norm", "value_norm+fit"} <= set(rules.available())
    for name in ("value_norm", "value_norm+fit"):
        invariants.test_full_budget_is_exact(name)
        invariants.test_budget_protection_determinism(name)
        invariants.test_a_key_only_where_the_rule_draws(name)
        invariants.test_vmap_over_heads_equals_loop(name)
        invariants.test_temperature_is_the_keys_scale(name)
    oracles = []
    for seed in (0, 1):
        c, q = invariants.instance(seed)
        oracles.append((c, q, mkv.bounds.oracle(q.reshape(-1, invariants.D), c, invariants.M)))
    invariants.test_oracle_below_eviction_on_every_subset_rules_support("value_norm", oracles)
    _, test = guide_code()
    namespace = {"jax": jax, "np": np, "mkv": mkv, "rules": rules}
    exec(test, namespace)
    namespace["test_value_norm_keeps_the_largest_values"]()


def test_the_guides_reference_test_fails_for_a_wrong_rule(registered, monkeypatch):
    """The guide's test can fail: a factory keeping the smallest values does not pass it."""
    smallest = lambda: eviction.scored(  # noqa: E731
        "value_norm", lambda c, q, key: -eviction.jnp.linalg.norm(c.values, axis=1))
    monkeypatch.setitem(rules._FACTORIES, "value_norm", smallest)
    rules._cached.cache_clear()
    namespace = {"jax": jax, "np": np, "mkv": mkv, "rules": rules}
    exec(guide_code()[1], namespace)
    with pytest.raises(AssertionError):
        namespace["test_value_norm_keeps_the_largest_values"]()
