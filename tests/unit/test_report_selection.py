"""The report reads each cell's result at its val-chosen step (``CellMetadata.selected_step``) and draws the
meta-validation learning curves: ranking, tests, tables, summary.csv, figures and ``bench compare``, on cells and
validation rows written here with known numbers."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from bench import plots
from bench.cells import CellMetadata
from bench.compare import Run, compare
from bench.report import Report
from bench.report_files import write_report
from bench.store import RunStore
from helpers import finished_cell

EPISODES = 12
BASE = list(np.random.default_rng(1).uniform(1.0, 2.0, EPISODES))
KEY = ("toy", "K=5")
VERSUS = "vs best (Wilcoxon, Holm)"
CANNOT = "MAML cannot hand over its state (state_dict() is None): scored at its last state"


def shifted(offset: float) -> list[float]:
    return [value + offset for value in BASE]


# "early" is best at step 1 and worse than "late" at the last step (2) on every episode; "late" is best at step 2.
EARLY = {0: shifted(4.0), 1: shifted(0.0), 2: shifted(1.0)}
LATE = {0: shifted(4.0), 1: shifted(3.0), 2: shifted(0.5)}


def cell(learner: str, by_step: dict[int, list[float]], seed: int = 0, **fields) -> tuple[CellMetadata, pd.DataFrame]:
    """A finished MSE cell whose episode e scores ``by_step[s][e]`` after step s."""
    records = pd.DataFrame([
        {"suite": "toy", "setting": "K=5", "learner": learner, "seed": seed, "episode": episode, "step": step,
         "metric": value}
        for step, values in by_step.items() for episode, value in enumerate(values)])
    metadata = finished_cell("toy", "K=5", learner, test_episodes=EPISODES, test_steps=max(by_step), metric_name="MSE",
                             lower_is_better=True, test_episodes_sha256="same", adapt_ms_per_episode=2.0,
                             meta_train_seconds=10.0, tasks_seen=500, **fields)
    return dataclasses.replace(metadata, seed=seed, cell_id=f"{learner}-toy-K=5-{seed}"), records


def report_of(cells: list[tuple[CellMetadata, pd.DataFrame]], **options) -> Report:
    return Report(pd.concat([records for _, records in cells]), [metadata for metadata, _ in cells], **options)


def rows_of(table) -> dict[str, dict[str, str]]:
    return {row[2]: dict(zip(table.columns, row)) for row in table.rows}


SELECTED = {"selection": "best-val", "val_episodes": 100, "val_every": 250}


def test_each_learner_is_ranked_and_tested_at_its_val_chosen_step_not_the_last():
    diverged = {**EARLY, 2: [math.nan, *EARLY[2][1:]]}  # one episode diverges at S, after early's val-chosen step
    report = report_of([cell("early", diverged, selected_step=1, selected_tasks=250, **SELECTED),
                        cell("late", LATE, selected_step=2, selected_tasks=500, **SELECTED)])
    assert [group.learner for group in report.rankings[KEY]] == ["early", "late"]
    table = report.accuracy_table
    rows = rows_of(table)
    assert rows["early"][VERSUS] == "best" and table.bold == {(0, 3)}
    assert rows["late"][VERSUS] == "p=0.00049"  # 0.5 worse than early's step 1 on 12 of 12 episodes: 2 / 2**12
    assert rows["early"]["mean ± 95% CI"].startswith(f"MSE ↓ {np.mean(BASE):.3g} ± ")
    assert rows["early"]["val-chosen step"] == "1" and rows["late"]["val-chosen step"] == "2"
    assert rows["early"]["at step S"] == "inf (S=2; 1/12 non-finite)"  # a NaN episode is diverged: the mean is inf
    assert rows["early"]["non-finite"] == "0/12"
    assert "chosen on meta-validation" in table.note and "Neither step nor state is chosen on test episodes" in table.note
    final = report.summary_frame.query("final_step").set_index("learner")
    assert final.loc["early", "nonfinite"] == 1 and final.loc["early", "selected_nonfinite"] == 0
    assert final.loc["early", "selected_mean"] == pytest.approx(np.mean(BASE))
    assert json.loads(final.loc["early", "selected_steps"]) == [1] and final.loc["early", "selection"] == "best-val"
    assert json.loads(final.loc["early", "seed_means"]) == [pytest.approx(np.mean(BASE))]
    assert final.loc["late", "vs_best_difference"] == pytest.approx(0.5)

    # The same records read at the last step (cells written before meta-validation): late is the best.
    legacy = report_of([cell("early", diverged), cell("late", LATE)])
    assert [group.learner for group in legacy.rankings[KEY]] == ["late", "early"]
    assert rows_of(legacy.accuracy_table)["early"]["val-chosen step"] == "2"


def test_seeds_that_chose_different_steps_are_each_read_at_their_own():
    report = report_of([cell("maml", EARLY, seed=0, selected_step=1, selected_tasks=250, val_seconds=2.0, **SELECTED),
                        cell("maml", EARLY, seed=1, selected_step=2, selected_tasks=500, val_seconds=4.0, **SELECTED)])
    group = report.groups["toy", "K=5", "maml"]
    assert group.selected_steps == [1, 2]
    assert group.seed_interval[0] == [pytest.approx(np.mean(BASE)), pytest.approx(np.mean(BASE) + 1)]
    assert rows_of(report.accuracy_table)["maml"]["val-chosen step"] == "1–2"
    cost = rows_of(report.cost_table)["maml"]
    assert cost["meta-val s"] == "3" and cost["meta-train s"] == "10" and cost["selected at tasks"] == "250 / 500"
    final = report.summary_frame.query("final_step").iloc[0]
    assert json.loads(final["selected_steps"]) == [1, 2] and json.loads(final["selected_tasks"]) == [250, 500]


def test_a_selection_note_is_given_per_learner():
    report = report_of([cell("early", EARLY, selected_step=1, **SELECTED),
                        cell("maml", LATE, selected_step=2, **{**SELECTED, "selection": "last"}, selection_note=CANNOT)])
    note = report.accuracy_table.note
    assert f"Selection notes: maml: {CANNOT}." in note and "or its last state where a selection note says why" in note
    final = report.summary_frame.query("final_step").set_index("learner")
    assert final.loc["maml", "selection_note"] == CANNOT and final.loc["maml", "selection"] == "last"
    assert pd.isna(final.loc["early", "selection_note"])


def validation_rows(seed: int, by_point: dict[int, list[float]], losses: list[float]) -> pd.DataFrame:
    """Meta-val rows of learner "early": at each point (tasks seen), the mean metric after each step."""
    return pd.DataFrame([
        {"suite": "toy", "setting": "K=5", "learner": "early", "seed": seed, "tasks_seen": tasks, "step": step,
         "metric": value, "train_loss": loss}
        for (tasks, means), loss in zip(by_point.items(), losses) for step, value in enumerate(means)])


VALIDATION = pd.concat([
    validation_rows(0, {100: [3.0, 2.0, 2.5], 200: [3.0, 1.0, math.inf], 300: [3.0, 1.5, 1.8]}, [0.9, 0.5, 0.4]),
    validation_rows(1, {100: [3.0, 4.0, 2.0], 200: [3.0, 2.0, 1.0], 300: [math.nan, math.inf, math.inf]}, [1.1, 0.7, 0.2]),
])


def test_the_learning_curve_is_the_best_step_per_point_averaged_over_seeds_with_the_selected_points(monkeypatch):
    cells = [cell("early", EARLY, seed=seed, selected_step=1, selected_tasks=200, **SELECTED) for seed in (0, 1)]
    report = report_of(cells, validation=VALIDATION)
    (curve,) = report.learning_curves[KEY]
    assert curve.learner == "early" and curve.selected_tasks == [200]
    assert curve.points["tasks_seen"].tolist() == [100, 200, 300]
    assert curve.points["train_loss"].tolist() == pytest.approx([1.0, 0.6, 0.3])
    # best steps: (2.0, 2.0) -> 2.0; (1.0 beside an inf, 1.0) -> 1.0; seed 1 has no finite step at 300: a gap
    assert curve.points["metric"].tolist()[:2] == [2.0, 1.0] and math.isnan(curve.points["metric"].iloc[2])

    stars = []
    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda axes, *args, **kwargs: (
        stars.append(list(args[0])) if kwargs.get("marker") == "*" else None) or original(axes, *args, **kwargs))
    figures = plots.figures(report)
    assert figures["toy-K-5-learning.png"].startswith(b"\x89PNG") and stars == [[200]]
    assert "toy-K-5-learning.png" not in plots.figures(report_of(cells))  # no validation rows: no such figure


def test_the_report_files_show_the_learning_curve_when_the_run_has_validation_rows(tmp_path):
    with_rows, without = RunStore(tmp_path / "new"), RunStore(tmp_path / "old")
    for store, validation in ((with_rows, VALIDATION), (without, None)):
        store.open({"profile": "smoke", "seeds": 2, "select": "best-val"}, {"command": ["bench", "run"]})
        for seed in (0, 1):
            metadata, records = cell("early", EARLY, seed=seed, selected_step=1, selected_tasks=200, **SELECTED)
            rows = None if validation is None else validation[validation["seed"] == seed]
            store.write_cell(metadata.cell_id, metadata, records, rows)
        write_report(store)
    markdown = (with_rows.path / "report.md").read_text()
    assert "![toy-K-5-learning.png](figures/toy-K-5-learning.png)" in markdown
    assert (with_rows.path / "figures" / "toy-K-5-learning.png").exists()
    assert (with_rows.path / "report.html").read_text().count('<img alt="toy-K-5-learning.png"') == 1
    assert "100 episodes every 250 tasks; --select best-val" in markdown
    assert "learning" not in (without.path / "report.md").read_text()
    assert not (without.path / "figures" / "toy-K-5-learning.png").exists()


def write_run(path: Path, by_step: dict[int, list[float]], **fields) -> Path:
    store = RunStore(path)
    store.open({"profile": "smoke", "seeds": 1}, {"command": ["bench", "run"]})
    metadata, records = cell("maml", by_step, **fields)
    store.write_cell(metadata.cell_id, metadata, records)
    return path


def test_compare_reads_each_run_at_its_val_chosen_step(tmp_path):
    before = write_run(tmp_path / "before", EARLY, selected_step=1, **SELECTED)
    # 0.25 better at step 1, the same at the last step: at the last step there would be no difference at all
    after = write_run(tmp_path / "after", {**EARLY, 1: shifted(-0.25)}, selected_step=1, **SELECTED)
    table = compare([Run.load(before), Run.load(after)])
    (row,) = table.rows
    assert row[3] == f"{np.mean(BASE):.3g} ± {1.96 * np.std(BASE, ddof=1) / np.sqrt(EPISODES):.2g} (step 1)"
    assert row[5] == "-0.25, p=0.00049" and "val-chosen step" in table.note
    # runs written before meta-validation: both read at their last step, where they are the same
    legacy = compare([Run.load(write_run(tmp_path / "a", EARLY)),
                      Run.load(write_run(tmp_path / "b", {**EARLY, 1: shifted(-0.25)}))])
    assert legacy.rows[0][3].endswith("(step 2)") and legacy.rows[0][5] == "0, n.s. (p=1)"


def test_provenance_says_whether_and_how_the_hyperparameters_were_tuned():
    cells = [cell("early", EARLY, selected_step=1, **SELECTED)]
    tuned = {"study": "results/tune-sinusoid", "trials": 8, "trial_tasks": 5000, "hyperparameters": {"maml": {}}}
    items = dict(report_of(cells, run_info={"config": {"tuned": tuned, "select": "best-val"}}).provenance())
    assert items["tuning"] == "tuned on meta-val: 8 trials x 5000 tasks, study results/tune-sinusoid"
    assert items["meta-validation"] == "100 episodes every 250 tasks; --select best-val"
    items = dict(report_of([cell("early", EARLY)]).provenance())
    assert items["tuning"] == "none (defaults: see each learner's docstring)"
    assert items["meta-validation"] == "none (results at the last state and step)"


def test_an_episode_that_diverges_to_inf_then_nan_stays_diverged_in_every_table_figure_and_compare(tmp_path):
    """An inner loop that overflows writes ``inf`` at one step and NaN (an empty CSV field) at the next: the NaN
    counts as the worst value exactly as the inf does (issue 18), instead of vanishing from the mean and median."""
    diverging = {step: list(values) for step, values in LATE.items()}
    diverging[1][0], diverging[2][0] = math.inf, math.nan
    path = write_run(tmp_path / "run", diverging)
    written = pd.read_csv(path / "cells" / "maml-toy-K=5-0.csv")["metric"]
    assert written.isna().sum() == 1 and np.isinf(written).sum() == 1
    write_report(RunStore(path))
    summary = pd.read_csv(path / "summary.csv")
    by_step = summary[summary["learner"] == "maml"].set_index("step")
    finite = diverging[2][1:]
    for step in (1, 2):
        assert math.isinf(by_step.loc[step, "mean"]) and by_step.loc[step, "nonfinite"] == 1
        assert by_step.loc[step, "finite_mean"] == pytest.approx(np.mean(diverging[step][1:]))
    # the median counts the diverged episode as the largest value (skipping it would take the mean of the middle two)
    assert by_step.loc[2, "median"] == pytest.approx(np.median([*finite, math.inf]))
    report = Report(RunStore(path).records(), RunStore(path).cells())
    assert math.isinf(report.groups[("toy", "K=5", "maml")].final.iloc[0])
    assert list(report.groups[("toy", "K=5", "maml")].curve["nonfinite"]) == [0, 1, 1]
    accuracy = rows_of(report.accuracy_table)["maml"]
    assert "1/12" in " ".join(accuracy.values())
    (row,) = compare([Run.load(path), Run.load(write_run(tmp_path / "other", LATE))]).rows
    assert row[3] == "inf ± – (step 2)" and row[4].endswith("(step 2)") and row[4] != row[3]
