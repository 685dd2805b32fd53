"""Budget allocation across heads and layers against brute force / direct implementations."""

import itertools

import numpy as np
import pytest

from minimaxkv.rules import allocation as A


def test_adakv_matches_direct_definition(rng):
    for _ in range(20):
        H, n, m, alpha = 4, 15, int(rng.integers(1, 10)), 0.2
        s = rng.random((H, n))
        base = int(np.floor(alpha * m))
        pool = []
        for h in range(H):
            order = sorted(range(n), key=lambda j: -s[h, j])
            pool += [(s[h, j], h) for j in order[base:]]
        pool.sort(key=lambda t: -t[0])
        ref = [base + sum(1 for _, hh in pool[: H * m - H * base] if hh == h) for h in range(H)]
        np.testing.assert_array_equal(A.adakv_budgets(s, m, alpha), ref)


def test_pyramid_budgets():
    b = A.pyramid_budgets(64, 30, beta=20)
    assert b.sum() == 30 * 64 and (np.diff(b) <= 0).all()
    assert abs(b[0] - (128 - 3.2)) <= 1 and abs(b[-1] - 3.2) <= 1
    with pytest.raises(ValueError, match="exceeds the cache length"):
        A.pyramid_budgets(64, 30, n=100)


def test_spectral_budgets_minimise_summed_tails(rng):
    for _ in range(10):
        e = -np.sort(-rng.random((3, 6)) ** 3, axis=1)
        total = int(rng.integers(3, 16))
        got = A.spectral_budgets(e, total)
        tail = lambda b: sum(e[h, m:].sum() for h, m in enumerate(b))  # noqa: E731
        best = min(tail(b) for b in itertools.product(range(1, 7), repeat=3) if sum(b) == total)
        assert got.sum() == total and abs(tail(got) - best) <= 1e-12


def test_target_budgets_least_m(rng):
    e = -np.sort(-rng.random((4, 12)) ** 2, axis=1)
    got = A.target_budgets(e, 0.1)
    for h in range(4):
        ok = [m for m in range(1, 13) if e[h, m:].sum() <= 0.1 * e[h].sum()]
        assert got[h] == ok[0]


def test_quantized_budgets_keep_the_total():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, H = 100, int(rng.integers(2, 20))
        m = int(rng.integers(1, n))
        exact = A.spectral_budgets(rng.random((H, n)) ** 4, H * m)
        unit = max(1, m // 4)
        q = A.quantized(exact, H * m, n, unit)
        assert q.sum() <= H * m and q.min() >= 1 and q.max() <= n
        assert np.all((q % unit == 0) | (q == n) | (q < unit))
        assert q.sum() > H * m - H * unit  # at most one unit per head is lost
