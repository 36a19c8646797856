"""replay.stats: the one percentile, median, binomial tails and Holm correction that compare,
the live shadowing and the canary share."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from replay.stats import binom_sf_half, binomial_tail, holm, median, percentile


def test_percentile_is_nearest_rank() -> None:
    twenty = [float(i) for i in range(1, 21)]
    assert percentile(twenty, 95) == 19.0  # the 19th of 20, not the maximum
    assert percentile(twenty, 100) == 20.0
    assert percentile(twenty, 50) == 10.0  # ceil(0.5 * 20) = 10th, not an average
    assert percentile(twenty, 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0
    assert percentile([10.0, 20.0, 30.0], 90) == 30.0
    assert percentile([7.0], 1) == 7.0
    assert percentile([], 50) is None
    assert percentile(list(range(1, 101)), 99) == 99


def test_percentile_is_a_sample() -> None:
    v = sorted([0.013, 0.2, 0.0017, 0.5, 0.07, 0.9, 0.33])
    for q in (1, 10, 25, 50, 75, 90, 95, 99, 100):
        assert percentile(v, q) in v


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([5.0]) == 5.0
    assert median([]) is None


def _tail(k: int, n: int, p: Fraction) -> float:
    """P(X >= k), X ~ Binomial(n, p), summed term by term in exact arithmetic."""
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@pytest.mark.parametrize(("k", "n", "p"), [
    (1, 1, Fraction(1, 2)), (2, 20, Fraction(1, 100)), (5, 30, Fraction(1, 10)),
    (7, 10, Fraction(3, 10)), (10, 10, Fraction(1, 2)), (13, 200, Fraction(1, 50)),
    (40, 60, Fraction(1, 2)), (3, 7, Fraction(9, 10)),
])
def test_binomial_tail_against_the_sum(k: int, n: int, p: Fraction) -> None:
    assert binomial_tail(k, n, float(p)) == pytest.approx(_tail(k, n, p), rel=1e-9)


def test_binomial_tail_edges() -> None:
    assert binomial_tail(0, 10, .3) == 1.0
    assert binomial_tail(-1, 10, .3) == 1.0
    assert binomial_tail(11, 10, .3) == 0.0
    assert binomial_tail(3, 10, 0.0) == 0.0
    assert binomial_tail(3, 10, 1.0) == 1.0
    assert binomial_tail(600, 1000, .5) < 1e-9


@pytest.mark.parametrize(("k", "m"), [(1, 1), (8, 10), (10, 10), (30, 50), (0, 5), (6, 5)])
def test_mcnemar_tail_against_the_sum(k: int, m: int) -> None:
    want = 1.0 if k <= 0 else 0.0 if k > m else _tail(k, m, Fraction(1, 2))
    assert binom_sf_half(k, m) == pytest.approx(want, rel=1e-12)
    if 0 < k <= m:
        assert binom_sf_half(k, m) == pytest.approx(binomial_tail(k, m, .5), rel=1e-9)


def test_mcnemar_tail_in_log_space_past_1000_pairs() -> None:
    # past 1000 discordant pairs the sum is taken in log space: it meets the exact one
    for k in (1500, 1550, 1600):
        assert binom_sf_half(k, 3000) == pytest.approx(_tail(k, 3000, Fraction(1, 2)), rel=1e-9)
    assert binom_sf_half(2000, 3000) < 1e-60


def test_holm_by_hand() -> None:
    # sorted: .005 x4 = .02; .01 x3 = .03; .03 x2 = .06; .04 x1 = .04 -> .06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_old_homes_use_the_same_functions() -> None:
    from appliance.canary import judge, rollout
    from replay import compare, latency, replayer

    assert compare.holm is holm and compare.binom_sf_half is binom_sf_half
    assert judge.binomial_tail is binomial_tail and judge.percentile is percentile
    assert replayer.percentile is percentile and rollout.percentile is percentile
    assert latency.median is median and latency.percentile is percentile
    assert rollout._p95([float(i) for i in range(20, 0, -1)]) == 19.0
