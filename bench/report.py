"""The comparison report of one run: accuracy with significance, adaptation speed, cost, provenance.

Tables are built here as ``Table`` objects (cells as text, with the cells to set in bold); the
formats (Markdown, HTML, LaTeX, CSV) are in ``bench.render`` and the figures in ``bench.plots``.
Each cell's result is read at the adaptation step chosen on meta-validation for the state chosen there
(``CellMetadata.selected_step``; the last step in cell files written before meta-validation existed): nothing
is chosen on test episodes. The best learner of a setting is the one with the best mean there; every other
learner is tested against it on the shared episodes (``bench.stats.paired_comparison``). The meta-validation
rows (``RunStore.validation()``) and the training curves (``RunStore.training()``) give the learning curves.

A report computes once: its cells and records are grouped by (suite, setting, learner) as it is built,
the ranking, the tests and the tables when first asked for; every format and figure reads the same.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bench.cells import CellMetadata, CellStatus
from bench.machine_load import is_busy
from bench.stats import (
    EPISODE_KEY,
    Comparison,
    diverged_as_worst,
    holm,
    paired_comparison,
    seed_interval,
    steps_to_fraction_of_gain,
    summarize,
)

GROUP = ["suite", "setting", "learner"]
SPEED_STEPS = (0, 1, 2, 5, 10)
SEED_COLUMNS = ["seed_means", "seed_ci95"]
SELECTION_COLUMNS = ["selected_steps", "selected_tasks", "selection", "selection_note", "selected_mean",
                     "selected_ci95", "selected_median", "selected_nonfinite"]
TEST_COLUMNS = ["vs_best_test", "vs_best_p_value", "vs_best_p_holm", "vs_best_difference"]
GroupKey = tuple[str, str, str]
SettingKey = tuple[str, str]


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    """(row, column) positions of the cells to emphasise."""
    note: str = ""


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else str(value)
    if abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:,.0f}" if abs(value) < 1e9 else f"{value:.{digits}g}"  # a diverged mean: 4.27e+31, not 32 digits


def format_p(comparison: Comparison) -> str:
    """``p=…`` (Holm-adjusted where the comparison has an adjustment), ``n.s. (p=…)`` when not significant."""
    if math.isnan(comparison.p_value):
        return "no shared episodes"
    value = comparison.p_value if comparison.adjusted_p_value is None else comparison.adjusted_p_value
    p = f"p={value:.2g}" if value >= 1e-4 else "p<1e-4"
    return p if comparison.significant else f"n.s. ({p})"


def _mean(values: Iterable[float | None]) -> float:
    """The mean of the values recorded (NaN when none is)."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else math.nan


def format_steps(steps: Iterable[int]) -> str:
    """One step, or the range the seeds' steps span ("1–3")."""
    distinct = sorted(set(steps))
    if not distinct:
        return "–"
    return str(distinct[0]) if len(distinct) == 1 else f"{distinct[0]}–{distinct[-1]}"


def _one_two_five(step: int) -> bool:
    """Whether ``step`` is 1, 2 or 5 times a power of ten."""
    digits = str(step)
    return digits[0] in "125" and not digits[1:].strip("0")


def _per_seed(values: list[int | None]) -> str:
    """A count shared by every seed, or each seed's (" / "); – where none is recorded."""
    distinct = sorted({value for value in values if value is not None})
    return "–" if not distinct else " / ".join(f"{value:,}" for value in (distinct if len(distinct) == 1 else values))


def _load(cells: list[CellMetadata]) -> str:
    """The largest machine load over ``cells`` against their cores, e.g. ``2.1 / 2`` (``–`` where not recorded)."""
    loads = [(cell.machine_load, cell.cpu_cores) for cell in cells if cell.machine_load is not None]
    if not loads:
        return "–"
    load, cores = max(loads)
    return f"{load:.1f} / {cores}"


def _largest(values: Iterable[float | None]) -> float | None:
    """The largest of the values recorded (None when none is)."""
    return max((value for value in values if value is not None), default=None)


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """The cells of one (suite, setting, learner) of a run and, where any finished, their curve and final metric."""

    suite: str
    setting: str
    learner: str
    cells: tuple[CellMetadata, ...]
    curve: pd.DataFrame
    """The summary (``bench.stats.summarize``) by step, from step 0; empty without results."""
    final: pd.Series
    """The metric at each cell's val-chosen step (``selected_step``; the group's last step where a cell has none),
    one value per (seed, episode): learners read at different steps pair on the same episodes."""

    @functools.cached_property
    def ok(self) -> list[CellMetadata]:
        """The finished cells."""
        return [cell for cell in self.cells if cell.status is CellStatus.OK]

    @property
    def status_note(self) -> str | None:
        """'n/a: reason' or 'failed: error' when no cell of the group succeeded."""
        if self.ok:
            return None
        first = self.cells[0]
        return f"{first.status}: {first.error or ''}"

    @functools.cached_property
    def result(self) -> pd.Series:
        """n, mean, ci95, median, nonfinite and finite_mean of ``final`` (``bench.stats.summarize``)."""
        return summarize(self.final.rename("metric").reset_index().assign(step=-1), []).iloc[0]

    @property
    def last_step(self) -> int:
        """The last step S of this group's curve: the protocol's, or the learner's own (``adaptation_steps``)."""
        return int(self.curve["step"].iloc[-1])

    @property
    def selected_steps(self) -> list[int]:
        """The step each finished cell's result is read at, in seed order."""
        return [self.last_step if cell.selected_step is None else cell.selected_step
                for cell in sorted(self.ok, key=lambda cell: cell.seed)]

    @property
    def selection_notes(self) -> list[str]:
        """The distinct notes the finished cells give on their selection (e.g. the learner cannot hand over its
        state)."""
        return sorted({cell.selection_note for cell in self.ok if cell.selection_note})

    @functools.cached_property
    def seed_interval(self) -> tuple[list[float], float]:
        """The mean of each seed's final metric and the half-width of the 95% t interval over them
        (``bench.stats.seed_interval``)."""
        return seed_interval(self.final)

    @property
    def adapt_ms_per_episode(self) -> float:
        """Milliseconds to adapt one test episode through all steps (mean over the finished cells)."""
        return _mean(cell.adapt_ms_per_episode for cell in self.ok)

    @property
    def adapted_parameters(self) -> str:
        """How many numbers adapt per test task (the seeds' counts, which agree), or "–" where not stated."""
        counts = sorted({cell.adapted_parameters for cell in self.ok if cell.adapted_parameters is not None})
        return " / ".join(f"{count:,}" for count in counts) or "–"


def _selected_metric(records: pd.DataFrame, cells: list[CellMetadata]) -> pd.Series:
    """Per (seed, episode), the metric at the step its cell's result is read at (``selected_step``; the group's last
    step for a cell without one)."""
    last = records["step"].max()
    steps = {cell.seed: last if cell.selected_step is None else cell.selected_step for cell in cells}
    return records[records["step"] == records["seed"].map(steps)].set_index(EPISODE_KEY)["metric"]


def _mean_with_gaps(values: pd.Series) -> float:
    """The mean over seeds, NaN where any seed's value is NaN."""
    return values.mean(skipna=False)


@dataclasses.dataclass(frozen=True)
class LearningCurve:
    """One learner's meta-training on one setting (means over seeds)."""

    learner: str
    points: pd.DataFrame
    """By validation point, tasks_seen, train_loss and metric: the meta-val mean at the point's best step (NaN where a
    seed's is non-finite); no rows without meta-validation."""
    selected_tasks: list[int]
    """Tasks seen at each seed's selected point."""
    training: pd.DataFrame | None = None
    """tasks_seen, train_loss: the training curve (``cells/<cell>.train.csv``); None where the cells have none (runs
    written before them)."""


