"""The statistics of a comparison: per-step summaries with 95% confidence intervals, tests between
learners on the same episodes, and adaptation speed.

Summaries pool all episodes of all seeds of a group (suite, setting, learner): mean, 95% CI
``1.96 * std / sqrt(n)``, median, the count of non-finite episodes (divergence is reported, not
hidden) and the mean over the finite ones. Beside that interval over episodes (which is conditional
on the trained models), ``seed_interval`` gives a 95% t interval over the seeds' means: the spread
between independently trained models. Learners are compared on the *same* test episodes, so the
test is paired: Wilcoxon's signed-rank test on the per-episode differences (no normality assumed;
the accuracies of few-shot episodes are discrete and skewed). A diverged (non-finite) episode counts
as worse than every finite one rather than being dropped, so a learner that diverges is not judged on
its survivors. Where two runs did not share their episodes, Mann-Whitney's U test stands in, and says
so. The tests of several learners against one best are Holm-corrected (``holm``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

Z_95 = 1.96
SIGNIFICANCE_LEVEL = 0.05
EPISODE_KEY = ["seed", "episode"]


def diverged_as_worst(metric: pd.Series, lower_is_better: pd.Series | bool) -> pd.Series:
    """``metric`` with every NaN (an episode whose inner loop overflowed: ``inf`` at one step, NaN at the next) made
    the worst infinity, ``inf`` where lower is better, else ``-inf`` (``lower_is_better``: one for all, or one per
    row): a diverged episode stays diverged at every later step, in means, medians, curves and tests alike, instead
    of being skipped as missing."""
    worst = pd.Series(np.where(lower_is_better, math.inf, -math.inf), index=metric.index)
    return metric.where(metric.notna(), worst)


def _finite_mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def summarize(records: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """One row per ``group`` + step: n, mean, std, ci95, median, nonfinite, finite_mean."""
    grouped = records.groupby([*group, "step"], sort=False)["metric"]
    with np.errstate(invalid="ignore"):
        summary = grouped.agg(
            n="size",
            mean=lambda values: values.mean(skipna=False),  # a NaN left in (see diverged_as_worst) leaves no mean
            std=lambda values: values.std(ddof=1, skipna=False),
            median="median",
            nonfinite=lambda values: int((~np.isfinite(values)).sum()),
            finite_mean=_finite_mean,
        ).reset_index()
    summary["ci95"] = Z_95 * summary["std"] / np.sqrt(summary["n"])
    return summary


def steps_to_fraction_of_gain(curve: list[float], fraction: float = 0.9,
                              steps: Sequence[int] | None = None) -> int | None:
    """First step whose improvement over step 0 reaches ``fraction`` of the final step's improvement.

    ``curve`` is oriented so that lower is better; ``steps``: the step of each value (None: 0, 1, 2, ...; a curve
    scored at a subset of its steps gives the first scored step). None when the final step improves nothing; 0 for a
    single-point curve (a learner with nothing to adapt at test time has its final metric at step 0).
    """
    if len(curve) == 1:
        return 0
    gains = [curve[0] - value for value in curve]
    final = gains[-1]
    if not np.isfinite(final) or final <= 0:
        return None
    index = next(index for index, gain in enumerate(gains) if gain >= fraction * final)
    return index if steps is None else int(steps[index])


def seed_interval(final: pd.Series) -> tuple[list[float], float]:
    """The mean of each seed (``final`` indexed by (seed, episode); a seed with a non-finite episode has a
    non-finite mean) and the half-width of the 95% t interval over those means (NaN with fewer than 2 seeds)."""
    means = [float(np.mean(values.to_numpy())) for _, values in final.groupby(level="seed", sort=True)]
    if len(means) < 2:
        return means, math.nan
    with np.errstate(invalid="ignore"):
        spread = float(np.std(means, ddof=1))
    return means, float(stats.t.ppf(0.975, len(means) - 1) * spread / math.sqrt(len(means)))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A two-sided test of ``other`` against ``reference``."""

    test: str
    n: int
    difference: float
    """Mean of other minus mean of reference over the values both have finite (paired: per-episode differences)."""
    p_value: float
    adjusted_p_value: float | None = None
    """Holm's adjustment of ``p_value`` for the other tests of its family (``holm``), where there is one."""

    @property
    def significant(self) -> bool:
        p_value = self.p_value if self.adjusted_p_value is None else self.adjusted_p_value
        return p_value < SIGNIFICANCE_LEVEL


def worst_for_non_finite(values: pd.DataFrame, lower_is_better: bool) -> pd.DataFrame:
    """``values`` with every non-finite entry replaced by one worse than every finite entry, by more than the
    finite entries' range: a diverged episode ranks below every finite one (and its difference to a finite value
    outranks every finite difference)."""
    finite = values.to_numpy()[np.isfinite(values.to_numpy())]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    worst = high + (high - low) + 1 if lower_is_better else low - (high - low) - 1
    return values.where(np.isfinite(values), worst)


def _finite_difference(reference: pd.Series, other: pd.Series) -> float:
    both = np.isfinite(reference) & np.isfinite(other)
    return float((other[both] - reference[both]).mean()) if both.any() else math.nan


def paired_comparison(reference: pd.Series, other: pd.Series, *, lower_is_better: bool) -> Comparison:
    """Wilcoxon signed-rank test over the episodes both series hold (aligned on their index); a non-finite value
    counts as worse than every finite one (``worst_for_non_finite``). Identical series give p = 1."""
    pairs = pd.concat({"reference": reference, "other": other}, axis=1, join="inner")
    if pairs.empty:
        return Comparison("Wilcoxon signed-rank", 0, math.nan, math.nan)
    difference = _finite_difference(pairs["reference"], pairs["other"])
    ranked = worst_for_non_finite(pairs, lower_is_better)
    if not (ranked["other"] - ranked["reference"]).any():
        return Comparison("Wilcoxon signed-rank", len(pairs), difference, 1.0)
    result = stats.wilcoxon(ranked["other"], ranked["reference"])
    return Comparison("Wilcoxon signed-rank", len(pairs), difference, float(result.pvalue))


def unpaired_comparison(reference: pd.Series, other: pd.Series, *, lower_is_better: bool) -> Comparison:
    """Mann-Whitney U test, for samples that do not share their episodes; a non-finite value counts as worse
    than every finite one."""
    if len(reference) == 0 or len(other) == 0:
        return Comparison("Mann-Whitney U", 0, math.nan, math.nan)
    samples = worst_for_non_finite(pd.DataFrame({"value": np.concatenate([reference.to_numpy(), other.to_numpy()])}),
                                   lower_is_better)["value"].to_numpy()
    ranked_reference, ranked_other = samples[:len(reference)], samples[len(reference):]
    result = stats.mannwhitneyu(ranked_other, ranked_reference, alternative="two-sided")
    finite_reference, finite_other = reference[np.isfinite(reference)], other[np.isfinite(other)]
    return Comparison("Mann-Whitney U", len(reference) + len(other),
                      float(finite_other.mean() - finite_reference.mean()), float(result.pvalue))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (in the given order): the i-th smallest of m is
    multiplied by m - i + 1, made monotone, capped at 1. NaN p-values stay NaN and do not count in m."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted
