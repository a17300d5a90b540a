"""The statistics of the summary tables against hand-computed values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report import steps_to_fraction_of_gain, summarize


def records(values_by_step: dict[int, list[float]]) -> pd.DataFrame:
    rows = [
        {"suite": "s", "setting": "K=5", "learner": "l", "seed": 0, "episode": episode, "step": step, "metric": value}
        for step, values in values_by_step.items() for episode, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_mean_and_95_percent_interval():
    row = summarize(records({0: [1.0, 2.0, 3.0, 4.0]})).iloc[0]
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert row["mean"] == 2.5 and row["n"] == 4
    assert row["ci95"] == pytest.approx(1.96 * std / 2)
    assert row["median"] == 2.5 and row["nonfinite"] == 0


def test_non_finite_episodes_are_counted_not_dropped():
    row = summarize(records({0: [1.0, math.inf, 3.0, math.nan]})).iloc[0]
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
