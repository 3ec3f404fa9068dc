"""server/stats.py against published values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math
import random
from statistics import NormalDist

import pytest

from edgefleet.server.stats import _u_counts, mann_whitney_greater, median, min_p_value, ranks, stouffer


def brute_force_p(x: list[float], y: list[float]) -> float:
    """P(U >= observed) over every way of splitting the pooled values into groups of len(x) and len(y)."""
    pooled = [*x, *y]

    def u_of(first: list[float], second: list[float]) -> float:
        return sum((a > b) + 0.5 * (a == b) for a in first for b in second)

    observed = u_of(x, y)
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    hits = 0
    for chosen in splits:
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += u_of(first, second) >= observed - 1e-9
    return hits / len(splits)


def test_published_example_r_wilcox_test() -> None:
    # R's ?wilcox.test (Hollander & Wolfe 1973, p. 69): wilcox.test(x, y, alternative = "g") gives W = 35,
    # p-value = 0.1272 (exact: no ties)
    x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
    y = [1.15, 0.88, 0.90, 0.74, 1.21]
    test = mann_whitney_greater(x, y)
    assert test.method == "exact"
    assert test.u == 35.0
    assert round(test.p, 4) == 0.1272


def test_hand_computed_extremes() -> None:
    # every x above every y: U = n1 * n2 and p = 1 / C(n1 + n2, n1)
    assert mann_whitney_greater([3.0, 4.0, 5.0], [1.0, 2.0]).p == pytest.approx(1 / 10)
    assert mann_whitney_greater([6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0, 5.0]).p == pytest.approx(1 / 56)
    # every x below every y: P(U >= 0) = 1
    assert mann_whitney_greater([1.0, 2.0], [3.0, 4.0, 5.0]).p == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(12))
def test_exact_matches_brute_force_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    n1, n2 = rng.randint(1, 6), rng.randint(1, 6)
    x = [rng.gauss(0.5, 1) for _ in range(n1)]
    y = [rng.gauss(0.0, 1) for _ in range(n2)]
    test = mann_whitney_greater(x, y)
    assert test.method == "exact"
    assert test.p == pytest.approx(brute_force_p(x, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_normal_approximation_with_ties_is_close_to_the_permutation_p(seed: int) -> None:
    rng = random.Random(100 + seed)
    x = [float(rng.randint(0, 4)) for _ in range(7)]  # heavy ties: normal approximation with tie correction
    y = [float(rng.randint(0, 3)) for _ in range(7)]
    test = mann_whitney_greater(x, y)
    assert test.method == "normal"
    assert abs(test.p - brute_force_p(x, y)) < 0.03


@pytest.mark.parametrize("shift", [0.0, 0.3, 0.6])
def test_normal_approximation_agrees_with_the_exact_distribution_for_larger_samples(shift: float) -> None:
    rng = random.Random(7)
    x = [rng.gauss(shift, 1) for _ in range(40)]
    y = [rng.gauss(0.0, 1) for _ in range(60)]
    exact, normal = mann_whitney_greater(x, y), mann_whitney_greater(x, y, method="normal")
    assert (exact.method, normal.method) == ("exact", "normal")
    assert exact.u == normal.u
    assert abs(exact.p - normal.p) < 0.005


def test_p_values_are_uniform_under_the_null() -> None:
    rng = random.Random(3)
    ps = [mann_whitney_greater([rng.random() for _ in range(5)], [rng.random() for _ in range(20)]).p
          for _ in range(2000)]
    assert 0.005 <= sum(p < 0.05 for p in ps) / len(ps) <= 0.07  # size 5 % (exact, so at most 5 % plus noise)


def test_ranks_average_ties() -> None:
    assert ranks([10.0, 20.0, 20.0, 5.0]) == [2.0, 3.5, 3.5, 1.0]


def test_all_values_equal_gives_no_evidence() -> None:
    assert mann_whitney_greater([1.0, 1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_stouffer() -> None:
    assert stouffer([0.05]) == pytest.approx(0.05)
    z = NormalDist().inv_cdf(0.95)
    assert stouffer([0.05, 0.05]) == pytest.approx(1 - NormalDist().cdf(2 * z / math.sqrt(2)))
    assert stouffer([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert stouffer([1.0, 0.0]) == pytest.approx(0.5, abs=1e-6)


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_min_p_value_is_the_exact_tail_of_the_most_extreme_split() -> None:
    assert min_p_value(3, 3) == pytest.approx(1 / 20)
    assert min_p_value(1, 99) == pytest.approx(1 / 100)
    assert min_p_value(3, 5) == pytest.approx(mann_whitney_greater([6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0, 5.0]).p)
    assert min_p_value(0, 5) == 1.0
    assert min_p_value(5000, 5000) == 0.0  # C(10000, 5000) does not fit a float: no overflow


@pytest.mark.parametrize(("n1", "n2"), [(3, 800), (800, 3), (50, 50), (10, 250)])
def test_exact_distribution_of_gate_sized_samples(n1: int, n2: int) -> None:
    # what a wave's gate meets: a few updated devices against hundreds of controls; every arrangement is
    # counted once and U is symmetric about n1 * n2 / 2
    counts = _u_counts(n1, n2)
    assert len(counts) == n1 * n2 + 1 and sum(counts) == math.comb(n1 + n2, n1)
    assert counts == counts[::-1] and counts == _u_counts(n2, n1)
