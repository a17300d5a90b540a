"""protonet, and the host's support for learners whose adaptation curve is a single point (step 0 only)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from bench_plugins.learners.protonet import ProtoNet, ProtoNetConfig
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid
from matplotlib.axes import Axes
from torch import nn

from bench import plots, render
from bench.api import Learner, Support
from bench.cells import CellStatus
from bench.compare import Run, compare
from bench.config import RunConfig
from bench.errors import DataError
from bench.grid import plan
from bench.protocol import ProtocolError, evaluate
from bench.report import Report
from bench.runner import HostContext, run_cells
from bench.store import RunStore
from bench.testing import TinyBlobs
from helpers import finished_cell

FIVE_WAY_ONE_SHOT = Omniglot().settings()[0]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("private_cache")


def meta_trained(suite, tasks: int, **overrides) -> ProtoNet:
    learner = ProtoNet(ProtoNetConfig(**overrides))
    learner.meta_train(HostContext(suite, FIVE_WAY_ONE_SHOT, 0, tasks, CPU, lambda tasks, loss: None))
    return learner


# -- the learner -----------------------------------------------------------------------------------


def test_meta_training_beats_the_random_embedding(staged, one_thread):
    """Measured on 20 held-out 5-way 1-shot episodes: random Conv-4 embedding 0.60; after 100 meta-training
    episodes 0.75-0.76 (float rounding differs with the thread count); after 200, 0.81 (40 episodes)."""
    suite = Omniglot(data_dir=staged)
    untrained, _ = evaluate(meta_trained(suite, 0), suite, FIVE_WAY_ONE_SHOT, 0, episodes=20, steps=3, device=CPU)
    trained, _ = evaluate(meta_trained(suite, 100), suite, FIVE_WAY_ONE_SHOT, 0, episodes=20, steps=3, device=CPU)
    assert trained.shape == untrained.shape == (20, 1)  # step 0 only, although 3 steps were asked for
    assert trained.mean() >= untrained.mean() + 0.1, (untrained.mean(), trained.mean())


def test_prototypes_and_logits_match_a_hand_computed_example():
    learner = ProtoNet(ProtoNetConfig())
    learner.embedding, learner.ways = nn.Identity(), 2
    # class 0: (0, 0) and (2, 0) -> prototype (1, 0); class 1: (0, 2) -> prototype (0, 2)
    support = Support(torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.tensor([0, 1, 0]))
    query = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    predictors = list(learner.adapt(support, steps=5))
    assert len(predictors) == 1
    # (1, 1): squared distances 1 and 1 + 1; (3, 0): 4 and 9 + 4
    torch.testing.assert_close(predictors[0](query), torch.tensor([[-1.0, -2.0], [-4.0, -13.0]]))

    other = Support(torch.tensor([[1.0, 1.0], [5.0, 5.0], [3.0, 3.0]]), torch.tensor([1, 0, 1]))
    (batched,) = learner.adapt(Support(*(torch.stack(pair) for pair in zip(support, other))), steps=5, batched=True)
    expected = torch.stack([next(learner.adapt(s, 0))(query) for s in (support, other)])
    torch.testing.assert_close(batched(torch.stack([query, query])), expected)


def test_batched_adaptation_equals_one_at_a_time_with_batch_norm_per_episode(staged, one_thread):
    suite = Omniglot(data_dir=staged)
    learner = meta_trained(suite, 16, meta_batch=4)
    single, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, 6, 2, CPU, batched=False)
    batched, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, 6, 2, CPU, batched=True)
    assert single.shape == batched.shape == (6, 1)
    assert np.abs(batched - single).max() <= 1 / 75 + 1e-9  # at most an arg-max tie flipped by float rounding


def test_learning_rate_halves_every_2000_episodes_unless_switched_off():
    config = ProtoNetConfig()
    assert [config.learning_rate(n) for n in (0, 1999, 2000, 4000)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    assert ProtoNetConfig(lr_halve_every=0).learning_rate(10**6) == 1e-3


def test_meta_training_steps_at_the_halved_rate(staged, one_thread, monkeypatch):
    """The reference's StepLR (stepped as each epoch starts): episodes 0..n-1 at lr, n..2n-1 at lr / 2, ..."""
    rates = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self: rates.append(self.param_groups[0]["lr"]) or step(self))
    meta_trained(Omniglot(data_dir=staged), 5, lr_halve_every=2)
    assert rates == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]


