"""A learner may take its own number of adaptation steps (``Learner.adaptation_steps``): the protocol scores its curve
at 0..S and the 1-2-5 steps beyond, the run records those steps, meta-validation chooses among them, and every table
and figure shows curves of different lengths side by side."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.axes import Axes

from bench import hookimpl, plots, render
from bench.api import Learner, Setting
from bench.config import RunConfig
from bench.grid import plan
from bench.plugins import PluginSource, load_plugins
from bench.protocol import ProtocolError, curve_steps
from bench.report import Report
from bench.runner import run_cells
from bench.stats import steps_to_fraction_of_gain
from bench.store import RunStore
from helpers import finished_cell

SETTING = Setting("K=5", shots=5, query=10)


@dataclasses.dataclass
class NoConfig:
    pass


class Own(Learner):
    """Takes 30 steps whatever the protocol asks; predicts 1 - step / 30 (best at its last step on sine targets)."""

    Config = NoConfig
    calls: list[int] = []

    def adaptation_steps(self, setting, steps):
        return 30

    def meta_train(self, ctx):
        list(ctx.batches(10))

    def adapt(self, support, steps):
        self.calls.append(steps)
        for step in range(steps + 1):
            yield lambda x, step=step: torch.full_like(x, 1 - step / 30)


@pytest.mark.parametrize(("last", "steps", "expected"), [
    (10, 10, list(range(11))),
    (200, 10, [*range(11), 20, 50, 100, 200]),
    (700, 10, [*range(11), 20, 50, 100, 200, 500, 700]),
    (30, 3, [0, 1, 2, 3, 5, 10, 20, 30]),
    (200, 0, [0, 1, 2, 5, 10, 20, 50, 100, 200]),
    (0, 10, [0]),
    (2, 10, [0, 1, 2]),
])
def test_a_curve_is_scored_densely_to_the_protocols_steps_then_at_1_2_5_steps_and_its_last(last, steps, expected):
    learner = Own(NoConfig())
    learner.adaptation_steps = lambda setting, asked: last
    assert curve_steps(learner, SETTING, steps) == expected


def test_a_negative_step_count_is_a_protocol_error():
    learner = Own(NoConfig())
    learner.adaptation_steps = lambda setting, asked: -1
    with pytest.raises(ProtocolError, match="returned -1"):
        curve_steps(learner, SETTING, 3)


def test_the_default_takes_the_protocols_steps_capped_by_max_adaptation_steps():
    learner = Own(NoConfig())
    assert Learner.adaptation_steps(learner, SETTING, 7) == 7
    learner.max_adaptation_steps = 2
    assert Learner.adaptation_steps(learner, SETTING, 7) == 2


def test_a_run_records_the_learners_own_steps_and_chooses_among_them(tmp_path):
    module = types.ModuleType("own_learner")
    module.register_learners = hookimpl(lambda register: register("own", Own))
    registry = load_plugins(strict=True, extra=[(PluginSource("own", "tests", "tests", "0"), module)])
    config = RunConfig(learners=["own"], profile="smoke", shots=[5], episodes=4, tasks=20, steps=3)
    store = RunStore(tmp_path / "run")
    store.open({"test": True}, {})
    Own.calls.clear()
    run_cells(plan(config, registry), config, store, torch.device("cpu"), show_progress=False)
    assert set(Own.calls) == {30}  # adapt is asked for the learner's own steps, at meta-val and test alike
    (cell,) = store.cells()
    assert sorted(store.records()["step"].unique()) == [0, 1, 2, 3, 5, 10, 20, 30]
    assert sorted(store.validation()["step"].unique()) == [0, 1, 2, 3, 5, 10, 20, 30]
    assert cell.selected_step == 30 and cell.test_steps == 3


def test_steps_to_90_percent_reads_the_step_of_a_curve_scored_at_a_subset():
    assert steps_to_fraction_of_gain([1.0, 0.8, 0.5, 0.1, 0.0], steps=[0, 1, 2, 100, 200]) == 100
    assert steps_to_fraction_of_gain([1.0, 0.8, 0.5, 0.1, 0.0]) == 3


def write_run(path):
    """maml's curve: steps 0..2 (the protocol's --steps 2); finetune's: its own 200 steps, scored at 0..2, 5, 10, 20,
    50, 100, 200; accuracy 0.9 - 0.4 / (step + 1) on each of 12 episodes (finetune 0.05 above at every step)."""
    store = RunStore(path)
    store.open({"profile": "smoke"}, {"command": ["bench", "run"]})
    for learner, steps, shift, milliseconds in (("maml", [0, 1, 2], 0.0, 4.0),
                                                ("finetune", [0, 1, 2, 5, 10, 20, 50, 100, 200], 0.05, 30.0)):
        records = pd.DataFrame([{"suite": "toy", "setting": "5-way", "learner": learner, "seed": 0, "episode": episode,
                                 "step": step, "metric": 0.9 + shift - 0.4 / (step + 1) + 0.001 * episode}
                                for episode in range(12) for step in steps])
        cell = finished_cell("toy", "5-way", learner, test_episodes=12, test_steps=2, metric_name="accuracy",
                             lower_is_better=False, test_episodes_sha256="same", adapt_ms_per_episode=milliseconds,
                             meta_train_seconds=1.0, tasks_seen=16, peak_rss_mib=500.0)
        store.write_cell(cell.cell_id, cell, records)
    return path


def rows(table):
    return {row[2]: dict(zip(table.columns, row)) for row in table.rows}


def test_reports_show_curves_of_different_lengths_and_the_time_each_took(tmp_path, monkeypatch):
    store = RunStore(write_run(tmp_path / "run"))
    report = Report(store.records(), store.cells())
    speed = rows(report.speed_table)
    assert report.speed_table.columns[3:12] == [f"step {step}" for step in (0, 1, 2, 5, 10, 20, 50, 100, 200)]
    assert speed["maml"]["step 2"] != "–" and [speed["maml"][f"step {s}"] for s in (5, 10, 20, 200)] == ["–"] * 4
    assert speed["finetune"]["step 200"] == f"{0.95 - 0.4 / 201 + 0.0055:.3g}"
    assert speed["finetune"]["steps to 90%"] == "10"  # a scored step: 90% of the final gain 0.398 is 0.358; at 5: 0.333
    assert (speed["finetune"]["last step S"], speed["maml"]["last step S"]) == ("200", "2")
    assert (speed["finetune"]["adapt ms/episode"], speed["maml"]["adapt ms/episode"]) == ("30", "4")
    accuracy = rows(report.accuracy_table)
    assert accuracy["finetune"]["at step S"].endswith("(S=200)") and accuracy["maml"]["at step S"].endswith("(S=2)")
    assert "finetune (200 steps on toy 5-way)" in report.accuracy_table.note
    assert "finetune (200 steps on toy 5-way)" in report.speed_table.note and "maml" not in report.speed_table.note
    final = report.summary_frame.query("final_step").set_index("learner")
    assert (final.loc["finetune", "step"], final.loc["maml", "step"]) == (200, 2)

    scales = []
    original = Axes.set_xscale
    monkeypatch.setattr(Axes, "set_xscale", lambda axes, value, **kwargs: scales.append((value, kwargs))
                        or original(axes, value, **kwargs))
    figures = plots.figures(report)
    assert scales == [("symlog", {"linthresh": 2, "linscale": 1.5})]  # the curves figure: linear to 2, log beyond
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    for text in (render.markdown(report, list(figures)), render.html_document(report, figures), render.latex(report),
                 render.text(report)):
        assert "step 200" in text


def test_curves_of_similar_lengths_keep_a_linear_step_axis(tmp_path, monkeypatch):
    store = RunStore(write_run(tmp_path / "run"))
    records = store.records()
    report = Report(records[records["step"] <= 5], store.cells())
    scales = []
    monkeypatch.setattr(Axes, "set_xscale", lambda axes, value, **kwargs: scales.append(value))
    plots.adaptation_curves(report, "toy", "5-way")
    assert scales == [] and report.speed_table.columns[3:9] == ["step 0", "step 1", "step 2", "step 5", "step 10",
                                                                 "steps to 90%"]
    assert np.isfinite(report.groups["toy", "5-way", "finetune"].curve["mean"]).all()


def test_a_report_of_many_learners_keeps_their_colours_and_names_apart(tmp_path, monkeypatch):
    """15 learners (a cross-domain Omniglot run's): 15 colours, slanted bar labels, the legend beside the curves."""
    store = RunStore(tmp_path / "run")
    store.open({"profile": "smoke"}, {"command": ["bench", "run"]})
    learners = [f"learner-{index:02d}" for index in range(15)]
    for index, learner in enumerate(learners):
        records = pd.DataFrame([{"suite": "toy", "setting": "5-way", "learner": learner, "seed": 0, "episode": episode,
                                 "step": step, "metric": 0.5 + 0.01 * index + 0.1 * step + 0.001 * episode}
                                for episode in range(4) for step in (0, 1, 2)])
        cell = finished_cell("toy", "5-way", learner, test_episodes=4, test_steps=2, metric_name="accuracy",
                             lower_is_better=False, test_episodes_sha256="same", adapt_ms_per_episode=1.0,
                             meta_train_seconds=1.0, tasks_seen=16, peak_rss_mib=500.0)
        store.write_cell(cell.cell_id, cell, records)
    report = Report(store.records(), store.cells())
    assert len({plots._color(report, learner) for learner in learners}) == 15
    ticks, legends = [], []
    original_ticks, original_legend = Axes.set_xticks, Axes.legend
    monkeypatch.setattr(Axes, "set_xticks", lambda axes, *args, **kwargs: ticks.append(kwargs)
                        or original_ticks(axes, *args, **kwargs))
    monkeypatch.setattr(Axes, "legend", lambda axes, *args, **kwargs: legends.append(kwargs)
                        or original_legend(axes, *args, **kwargs))
    plots.final_bars(report, "toy", "5-way")
    plots.adaptation_curves(report, "toy", "5-way")
    assert any(kwargs.get("rotation") == 35 for kwargs in ticks), ticks
    assert legends and all(kwargs.get("bbox_to_anchor") == (1.01, 1.0) for kwargs in legends), legends
