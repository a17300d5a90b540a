"""Meta-validation inside every cell: the points, the state kept at the best one, the step chosen on it."""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid

from bench import hookimpl
from bench.api import Learner
from bench.cells import CellStatus
from bench.config import RunConfig
from bench.grid import plan
from bench.plugins import PluginSource, load_plugins
from bench.runner import run_cells
from bench.store import RunStore
from bench.validation import ValidationPoint


@dataclasses.dataclass
class NoConfig:
    pass


class Drifting(Learner):
    """Predicts a constant that meta-training pushes away from the targets' mean (0): c = tasks seen / 10, so meta-val
    is best at the first point. Adaptation step s predicts c * (1 - s / 2): step 2 predicts 0, the best step."""

    Config = NoConfig

    def meta_train(self, ctx):
        self.c = torch.tensor(0.0)
        for batch in ctx.batches(5):
            self.c = self.c + batch.support_x.shape[0] / 10

    def adapt(self, support, steps):
        for step in range(steps + 1):
            yield lambda x, value=float(self.c) * (1 - step / 2): torch.full_like(x, value)

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state["c"]


class DriftingWithoutState(Drifting):
    """As Drifting, but it cannot hand over its state."""

    def state_dict(self):
        return None


def run(tmp_path, **overrides) -> RunStore:
    module = types.ModuleType("validation_learners")
    module.register_learners = hookimpl(lambda register: [register("drifting", Drifting),
                                                           register("stateless", DriftingWithoutState)])
    registry = load_plugins(strict=True, extra=[(PluginSource("test", "tests", "tests", "0"), module)])
    values = dict(learners=["drifting", "stateless"], profile="smoke", shots=[5], episodes=6, tasks=40, steps=3,
                  val_every=10, val_episodes=8)
    config = RunConfig(**{**values, **overrides})
    store = RunStore(tmp_path / "run")
    store.open({"test": True}, {})
    run_cells(plan(config, registry), config, store, torch.device("cpu"), show_progress=False)
    return store


def constant_mse(split: str, episodes: int, value: float) -> float:
    setting = Sinusoid().settings()[0]
    return float(np.mean([((value - Sinusoid().sample_episode(split, setting, 0, i).query_y.double()) ** 2).mean()
                          for i in range(episodes)]))


def test_best_val_tests_the_state_of_the_best_point_at_its_best_step(tmp_path):
    store = run(tmp_path)
    cells = {cell.learner: cell for cell in store.cells()}
    drifting = cells["drifting"]
    assert drifting.status is CellStatus.OK
    assert (drifting.selection, drifting.selected_tasks, drifting.selected_step) == ("best-val", 10, 2)
    assert drifting.selection_note is None and drifting.val_episodes == 8 and drifting.val_every == 10
    assert drifting.selected_val_metric == pytest.approx(constant_mse("val", 8, 0.0))
    validation = store.validation()
    curve = validation[validation.learner == "drifting"]
    assert sorted(set(curve.tasks_seen)) == [10, 20, 30, 40] and len(curve) == 4 * 4  # 4 points x steps 0..3
    at_first = curve[(curve.tasks_seen == 10) & (curve.step == 0)].metric.item()
    assert at_first == pytest.approx(constant_mse("val", 8, 1.0))  # c = 10 / 10 after 10 tasks
    records = store.records()
    test = records[(records.learner == "drifting") & (records.step == 0)]
    assert test.metric.mean() == pytest.approx(constant_mse("test", 6, 1.0))  # the state after 10 tasks, not 40


def test_a_learner_that_cannot_hand_over_its_state_is_scored_at_its_last_state_and_says_so(tmp_path):
    stateless = next(cell for cell in run(tmp_path).cells() if cell.learner == "stateless")
    assert (stateless.selection, stateless.selected_tasks, stateless.selected_step) == ("last", 40, 2)
    assert "cannot hand over its state" in stateless.selection_note


def test_select_last_keeps_the_last_state_and_still_chooses_the_step(tmp_path):
    store = run(tmp_path, select="last")
    drifting = next(cell for cell in store.cells() if cell.learner == "drifting")
    assert (drifting.selection, drifting.selected_tasks, drifting.selected_step) == ("last", 40, 2)
    records = store.records()
    assert records[(records.learner == "drifting") & (records.step == 0)].metric.mean() == pytest.approx(
        constant_mse("test", 6, 4.0))


def test_without_meta_validation_the_last_state_is_read_at_the_last_step(tmp_path):
    store = run(tmp_path, val_episodes=0)
    drifting = next(cell for cell in store.cells() if cell.learner == "drifting")
    assert (drifting.selection, drifting.selected_tasks, drifting.selected_step) == ("last", 40, 3)
    assert "no meta-validation" in drifting.selection_note and store.validation().empty


def test_a_point_scores_its_best_step_and_a_non_finite_mean_is_the_worst():
    point = ValidationPoint(100, np.array([2.0, math.inf, 0.5, 0.5, math.nan]), 1.0, lower_is_better=True,
                            steps=(0, 1, 2, 3, 4))
    assert point.best_step == 2 and point.score == 0.5  # the fewest steps on ties
    accuracy = ValidationPoint(100, np.array([0.2, math.nan, 0.9]), 1.0, lower_is_better=False, steps=(0, 1, 2))
    assert accuracy.best_step == 2 and accuracy.score == 0.9
    diverged = ValidationPoint(200, np.array([math.nan, math.inf]), 1.0, lower_is_better=True, steps=(0, 1))
    assert diverged.score == math.inf and point.beats(diverged) and not diverged.beats(point)
    assert not point.beats(point)  # the first of equal points stays selected


def test_a_curve_scored_at_a_subset_of_its_steps_chooses_among_those_steps():
    """A learner that takes its own 200 steps is scored at 0..2, 5, 10, ..., 200: the best is read by its step."""
    point = ValidationPoint(100, np.array([0.2, 0.4, 0.5, 0.9, 0.8]), 1.0, lower_is_better=False,
                            steps=(0, 1, 2, 100, 200))
    assert (point.best_index, point.best_step, point.score) == (3, 100, 0.9)


def test_validation_points_do_not_change_meta_training(tmp_path):
    """maml's last state is the same with or without meta-validation points in between (the RNG is forked around
    them and they read only the val split): its test records at --select last are identical."""
    def records(name: str, **overrides):
        config = RunConfig(learners=["maml"], profile="smoke", shots=[5], episodes=5, tasks=150, steps=2,
                           select="last", **overrides)
        registry = load_plugins(strict=True)
        store = RunStore(tmp_path / name)
        store.open({"test": name}, {})
        run_cells(plan(config, registry), config, store, torch.device("cpu"), show_progress=False)
        return store.records()

    validated = records("validated", val_every=25, val_episodes=5)
    plain = records("plain", val_episodes=0)
    assert validated.metric.notna().all() and np.array_equal(validated.metric.to_numpy(), plain.metric.to_numpy())