def test_paper_training_ways_and_queries_per_suite_and_shots():
    """Snell et al. 2017: Omniglot 60-way, 5 queries (run_train.py's defaults); mini-ImageNet 30-way (1-shot) or
    20-way (5-shot), 15 queries. Other suites: the setting's."""
    *fixed, variable = Omniglot().settings()
    for setting in fixed:
        assert ProtoNet.suite_defaults(Omniglot(), setting) == {"train_ways": 60, "train_query": 5}
    assert ProtoNet.suite_defaults(Omniglot(), variable) == {}  # vary: its episodes draw their own
    one_shot, five_shot, _ = MiniImageNet().settings()
    assert ProtoNet.suite_defaults(MiniImageNet(), one_shot) == {"train_ways": 30, "train_query": 15}
    assert ProtoNet.suite_defaults(MiniImageNet(), five_shot) == {"train_ways": 20, "train_query": 15}
    assert ProtoNet.suite_defaults(TinyBlobs(), TinyBlobs().settings()[0]) == {}


def test_training_setting_is_the_cells_own_unless_ways_or_queries_differ():
    own = ProtoNetConfig(train_ways=5, train_query=FIVE_WAY_ONE_SHOT.query_for("train"))
    assert ProtoNetConfig().training_setting(FIVE_WAY_ONE_SHOT) is FIVE_WAY_ONE_SHOT
    assert own.training_setting(FIVE_WAY_ONE_SHOT) is FIVE_WAY_ONE_SHOT
    wider = ProtoNetConfig(train_ways=60, train_query=5).training_setting(FIVE_WAY_ONE_SHOT)
    assert (wider.ways, wider.shots, wider.query_for("train"), wider.query) == (60, 1, 5, FIVE_WAY_ONE_SHOT.query)
    assert wider.name == "60-way 1-shot, 5 queries"


class RecordingContext(HostContext):
    """The host context, keeping every meta-training batch it hands out."""

    def batches(self, meta_batch, *, setting=None):
        self.seen = []
        for batch in super().batches(meta_batch, setting=setting):
            self.seen.append(batch)
            yield batch


def test_meta_trains_on_the_papers_wider_episodes_and_tests_at_the_settings_ways(staged, one_thread):
    suite = Omniglot(data_dir=staged)
    learner = ProtoNet(ProtoNetConfig(**ProtoNet.suite_defaults(suite, FIVE_WAY_ONE_SHOT)))
    context = RecordingContext(suite, FIVE_WAY_ONE_SHOT, 0, 2, CPU, lambda tasks, loss: None)
    learner.meta_train(context)
    training = dataclasses.replace(FIVE_WAY_ONE_SHOT, name="60-way 1-shot, 5 queries", ways=60, train_query=5)
    expected = suite.sample_batch("train", training, 0, range(2))  # the host's seeded stream of that setting
    for index, batch in enumerate(context.seen):
        assert batch.support_x.shape[1] == 60 and batch.query_x.shape[1] == 60 * 5
        assert torch.equal(batch.query_y[0], torch.arange(60).repeat_interleave(5))
        assert all(torch.equal(got[0], want[index]) for got, want in zip(batch, expected))
    assert context.notes == ["protonet meta-trains on 60-way episodes with 5 queries per class (tests at 5-way)"]
    (predict,) = learner.adapt(suite.sample_episode("test", FIVE_WAY_ONE_SHOT, 0, 0).support, 0)
    assert predict(suite.sample_episode("test", FIVE_WAY_ONE_SHOT, 0, 0).query_x).shape == (75, 5)


