"""The statistics of the reports against hand-computed values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.stats import paired_comparison, steps_to_fraction_of_gain, summarize, unpaired_comparison

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
    result = paired_comparison(series([1.0, 2.0, 3.0, 4.0, 5.0]), series([2.0, 4.0, 6.0, 8.0, 10.0]))
    assert result.test == "Wilcoxon signed-rank" and result.n == 5
    assert result.p_value == pytest.approx(0.0625) and not result.significant
    assert result.difference == pytest.approx(3.0)
    # Six such episodes: 2 / 2**6 = 0.03125, significant.
    six = paired_comparison(series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), series([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]))
    assert six.p_value == pytest.approx(0.03125) and six.significant


def test_paired_test_pairs_by_episode_and_drops_non_finite_pairs():
    reference = series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    other = series([2.0, 4.0, 6.0, 8.0, 10.0, math.nan, math.inf])
    assert paired_comparison(reference, other).n == 5
    assert paired_comparison(reference, reference.copy()).p_value == 1.0
    shuffled = other.iloc[::-1]  # the same pairs in another order
    assert paired_comparison(reference, shuffled).p_value == pytest.approx(0.0625)


def test_unpaired_test_is_mann_whitney_with_the_exact_p_value():
    # [1, 2, 3] against [4, 5, 6]: U = 0, one arrangement in C(6, 3) = 20 at each extreme: p = 2 / 20.
    result = unpaired_comparison(series([1.0, 2.0, 3.0]), series([4.0, 5.0, 6.0]))
    assert result.test == "Mann-Whitney U" and result.p_value == pytest.approx(0.1) and result.difference == 3.0


def test_numbers_stay_readable_from_tiny_to_diverged():
    from bench.report import format_number

    assert [format_number(value) for value in (0.0424, 3.0, 12_345.6, 4.27e31, float("inf"), None)] == [
        "0.0424", "3", "12,346", "4.27e+31", "inf", "–"]
