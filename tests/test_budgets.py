"""Budgets: atoms from counts and fractions kept, and from kvpress's compression ratio (the
fraction removed), against values worked by hand."""

import pytest

from minimaxkv import budgets


def test_atoms_from_counts_and_fractions():
    assert budgets.atoms(0.1, 1000) == 100 and budgets.atoms(64, 1000) == 64
    assert budgets.atoms(1, 1000) == 1 and budgets.atoms(1.0, 1000) == 1000
    assert budgets.atoms(235, 235) == 235 and budgets.atoms(0.001, 100) == 1
    assert budgets.atoms(0.125, 2048) == 256 and budgets.atoms(0.3, 10) == 3
    with pytest.raises(ValueError, match="5000 atoms, but the context has only 235 tokens"):
        budgets.atoms(5000, 235)
    for bad in (0, -3, 2.5, "x", True):
        with pytest.raises(ValueError):
            budgets.atoms(bad, 10)


@pytest.mark.unchecked  # a str ratio: the library's message, not the annotation's
def test_compression_ratio_is_the_fraction_removed():
    """kvpress: n_kept = int(T (1 - r)), the floor."""
    assert budgets.from_compression_ratio(0.5, 4096) == 2048
    assert budgets.from_compression_ratio(0.875, 8192) == 1024
    assert budgets.from_compression_ratio(0.25, 1000) == 750
    assert budgets.from_compression_ratio(0.0, 100) == 100
    assert budgets.from_compression_ratio(0.75, 10) == 2  # 2.5 atoms kept: the floor
    assert budgets.from_compression_ratio(0.999, 10) == 1  # never an empty head
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="compression_ratio"):
            budgets.from_compression_ratio(bad, 10)