def test_more_training_ways_than_the_split_has_classes_is_an_error(staged):
    with pytest.raises(DataError, match="split 'train' has 110 classes, fewer than the 111 that 111-way"):
        meta_trained(Omniglot(data_dir=staged), 1, train_ways=111)


# -- the protocol: learners that declare fewer adaptation steps ----------------------------------------


@dataclasses.dataclass
class NoConfig:
    pass


class Fixed(Learner):
    """Predicts zero; nothing to adapt (one predictor), recording the steps it was asked for."""

    Config = NoConfig
    max_adaptation_steps = 0
    asked: list[int]

    def meta_train(self, ctx):
        self.asked = []

    def adapt(self, support, steps):
        self.asked.append(steps)
        for _ in range(steps + 1):
            yield torch.zeros_like


class CappedAtTwo(Fixed):
    max_adaptation_steps = 2


class TooMany(Fixed):
    """Declares no adaptation but yields two predictors."""

    def adapt(self, support, steps):
        yield from (torch.zeros_like, torch.zeros_like)


def test_the_protocol_asks_a_learner_for_at_most_its_declared_steps():
    suite, setting = Sinusoid(), Sinusoid().settings()[0]
    for learner_class, requested, recorded in ((Fixed, 3, 1), (CappedAtTwo, 5, 3), (CappedAtTwo, 1, 2)):
        learner = learner_class(NoConfig())
        learner.meta_train(None)
        metric, _ = evaluate(learner, suite, setting, 0, 4, requested, CPU)
        assert metric.shape == (4, recorded) and set(learner.asked) == {recorded - 1}
    with pytest.raises(ProtocolError, match=r"more than steps \+ 1 = 1 predictors"):
        evaluate(TooMany(NoConfig()), suite, setting, 0, 4, 3, CPU)


# -- runs and reports --------------------------------------------------------------------------------


def run_in_process(registry, path: Path, **overrides) -> RunStore:
    config = RunConfig(**{"profile": "smoke", "episodes": 3, "tasks": 8, "steps": 2, **overrides})
    store = RunStore(path)
    store.open({"test": True}, {})
    run_cells(plan(config, registry), config, store, CPU, show_progress=False)
    return store


def rows_by_learner(table) -> dict[str, list[str]]:
    return {row[2]: row for row in table.rows}


def test_a_real_run_records_step_0_for_protonet_and_every_step_for_maml(registry, staged, tmp_path, one_thread):
    store = run_in_process(registry, tmp_path / "run", learners=["protonet", "maml"], suites=["omniglot"],
                           shots=[1], ways=[5], data_dir=str(staged))
    assert {cell.status for cell in store.cells()} == {CellStatus.OK}
    steps = store.records().groupby("learner")["step"].unique()
    assert sorted(steps["protonet"]) == [0] and sorted(steps["maml"]) == [0, 1, 2]
    report = Report(store.records(), store.cells())
    speed = rows_by_learner(report.speed_table)
    assert speed["protonet"][4:8] == ["–"] * 4 and speed["protonet"][8] == "0"  # steps 1, 2, 5, 10; steps to 90%
    assert speed["maml"][4:6] != ["–", "–"] and speed["maml"][6:8] == ["–", "–"]  # steps 5, 10: beyond --steps 2
    assert "protonet (no test-time adaptation: a single point at step 0)" in report.speed_table.note
    assert set(rows_by_learner(report.accuracy_table)) == {"protonet", "maml"}
    assert len(plots.figures(report)) == 3
    run = Run.load(tmp_path / "run")
    compared = rows_by_learner(compare([run, run]))
    assert set(compared) == {"protonet", "maml"} and compared["protonet"][5] == "0, n.s. (p=1)"


