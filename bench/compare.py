"""``bench compare``: the same learners and suite settings across runs, side by side, with differences
and significance; ``bench runs``: what the results folder holds.

Runs are comparable on a (suite, setting, learner) group when both hold results for it with the same
metric and a curve ending at the same adaptation step. Each run's group is read at its val-chosen steps
(``Group.final``: chosen per seed on meta-validation; the last step in runs without it). Where the two
cells scored the very same test episodes (equal episode fingerprints for every seed), the test is paired
(Wilcoxon signed-rank, per episode); otherwise unpaired (Mann-Whitney U), and the table says so.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from pathlib import Path

from bench.errors import BenchError
from bench.report import GroupKey, Report, Table, format_number, format_p, format_steps
from bench.stats import paired_comparison, unpaired_comparison
from bench.store import RUN_FILE, RunStore, StoreError


class NotComparableError(BenchError, ValueError):
    """The runs share nothing that can be compared; the message says what differs."""


@dataclasses.dataclass
class Run:
    label: str
    report: Report

    @classmethod
    def load(cls, path: Path) -> "Run":
        store = RunStore(path)
        info = store.run_info()
        return cls(path.name or str(path), Report(store.records(), store.cells(), info))

    @functools.cached_property
    def groups(self) -> set[GroupKey]:
        """The (suite, setting, learner) groups with results."""
        return {key for key, group in self.report.groups.items() if group.ok}

    def protocol(self, key: GroupKey) -> tuple[str, int, tuple[tuple[int, str | None], ...]]:
        """(metric name, adaptation steps its curve ends at, (seed, episode fingerprint or None if not recorded) per
        cell) of a group; the steps are the recorded ones (0 for a learner with nothing to adapt, whatever ``--steps``)."""
        group = self.report.groups[key]
        fingerprints = tuple(sorted((cell.seed, cell.test_episodes_sha256) for cell in group.ok))
        return str(group.ok[0].metric_name), int(group.curve["step"].max()), fingerprints


def _check_comparable(baseline: Run, other: Run, common: list[GroupKey]) -> None:
    if not common:
        def describe(run: Run) -> str:
            return "; ".join(sorted(f"{learner} on {suite} {setting}" for suite, setting, learner in run.groups)) or "no finished cells"
        raise NotComparableError(f"runs '{baseline.label}' and '{other.label}' have no suite setting and learner in common: "
                                 f"'{baseline.label}' has {describe(baseline)}; '{other.label}' has {describe(other)}")
    for group in common:
        (metric_a, steps_a, _), (metric_b, steps_b, _) = baseline.protocol(group), other.protocol(group)
        if (metric_a, steps_a) != (metric_b, steps_b):
            suite, setting, learner = group
            raise NotComparableError(
                f"{learner} on {suite} {setting} is not comparable: '{baseline.label}' measures {metric_a} after {steps_a} "
                f"adaptation steps, '{other.label}' {metric_b} after {steps_b}")


def compare(runs: list[Run]) -> Table:
    """One row per group the first run shares with any other; each other run's difference to the first."""
    if len(runs) < 2:
        raise NotComparableError("compare needs at least two run folders")
    baseline = runs[0]
    shared = {other.label: sorted(baseline.groups & other.groups) for other in runs[1:]}
    for other in runs[1:]:
        _check_comparable(baseline, other, shared[other.label])
    columns = ["suite", "setting", "learner", *(f"{run.label}: mean ± 95% CI" for run in runs),
               *(f"{run.label} − {baseline.label}" for run in runs[1:])]
    table = Table("Comparison", columns, [], note=(
        "Metric at each run's val-chosen step (chosen per seed on meta-validation, never on test episodes; the last "
        f"step in runs without meta-validation), the step in brackets; differences to '{baseline.label}' there with a "
        "two-sided test: "
        "Wilcoxon signed-rank where both runs scored the same test episodes (paired), Mann-Whitney U otherwise "
        "(marked unpaired); n.s. = not significantly different at p < 0.05."))
    settings = list(baseline.report.settings)
    for group in sorted(set().union(*shared.values()), key=lambda g: (g[0], settings.index(g[:2]), g[2])):
        row = list(group)
        for run in runs:
            if group not in run.groups:
                row.append("–")
                continue
            found = run.report.groups[group]
            row.append(f"{format_number(found.result['mean'])} ± {format_number(found.result['ci95'], 2)} "
                       f"(step {format_steps(found.selected_steps)})")
        for other in runs[1:]:
            if group not in shared[other.label]:
                row.append("–")
                continue
            episodes = baseline.protocol(group)[2]
            paired = episodes == other.protocol(group)[2] and all(fingerprint for _, fingerprint in episodes)
            test = paired_comparison if paired else unpaired_comparison
            _, lower_is_better = baseline.report.orientation(group[0])
            result = test(baseline.report.groups[group].final, other.report.groups[group].final,
                          lower_is_better=lower_is_better)
            row.append(f"{format_number(result.difference)}, {format_p(result)}" + ("" if paired else ", unpaired"))
        table.rows.append(row)
    return table


def list_runs(results: Path) -> list[dict[str, str]]:
    """One row per run folder under ``results`` (newest first); an unreadable folder is listed as such."""
    rows = []
    for run_file in sorted(results.glob(f"*/{RUN_FILE}"), key=lambda path: path.parent.name, reverse=True):
        path = run_file.parent
        try:
            store = RunStore(path)
            info = store.run_info()
            cells = store.cells()
        except (StoreError, OSError, ValueError) as error:
            rows.append({"run": path.name, "status": f"unreadable: {error}"})
            continue
        config, environment = info.get("config", {}), info.get("environment", {})
        counts = collections.Counter(cell.status.value for cell in cells)
        rows.append({
            "run": path.name,
            "started": str(environment.get("started", "–")),
            "status": str(info.get("status", "–")),
            "profile": str(config.get("profile", "–")),
            "suites": ",".join(sorted({cell.suite for cell in cells}) if cells else config.get("suites", [])),
            "learners": ",".join(sorted({cell.learner for cell in cells}) if cells else config.get("learners", [])),
            "cells": ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "none finished",
        })
    return rows