class Report:
    """Tables of one run, from its records (one row per episode x step) and cell metadata."""

    def __init__(self, records: pd.DataFrame, cells: list[CellMetadata], run_info: dict[str, Any] | None = None,
                 validation: pd.DataFrame | None = None, training: pd.DataFrame | None = None) -> None:
        """``validation``: the meta-validation rows (``RunStore.validation()``), None or empty for a run without;
        ``training``: the training curves (``RunStore.training()``), likewise."""
        self.cells = sorted(cells, key=lambda cell: (cell.suite, cell.setting_index, cell.learner, cell.seed))
        self._orientations: dict[str, tuple[str, bool]] = {}
        for cell in self.cells:
            if cell.status is CellStatus.OK:
                self._orientations.setdefault(cell.suite, (str(cell.metric_name), bool(cell.lower_is_better)))
        records = self._diverged_as_worst(records)
        self.records = records
        self.summary = summarize(records, GROUP) if len(records) else pd.DataFrame(columns=[*GROUP, "step"])
        self.run_info = run_info or {}
        self.validation = validation if validation is not None else pd.DataFrame()
        self.training = training if training is not None else pd.DataFrame()
        members: dict[GroupKey, list[CellMetadata]] = {}
        for cell in self.cells:
            members.setdefault((cell.suite, cell.setting, cell.learner), []).append(cell)
        curves = {key: curve.sort_values("step") for key, curve in self.summary.groupby(GROUP, sort=False)}
        finals = ({key: _selected_metric(group, [cell for cell in members[key] if cell.status is CellStatus.OK])
                   for key, group in records.groupby(GROUP, sort=False)} if len(records) else {})
        self.groups: dict[GroupKey, Group] = {
            key: Group(*key, tuple(group_cells), curves.get(key, self.summary.iloc[:0]),
                       finals.get(key, pd.Series(dtype=float)))
            for key, group_cells in members.items()}
        """Every (suite, setting, learner) with cells, in the report's order."""
        self.settings: dict[SettingKey, list[Group]] = {}
        """Every (suite, setting) with cells, in the report's order, with its groups (learners by name)."""
        for group in self.groups.values():
            self.settings.setdefault((group.suite, group.setting), []).append(group)

    def _diverged_as_worst(self, records: pd.DataFrame) -> pd.DataFrame:
        """``records`` with each suite's NaN metrics made its worst infinity (``diverged_as_worst``)."""
        if not len(records) or not records["metric"].isna().any():
            return records
        lower_is_better = records["suite"].map(lambda suite: self.orientation(suite)[1])
        return records.assign(metric=diverged_as_worst(records["metric"], lower_is_better))

    # -- ranking and tests, per setting ------------------------------------------------------------

    def orientation(self, suite: str) -> tuple[str, bool]:
        """(metric name, lower is better) of a suite."""
        return self._orientations.get(suite, ("metric", True))

    @functools.cached_property
    def rankings(self) -> dict[SettingKey, list[Group]]:
        """Per setting, its groups with results, best mean at the val-chosen steps first (non-finite means last)."""
        rankings = {}
        for (suite, setting), groups in self.settings.items():
            _, lower_is_better = self.orientation(suite)
            means = {group: group.result["mean"] for group in groups if group.status_note is None}
            finite = sorted((group for group, mean in means.items() if np.isfinite(mean)),
                            key=means.__getitem__, reverse=not lower_is_better)
            rankings[suite, setting] = finite + [group for group in means if group not in finite]
        return rankings

    @functools.cached_property
    def comparisons(self) -> dict[SettingKey, dict[str, Comparison]]:
        """Per setting, each learner with results but the best, tested against the best on the same episodes;
        the p-values of a setting Holm-adjusted together (one family: every learner against the best)."""
        comparisons = {}
        for (suite, setting), ranked in self.rankings.items():
            _, lower_is_better = self.orientation(suite)
            tests = {group.learner: paired_comparison(ranked[0].final, group.final, lower_is_better=lower_is_better)
                     for group in ranked[1:]}
            adjusted = holm([test.p_value for test in tests.values()])
            comparisons[suite, setting] = {learner: dataclasses.replace(test, adjusted_p_value=p)
                                           for (learner, test), p in zip(tests.items(), adjusted)}
        return comparisons

    @functools.cached_property
    def _curve_lengths_note(self) -> str:
        """Sentences naming the learners whose curve ends before the protocol's last step (they declare fewer
        adaptation steps, ``max_adaptation_steps``) and those whose curve goes on past it (their own protocol fixes
        their steps, ``Learner.adaptation_steps``), with the step each ends at; or nothing."""
        last: dict[str, int] = {}
        requested: dict[str, int] = {}
        longer: dict[str, dict[str, int]] = {}
        for group in self.groups.values():
            if group.curve.empty:
                continue
            learner, asked = group.learner, max(cell.test_steps for cell in group.ok)
            last[learner] = max(last.get(learner, 0), group.last_step)
            requested[learner] = max(requested.get(learner, 0), asked)
            if group.last_step > asked:
                longer.setdefault(learner, {})[f"{group.suite} {group.setting}"] = group.last_step
        short = {learner: last[learner] for learner in sorted(last) if last[learner] < requested[learner]}
        note = ""
        if short:
            described = [f"{learner} (no test-time adaptation: a single point at step 0)" if step == 0
                         else f"{learner} (at most {step} steps)" for learner, step in short.items()]
            note += (" Curves that end before the protocol's last step (that is their final step; – at the steps they "
                     f"lack): {', '.join(described)}.")
        if longer:
            described = [f"{learner} ({'; '.join(f'{steps} steps on {where}' for where, steps in settings.items())})"
                         for learner, settings in sorted(longer.items())]
            note += (" Curves that go on past the protocol's last step, to the step count their learner's own "
                     "protocol fixes (scored after every step up to the protocol's, then at 20, 50, 100, 200, ... and "
                     f"their last; – at the steps they skip): {', '.join(described)}.")
        return note

    @functools.cached_property
    def learning_curves(self) -> dict[SettingKey, list[LearningCurve]]:
        """Per setting with meta-validation rows or training curves, each learner's meta-training loss (its training
        curve, and by validation point) and meta-val metric (its best step's) by validation point, means over seeds
        (a seed's NaN leaves a gap, not a mean over the other seeds), with its seeds' selected points; learners by
        name."""
        validation = dict(list(self.validation.groupby(GROUP, sort=True))) if len(self.validation) else {}
        training = dict(list(self.training.groupby(GROUP, sort=True))) if len(self.training) else {}
        curves: dict[SettingKey, list[LearningCurve]] = {}
        for suite, setting, learner in sorted({*validation, *training}):
            points = pd.DataFrame(columns=["tasks_seen", "train_loss", "metric"])
            if (suite, setting, learner) in validation:
                rows = validation[suite, setting, learner]
                _, lower_is_better = self.orientation(suite)
                finite = rows.assign(metric=rows["metric"].where(np.isfinite(rows["metric"])))
                by_point = finite.groupby(["tasks_seen", "seed"]).agg(
                    metric=("metric", "min" if lower_is_better else "max"), train_loss=("train_loss", "first"))
                points = by_point.groupby(level="tasks_seen").agg(_mean_with_gaps).reset_index()[points.columns]
            curve = None
            if (suite, setting, learner) in training:
                curve = training[suite, setting, learner].groupby("tasks_seen")["train_loss"].agg(
                    _mean_with_gaps).reset_index()
            cells = self.groups[suite, setting, learner].ok
            selected = sorted({cell.selected_tasks for cell in cells if cell.selected_tasks is not None})
            curves.setdefault((suite, setting), []).append(LearningCurve(learner, points, selected, curve))
        return curves

    # -- tables ------------------------------------------------------------------------------------

    @functools.cached_property
    def _selection_note(self) -> tuple[str, str]:
        """What the accuracy table's metric is, and how the step and state it is read at were chosen."""
        ok = [cell for cell in self.cells if cell.status is CellStatus.OK]
        selected = [cell for cell in ok if cell.selected_step is not None]
        if not selected:
            return "Metric after the final adaptation step", ""
        states = {cell.selection for cell in selected}
        state = ("its best meta-val point" if states == {"best-val"} else "its last state" if states == {"last"}
                 else "its best meta-val point, or its last state where a selection note says why")
        how = (" The val-chosen step is, per seed, the adaptation step with the best mean on the meta-validation "
               f"episodes, for the model state also chosen on meta-validation ({state}); a range where the seeds chose "
               "different steps. Neither step nor state is chosen on test episodes. 'at step S' is the mean after the "
               "curve's last step S: the protocol's, or the learner's own where its protocol fixes its steps.")
        if len(selected) < len(ok):
            how += " Cells written without meta-validation are read at S."
        return "Metric at the val-chosen step", how

    @functools.cached_property
    def _selection_footnotes(self) -> str:
        """A sentence giving, per learner, what its cells say about their selection, or nothing."""
        notes: dict[str, dict[str, None]] = {}
        for group in self.groups.values():
            notes.setdefault(group.learner, {}).update(dict.fromkeys(group.selection_notes))
        described = [f"{learner}: {', '.join(texts)}" for learner, texts in sorted(notes.items()) if texts]
        return f" Selection notes: {'; '.join(described)}." if described else ""

    @functools.cached_property
    def accuracy_table(self) -> Table:
        columns = ["suite", "setting", "learner", "mean ± 95% CI", "val-chosen step", "at step S", "± 95% CI over seeds",
                   "median", "vs best (Wilcoxon, Holm)", "non-finite", "episodes"]
        metric, how = self._selection_note
        table = Table("Accuracy", columns, [], note=(
            f"{metric} over all test episodes and seeds (↑ higher is better, "
            "↓ lower is better); the first interval is over episodes, the second a t interval over the seeds' means "
            "(the spread between independently trained models; – with one seed). The best learner is in bold; every "
            "other learner is compared with it on the same episodes by Wilcoxon's signed-rank test, a diverged "
            "(non-finite) episode counting as worse than every finite one; the p-values of a setting are "
            "Holm-corrected together, n.s. = not significantly different at p < 0.05." + how + self._curve_lengths_note
            + self._selection_footnotes))
        for (suite, setting), groups in self.settings.items():
            metric_name, lower_is_better = self.orientation(suite)
            ranked, comparisons = self.rankings[suite, setting], self.comparisons[suite, setting]
            for group in groups:
                row = [suite, setting, group.learner]
                if group.status_note:
                    table.rows.append(row + [group.status_note] + ["–"] * (len(columns) - 4))
                    continue
                result = group.result
                seed_means, seed_ci = group.seed_interval
                if group is ranked[0]:
                    versus = "best"
                    table.bold.add((len(table.rows), 3))
                else:
                    versus = format_p(comparisons[group.learner])
                table.rows.append(row + [
                    f"{metric_name} {'↓' if lower_is_better else '↑'} {format_number(result['mean'])} ± {format_number(result['ci95'], 2)}",
                    format_steps(group.selected_steps),
                    self._at_last_step(group),
                    "–" if math.isnan(seed_ci) else f"± {format_number(seed_ci, 2)} ({len(seed_means)} seeds)",
                    format_number(result["median"]), versus,
                    f"{int(result['nonfinite'])}/{int(result['n'])}" + (
                        f" (finite mean {format_number(result['finite_mean'])})" if result["nonfinite"] else ""),
                    str(int(result["n"])),
                ])
        return table

    @staticmethod
    def _at_last_step(group: Group) -> str:
        """The mean after the group's last step S, with S and the non-finite episodes there."""
        last = group.curve.iloc[-1]
        diverged = f"; {int(last['nonfinite'])}/{int(last['n'])} non-finite" if last["nonfinite"] else ""
        return f"{format_number(last['mean'])} (S={group.last_step}{diverged})"

    @functools.cached_property
    def _speed_steps(self) -> list[int]:
        """The speed table's steps: ``SPEED_STEPS``, then the 1-2-5 steps beyond them (20, 50, 100, ...) that a curve
        going on past them is scored at."""
        beyond = {int(step) for group in self.groups.values() for step in group.curve["step"]
                  if step > SPEED_STEPS[-1] and _one_two_five(int(step))}
        return [*SPEED_STEPS, *sorted(beyond)]

    @functools.cached_property
    def speed_table(self) -> Table:
        steps = self._speed_steps
        columns = ["suite", "setting", "learner", *(f"step {step}" for step in steps), "steps to 90%", "last step S",
                   "adapt ms/episode", "adapted params"]
        table = Table("Adaptation speed", columns, [], note=(
            "Mean metric after each number of adaptation steps; steps to 90% of the final gain over step 0, "
            "read off the median curve (0 for a single-point curve; for a curve scored at a subset of its steps, the "
            "first scored step that reaches it); the curve's last step S; wall-clock milliseconds to adapt one test "
            "episode through all its S steps (the scoring included); how many numbers adapt to each task (every "
            "weight, a context vector, a head, or 0 where nothing adapts; – where the learner does not say)."
            + self._curve_lengths_note))
        for group in self.groups.values():
            row = [group.suite, group.setting, group.learner]
            if group.status_note:
                table.rows.append(row + [group.status_note] + ["–"] * (len(columns) - 4))
                continue
            _, lower_is_better = self.orientation(group.suite)
            by_step = group.curve.set_index("step")["mean"]
            medians = group.curve["median"].tolist()
            reached = steps_to_fraction_of_gain(medians if lower_is_better else [-m for m in medians],
                                                steps=group.curve["step"].tolist())
            table.rows.append(row + [format_number(by_step.get(step, math.nan)) for step in steps] + [
                "–" if reached is None else str(reached), str(group.last_step),
                format_number(group.adapt_ms_per_episode), group.adapted_parameters])
        return table

    @functools.cached_property
    def cost_table(self) -> Table:
        columns = ["suite", "setting", "learner", "meta-train s", "meta-val s", "tasks seen", "selected at tasks",
                   "peak RSS MiB", "peak CUDA MiB", "device", "threads", "load / cores"]
        table = Table("Cost", columns, [], note=(
            "Meta-training and meta-validation wall-clock seconds (meta-training's without the time scoring "
            "meta-validation) and tasks seen (mean over seeds); the tasks seen at the state the test scored (each "
            "seed's where they differ); peak resident memory of the process and the CUDA allocator's peak during "
            "the cell (the largest over seeds); torch threads per cell; the machine's load while the cell ran "
            "(threads ready to run, its own included; the largest over seeds) against its CPU cores."
            + (f" WARNING: {self.busy_warning}" if self.busy_warning else "")))
        for group in self.groups.values():
            row = [group.suite, group.setting, group.learner]
            if group.status_note:
                table.rows.append(row + [group.status_note] + ["–"] * (len(columns) - 4))
                continue
            ok = sorted(group.ok, key=lambda cell: cell.seed)
            table.rows.append(row + [
                format_number(_mean(cell.meta_train_seconds for cell in ok)),
                format_number(_mean(cell.val_seconds for cell in ok)),
                f"{int(_mean(cell.tasks_seen for cell in ok)):,}",
                _per_seed([cell.selected_tasks for cell in ok]),
                format_number(_largest(cell.peak_rss_mib for cell in ok), 4),
                format_number(_largest(cell.peak_cuda_mib for cell in ok), 4),
                ", ".join(sorted({cell.device for cell in ok})),
                ", ".join(sorted({str(cell.torch_threads) for cell in ok if cell.torch_threads})) or "–",
                _load(ok),
            ])
        return table

    @functools.cached_property
    def busy_warning(self) -> str:
        """A warning naming the cells whose timings were taken while more threads wanted to run than there were
        cores (``is_busy``), or nothing."""
        busy = [f"{cell.learner} {cell.suite} {cell.setting} seed {cell.seed}" for cell in self.cells
                if cell.status is CellStatus.OK and is_busy(cell.machine_load, cell.cpu_cores, cell.meta_train_seconds)]
        if not busy:
            return ""
        shown = ", ".join(busy[:3]) + (f" and {len(busy) - 3} more" if len(busy) > 3 else "")
        return (f"{len(busy)} cell(s) ran on a busy machine (more threads ready to run than cores), so "
                f"their seconds and ms/episode are slower than the machine alone would give: {shown}.")

    @functools.cached_property
    def failures_table(self) -> Table:
        """Every failed cell with its error, also where other seeds of its group succeeded."""
        rows = [[cell.suite, cell.setting, cell.learner, str(cell.seed), cell.error or ""]
                for cell in self.cells if cell.status is CellStatus.FAILED]
        return Table("Failed cells", ["suite", "setting", "learner", "seed", "error"], rows, note=(
            "Cells that raised, reported a non-finite training loss or ran past the cell timeout; their tracebacks "
            "are in cells/<cell>.json. The tables above summarise the other seeds of each group."))

    @functools.cached_property
    def tables(self) -> list[Table]:
        """The tables every format shows: accuracy, speed, cost, and the failed cells if any."""
        failures = [self.failures_table] if self.failures_table.rows else []
        return [self.accuracy_table, self.speed_table, self.cost_table, *failures]

    # -- provenance and machine-readable summary ----------------------------------------------------

    def cell_counts(self) -> str:
        statuses = collections.Counter(cell.status.value for cell in self.cells)
        return ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))

    def _validation_provenance(self, config: dict[str, Any]) -> str:
        """The meta-validation budgets of the finished cells and the run's ``--select``."""
        ok = [cell for cell in self.cells if cell.status is CellStatus.OK]
        budgets = sorted({(cell.val_every, cell.val_episodes) for cell in ok if cell.val_episodes})
        if not budgets:
            return "none (results at the last state and step)"
        return "; ".join(f"{episodes} episodes every {every:,} tasks" for every, episodes in budgets) + (
            f"; --select {config['select']}" if "select" in config else "")

    def _execution_provenance(self) -> str:
        """Which learners meta-trained their seeds together, what their cells noted on how they ran (e.g.
        ``compile=auto``'s choice), and seed groups that fell back to one seed at a time."""
        ok = [cell for cell in self.cells if cell.status is CellStatus.OK]
        together = sorted({cell.learner for cell in ok if cell.seed_group and len(cell.seed_group) > 1})
        parts = [f"seeds meta-trained together, one vectorised model per learner and setting (meta-train s is the "
                 f"group's share): {', '.join(together)}" if together else "one seed at a time"]
        choices: dict[str, set[str]] = collections.defaultdict(set)
        for cell in ok:
            for note in cell.notes or []:
                choices[note.split(":")[1].strip() if note.startswith("compile=auto:") else note].add(cell.learner)
        parts += [f"{'compile=auto ' if choice in ('compiled', 'eager') else ''}{choice}: {', '.join(sorted(learners))}"
                  for choice, learners in sorted(choices.items())]
        fell_back = sorted({cell.learner for cell in ok if cell.seed_group_note})
        if fell_back:
            parts.append(f"seed groups that ran one seed at a time instead (see each cell's seed_group_note): "
                         f"{', '.join(fell_back)}")
        return "; ".join(parts)

    def provenance(self) -> list[tuple[str, str]]:
        """What produced the run: command, seeds, profile, meta-validation, tuning, versions, plugins, git revision,
        device."""
        config, environment = self.run_info.get("config", {}), self.run_info.get("environment", {})
        libraries = environment.get("libraries", {})
        tuned = config.get("tuned")
        items = [
            ("command", " ".join(environment.get("command", [])) or "–"),
            ("profile", str(config.get("profile", "–"))),
            ("seeds", f"0..{config['seeds'] - 1}" if "seeds" in config else "–"),
            ("meta-validation", self._validation_provenance(config)),
            ("execution", self._execution_provenance()),
            ("tuning", (f"tuned on meta-val: {tuned['trials']} trials x {tuned['trial_tasks']} tasks, "
                        f"study {tuned['study']}") if tuned else "none (defaults: see each learner's docstring)"),
            ("started", str(environment.get("started", "–"))),
            ("resumed", "; ".join(f"{resume.get('started')} on {resume.get('host') or '–'} (metabench "
                                  f"{resume.get('metabench') or '–'}, git {resume.get('git_revision') or '–'})"
                                  for resume in environment.get("resumes", [])) or "never"),
            ("status", f"{self.run_info.get('status', '–')} ({self.cell_counts()})"),
            ("metabench", f"{environment.get('metabench', '–')}, git {environment.get('git_revision') or '–'}"),
            ("python", f"{environment.get('python', '–')} on {environment.get('platform', '–')}"),
            ("libraries", ", ".join(f"{name} {version}" for name, version in libraries.items() if version) or "–"),
            ("plugins", ", ".join(f"{name} ({source})" for name, source in environment.get("plugins", {}).items()) or "–"),
            ("device", str(environment.get("device_name", "–"))),
        ]
        return items

    @functools.cached_property
    def summary_frame(self) -> pd.DataFrame:
        """Every (suite, setting, learner, step) with n, mean, ci95, median, non-finite count; the row of each
        group's final step (``final_step``) also holds the group's result at the val-chosen steps: each seed's step
        and selected tasks (JSON lists in seed order), the selection and its notes, the mean, ci95, median and
        non-finite count there, the per-seed means (a JSON list), the t interval over them and the test against the
        best learner (machine-readable; ``--format csv``)."""
        final_step = self.summary.groupby(GROUP)["step"].transform("max") == self.summary["step"]
        tests = pd.DataFrame([(suite, setting, learner, comparison.test, comparison.p_value,
                               comparison.adjusted_p_value, comparison.difference)
                              for (suite, setting), comparisons in self.comparisons.items()
                              for learner, comparison in comparisons.items()], columns=[*GROUP, *TEST_COLUMNS])
        results = pd.DataFrame([self._result_row(key, group) for key, group in self.groups.items() if len(group.final)],
                               columns=[*GROUP, *SELECTION_COLUMNS, *SEED_COLUMNS])
        summary = (self.summary.drop(columns=["std"], errors="ignore").assign(final_step=final_step)
                   .merge(results, on=GROUP, how="left").merge(tests, on=GROUP, how="left"))
        summary.loc[~summary["final_step"], [*SELECTION_COLUMNS, *SEED_COLUMNS, *TEST_COLUMNS]] = None
        return summary

    @staticmethod
    def _result_row(key: GroupKey, group: Group) -> tuple:
        """A group's ``SELECTION_COLUMNS`` and ``SEED_COLUMNS`` for the summary frame."""
        ok = sorted(group.ok, key=lambda cell: cell.seed)
        result = group.result
        return (*key, json.dumps(group.selected_steps), json.dumps([cell.selected_tasks for cell in ok]),
                ",".join(sorted({cell.selection for cell in ok if cell.selection})) or None,
                "; ".join(group.selection_notes) or None, result["mean"], result["ci95"], result["median"],
                int(result["nonfinite"]), json.dumps(group.seed_interval[0]), group.seed_interval[1])