def test_protonet_on_a_regression_suite_is_reported_not_applicable(registry, tmp_path):
    store = run_in_process(registry, tmp_path / "run", learners=["protonet", "maml"], suites=["sinusoid"], shots=[5])
    cells = {cell.learner: cell for cell in store.cells()}
    reason = "protonet classifies by nearest class prototype; 'sinusoid' is a regression suite"
    assert cells["protonet"].status is CellStatus.NOT_APPLICABLE and cells["protonet"].error == reason
    assert cells["maml"].status is CellStatus.OK
    assert f"n/a: {reason}" in render.text(Report(store.records(), store.cells()))


EPISODES = 12
RNG = np.random.default_rng(0)
BEST = list(RNG.uniform(0.6, 0.9, EPISODES))


def write_run(path: Path, learners: dict[str, tuple[list[float], int]], test_steps: int = 2) -> Path:
    """A finished accuracy run: per learner (final accuracy per episode, last step); step s scores final - 0.1 (last - s)."""
    store = RunStore(path)
    store.open({"profile": "smoke"}, {"command": ["bench", "run"]})
    for learner, (finals, last) in learners.items():
        records = pd.DataFrame([
            {"suite": "toy", "setting": "5-way", "learner": learner, "seed": 0, "episode": episode, "step": step,
             "metric": value - 0.1 * (last - step)}
            for episode, value in enumerate(finals) for step in range(last + 1)])
        cell = finished_cell("toy", "5-way", learner, test_episodes=len(finals), test_steps=test_steps,
                             metric_name="accuracy", lower_is_better=False, test_episodes_sha256="same",
                             adapt_ms_per_episode=3.0 if last == 0 else 9.0, meta_train_seconds=1.0, tasks_seen=16,
                             peak_rss_mib=500.0)
        store.write_cell(cell.cell_id, cell, records)
    return path


def test_reports_take_step_0_as_protonets_final_and_pair_it_with_other_learners_by_episode(tmp_path, monkeypatch):
    # protonet (step 0 only) beats maml (steps 0..2) by 0.05 on every episode.
    store = RunStore(write_run(tmp_path / "run", {"protonet": (BEST, 0), "maml": ([v - 0.05 for v in BEST], 2)}))
    report = Report(store.records(), store.cells())
    accuracy = rows_by_learner(report.accuracy_table)
    assert accuracy["protonet"][8] == "best"
    assert accuracy["protonet"][3].startswith(f"accuracy ↑ {np.mean(BEST):.3g} ±")
    assert accuracy["maml"][8] == "p=0.00049"  # paired on the 12 episodes: 2 / 2**12 (a family of one test: Holm = p)
    speed = rows_by_learner(report.speed_table)
    assert speed["protonet"][3] == f"{np.mean(BEST):.3g}" and speed["protonet"][4:9] == ["–", "–", "–", "–", "0"]
    assert speed["maml"][8] == "2"
    final = report.summary_frame.query("final_step").set_index("learner")
    assert final.loc["protonet", "step"] == 0 and final.loc["maml", "step"] == 2
    assert final.loc["maml", "vs_best_p_value"] == pytest.approx(2 / 2**12)

    markers = []
    original = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda axes, x, y, **kwargs: markers.append((kwargs["label"], list(x)))
                        or original(axes, x, y, **kwargs))
    figures = plots.figures(report)
    single = [marker for marker in markers if marker[0] != "_nolegend_"]  # not the bar chart's whiskers
    assert single == [("protonet (no adaptation)", [0]), ("protonet (no adaptation)", [3.0])]  # curves; vs. time
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    for text in (render.markdown(report, list(figures)), render.html_document(report, figures), render.latex(report)):
        assert "protonet" in text


def test_compare_matches_protonet_runs_whatever_their_requested_steps(tmp_path):
    before = write_run(tmp_path / "before", {"protonet": (BEST, 0)}, test_steps=2)
    after = write_run(tmp_path / "after", {"protonet": ([v + 0.05 for v in BEST], 0)}, test_steps=10)
    (row,) = compare([Run.load(before), Run.load(after)]).rows
    assert row[2] == "protonet" and row[5] == "0.05, p=0.00049"
