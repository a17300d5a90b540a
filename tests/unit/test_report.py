"""The statistics of the reports against hand-computed values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.stats import (
    diverged_as_worst,
    holm,
    paired_comparison,
    seed_interval,
    steps_to_fraction_of_gain,
    summarize,
    unpaired_comparison,
)

GROUP = ["suite", "setting", "learner"]


def records(values_by_step: dict[int, list[float]]) -> pd.DataFrame:
    rows = [
        {"suite": "s", "setting": "K=5", "learner": "l", "seed": 0, "episode": episode, "step": step, "metric": value}
        for step, values in values_by_step.items() for episode, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_mean_and_95_percent_interval():
    row = summarize(records({0: [1.0, 2.0, 3.0, 4.0]}), GROUP).iloc[0]
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert row["mean"] == 2.5 and row["n"] == 4
    assert row["ci95"] == pytest.approx(1.96 * std / 2)
    assert row["median"] == 2.5 and row["nonfinite"] == 0


def test_non_finite_episodes_are_counted_not_dropped():
    row = summarize(records({0: [1.0, math.inf, 3.0, math.nan]}), GROUP).iloc[0]
    assert row["nonfinite"] == 2 and row["finite_mean"] == 2.0
    assert math.isnan(row["mean"]) or math.isinf(row["mean"])


def test_a_nan_becomes_the_worst_infinity_of_the_metric():
    values = pd.Series([0.5, math.nan, math.inf, -math.inf])
    assert list(diverged_as_worst(values, lower_is_better=True)) == [0.5, math.inf, math.inf, -math.inf]
    assert list(diverged_as_worst(values, lower_is_better=False)) == [0.5, -math.inf, math.inf, -math.inf]
    per_row = diverged_as_worst(pd.Series([math.nan, math.nan]), pd.Series([True, False]))
    assert list(per_row) == [math.inf, -math.inf]


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([10.0, 5.0, 2.0, 1.0], 3),  # gains 5, 8, 9: 8 < 0.9 * 9
        ([10.0, 1.0, 1.0, 1.0], 1),
        ([10.0, 9.0, 0.9, 0.0], 2),  # gain 9.1 at step 2 reaches 0.9 * 10
        ([3.0, 3.5, 4.0], None),  # no final gain
        ([3.0, 2.0, math.inf], None),
    ],
)
def test_steps_to_ninety_percent_of_final_gain(curve, expected):
    assert steps_to_fraction_of_gain(curve) == expected


def series(values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.MultiIndex.from_tuples([(0, episode) for episode in range(len(values))],
                                                             names=["seed", "episode"]))


def test_paired_test_is_wilcoxon_signed_rank_with_the_exact_p_value():
    # Five episodes, all five differences positive with distinct ranks: the exact two-sided
    # p-value is 2 * P(all signs +) = 2 / 2**5 = 0.0625 (not significant at 0.05).
    result = paired_comparison(series([1.0, 2.0, 3.0, 4.0, 5.0]), series([2.0, 4.0, 6.0, 8.0, 10.0]), lower_is_better=True)
    assert result.test == "Wilcoxon signed-rank" and result.n == 5
    assert result.p_value == pytest.approx(0.0625) and not result.significant
    assert result.difference == pytest.approx(3.0)
    # Six such episodes: 2 / 2**6 = 0.03125, significant.
    six = paired_comparison(series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), series([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
                            lower_is_better=True)
    assert six.p_value == pytest.approx(0.03125) and six.significant


def test_a_diverged_episode_counts_as_the_worst_value_not_as_a_dropped_pair():
    reference = series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # Three better episodes (differences -0.1, -0.2, -0.3: ranks 1-3), then a NaN and two infs (diverged, lower is
    # better): each worse than every finite value, so their differences are positive and the largest (ranks 4-6).
    other = series([0.9, 1.8, 2.7, math.nan, math.inf, math.inf])
    result = paired_comparison(reference, other, lower_is_better=True)
    assert result.n == 6
    # W+ = 4 + 5 + 6 = 15 of 21. Exact two-sided p = 2 * P(W+ >= 15) = 2 * 14 / 64: the 14 sign patterns with
    # W+ >= 15 are the complements of the subsets of {1..6} summing to at most 6.
    assert result.p_value == pytest.approx(2 * 14 / 64)
    assert result.difference == pytest.approx(-0.2)  # over the three pairs both finite
    # Dropping the diverged pairs (the old rule) judged the diverging learner on its survivors: all three better.
    assert paired_comparison(reference.iloc[:3], other.iloc[:3], lower_is_better=True).p_value == pytest.approx(2 / 2**3)
    # Higher is better: a NaN accuracy is below every finite one. Differences +0.1, +0.2 (ranks 1, 2) and the NaN's,
    # negative and the largest (rank 3): W+ = 3 of 6, the middle, p = 1.
    accuracy = paired_comparison(series([0.5, 0.5, 0.5]), series([0.6, 0.7, math.nan]), lower_is_better=False)
    assert accuracy.n == 3 and accuracy.p_value == pytest.approx(1.0)
    assert paired_comparison(series([0.5, 0.5, 0.5]), series([0.6, 0.7, 0.8]), lower_is_better=False).p_value == \
        pytest.approx(2 / 2**3)


def test_paired_test_pairs_by_episode():
    reference = series([1.0, 2.0, 3.0, 4.0, 5.0])
    other = series([2.0, 4.0, 6.0, 8.0, 10.0])
    assert paired_comparison(reference, reference.copy(), lower_is_better=True).p_value == 1.0
    shuffled = other.iloc[::-1]  # the same pairs in another order
    assert paired_comparison(reference, shuffled, lower_is_better=True).p_value == pytest.approx(0.0625)


def test_unpaired_test_is_mann_whitney_with_the_exact_p_value():
    # [1, 2, 3] against [4, 5, 6]: U = 0, one arrangement in C(6, 3) = 20 at each extreme: p = 2 / 20.
    result = unpaired_comparison(series([1.0, 2.0, 3.0]), series([4.0, 5.0, 6.0]), lower_is_better=True)
    assert result.test == "Mann-Whitney U" and result.p_value == pytest.approx(0.1) and result.difference == 3.0
    # A diverged value is the worst: [1, 2, 3] against [4, 5, inf] is as extreme as against [4, 5, 6].
    diverged = unpaired_comparison(series([1.0, 2.0, 3.0]), series([4.0, 5.0, math.inf]), lower_is_better=True)
    assert diverged.p_value == pytest.approx(0.1) and diverged.n == 6


def test_holm_adjustment_by_hand():
    # Sorted 0.01, 0.03, 0.04 of m = 3: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> monotone 0.06; NaN stays out of m.
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_seed_interval_is_a_t_interval_over_the_seed_means():
    final = pd.Series([0.0, 2.0, 2.0, 2.0, 3.0, 3.0],
                      index=pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)],
                                                      names=["seed", "episode"]))
    means, half_width = seed_interval(final)
    assert means == [1.0, 2.0, 3.0]
    # sd of [1, 2, 3] is 1; t(0.975, 2 df) = 4.302653: 4.302653 / sqrt(3) = 2.484138.
    assert half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(seed_interval(final.loc[[0]])[1])  # one seed: no interval
    diverged = final.copy()
    diverged.iloc[0] = math.nan
    assert math.isnan(seed_interval(diverged)[0][0])  # a NaN episode makes its seed's mean non-finite, not skipped


def test_numbers_stay_readable_from_tiny_to_diverged():
    from bench.report import format_number

    assert [format_number(value) for value in (0.0424, 3.0, 12_345.6, 4.27e31, float("inf"), None)] == [
        "0.0424", "3", "12,346", "4.27e+31", "inf", "–"]
