"""A run's headline results: per (suite, setting, learner), the number its report's accuracy table leads with.

That number is the report's own (``bench.report.Group.result``: the mean over every test episode and seed at each
seed's val-chosen step, with its 95% interval over episodes; ``Group.seed_interval``: the t interval over the seeds'
means); nothing is recomputed here. ``bench db`` stores these rows, ``bench leaderboard`` ranks them across runs.
"""
from __future__ import annotations

import dataclasses
import math

from bench.report import Group, Report


@dataclasses.dataclass(frozen=True)
class Headline:
    """One learner's result on one suite setting in one run, with the budget it had."""

    suite: str
    setting: str
    setting_index: int
    """The setting's position in its suite (the reports' order)."""
    learner: str
    metric_name: str
    lower_is_better: bool
    mean: float
    """The metric at the val-chosen steps, over every test episode and seed (non-finite episodes count as the worst)."""
    ci95: float
    """Half-width of the 95% interval over episodes."""
    median: float
    episodes: int
    """Test episodes scored, all seeds together."""
    nonfinite: int
    seed_means: list[float]
    seed_ci95: float | None
    """Half-width of the t interval over the seeds' means (None with one seed)."""
    seeds: int
    """Seeds with results."""
    planned_seeds: int
    """Seeds the run had for this learner and setting (failed ones included)."""
    selected_steps: list[int]
    """Each seed's val-chosen adaptation step, in seed order."""
    task_budget: int
    """Meta-training tasks per cell."""
    test_episodes: int
    """Test episodes per cell."""
    test_steps: int
    rank: int
    """1 for the run's best learner on the setting."""


def _headline(report: Report, group: Group, rank: int) -> Headline:
    metric_name, lower_is_better = report.orientation(group.suite)
    result = group.result
    seed_means, seed_ci95 = group.seed_interval
    ok = group.ok
    return Headline(
        group.suite, group.setting, ok[0].setting_index, group.learner, metric_name, lower_is_better,
        float(result["mean"]), float(result["ci95"]), float(result["median"]), int(result["n"]), int(result["nonfinite"]),
        [float(mean) for mean in seed_means], None if math.isnan(seed_ci95) else float(seed_ci95), len(ok),
        len(group.cells), group.selected_steps, max(cell.task_budget for cell in ok),
        max(cell.test_episodes for cell in ok), max(cell.test_steps for cell in ok), rank)


def headlines(report: Report) -> list[Headline]:
    """Every group of ``report`` with results: per setting (in the report's order), best first, each with its rank."""
    return [_headline(report, group, rank)
            for ranked in report.rankings.values()
            for rank, group in enumerate(ranked, start=1) if len(group.final)]
