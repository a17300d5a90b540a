"""The statistics of a comparison: per-step summaries with 95% confidence intervals, tests between
learners on the same episodes, and adaptation speed.

Summaries pool all episodes of all seeds of a group (suite, setting, learner): mean, 95% CI
``1.96 * std / sqrt(n)``, median, the count of non-finite episodes (divergence is reported, not
hidden) and the mean over the finite ones. Learners are compared on the *same* test episodes, so the
test is paired: Wilcoxon's signed-rank test on the per-episode differences (no normality assumed;
the accuracies of few-shot episodes are discrete and skewed). Where two runs did not share their
episodes, Mann-Whitney's U test stands in, and says so.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

Z_95 = 1.96
SIGNIFICANCE_LEVEL = 0.05
EPISODE_KEY = ["seed", "episode"]


def _finite_mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def summarize(records: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """One row per ``group`` + step: n, mean, std, ci95, median, nonfinite, finite_mean."""
    grouped = records.groupby([*group, "step"], sort=False)["metric"]
    with np.errstate(invalid="ignore"):
        summary = grouped.agg(
            n="size",
            mean="mean",
            std=lambda values: values.std(ddof=1),
            median="median",
            nonfinite=lambda values: int((~np.isfinite(values)).sum()),
            finite_mean=_finite_mean,
        ).reset_index()
    summary["ci95"] = Z_95 * summary["std"] / np.sqrt(summary["n"])
    return summary


def steps_to_fraction_of_gain(curve: list[float], fraction: float = 0.9) -> int | None:
    """First step whose improvement over step 0 reaches ``fraction`` of the final step's improvement.

    ``curve`` is oriented so that lower is better. None when the final step improves nothing; 0 for a
    single-point curve (a learner with nothing to adapt at test time has its final metric at step 0).
    """
    if len(curve) == 1:
        return 0
    gains = [curve[0] - value for value in curve]
    final = gains[-1]
    if not np.isfinite(final) or final <= 0:
        return None
    return next(step for step, gain in enumerate(gains) if gain >= fraction * final)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A two-sided test of ``other`` against ``reference``."""

    test: str
    n: int
    difference: float
    """Mean of other minus mean of reference (paired: mean per-episode difference)."""
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE_LEVEL


def paired_comparison(reference: pd.Series, other: pd.Series) -> Comparison:
    """Wilcoxon signed-rank test over the episodes both series hold (aligned on their index);
    pairs with a non-finite value are dropped. Identical series give p = 1."""
    pairs = pd.concat({"reference": reference, "other": other}, axis=1, join="inner")
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    differences = pairs["other"] - pairs["reference"]
    if len(differences) == 0:
        return Comparison("Wilcoxon signed-rank", 0, math.nan, math.nan)
    if not differences.any():
        return Comparison("Wilcoxon signed-rank", len(differences), 0.0, 1.0)
    result = stats.wilcoxon(pairs["other"], pairs["reference"])
    return Comparison("Wilcoxon signed-rank", len(differences), float(differences.mean()), float(result.pvalue))


def unpaired_comparison(reference: pd.Series, other: pd.Series) -> Comparison:
    """Mann-Whitney U test, for samples that do not share their episodes; non-finite values dropped."""
    reference, other = reference[np.isfinite(reference)], other[np.isfinite(other)]
    if len(reference) == 0 or len(other) == 0:
        return Comparison("Mann-Whitney U", 0, math.nan, math.nan)
    result = stats.mannwhitneyu(other, reference, alternative="two-sided")
    return Comparison("Mann-Whitney U", len(reference) + len(other), float(other.mean() - reference.mean()),
                      float(result.pvalue))
