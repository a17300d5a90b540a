"""The shared episodic protocol: paired fixed episodes, host-side metrics, budgets, failure isolation."""
from __future__ import annotations

import dataclasses
import math
import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid

from bench import hookimpl
from bench.api import SPLITS, Learner, episode_entropy
from bench.cells import CellStatus
from bench.config import RunConfig
from bench.grid import plan
from bench.plugins import PluginSource, load_plugins
from bench.protocol import evaluate
from bench import render
from bench.report import Report
from bench.stats import summarize
from bench.runner import HostContext, run_cells
from bench.store import RunStore


@dataclasses.dataclass
class NoConfig:
    pass


class Recorder(Learner):
    """Predicts zero and records every tensor the host shows it."""

    Config = NoConfig
    log: ClassVar[list]

    def meta_train(self, ctx):
        for batch in ctx.batches(7):
            self.log.append(("train", batch))

    def adapt(self, support, steps):
        self.log.append(("support", support))
        for _ in range(steps + 1):
            yield lambda x: (self.log.append(("query_x", x)), torch.zeros_like(x))[1]


class RecorderA(Recorder):
    """Recorder A."""

    log = []


class RecorderB(Recorder):
    """Recorder B."""

    log = []


class Constant(Learner):
    """Predicts 1.5 everywhere, or infinity at step 2 of episode 0 (a divergence)."""

    Config = NoConfig

    def meta_train(self, ctx):
        list(ctx.batches(10))

    def adapt(self, support, steps):
        episode_zero = bool(torch.equal(support.x, self.first_support)) if hasattr(self, "first_support") else True
        self.first_support = getattr(self, "first_support", support.x)
        for step in range(steps + 1):
            value = math.inf if episode_zero and step == 2 else 1.5
            yield lambda x, value=value: torch.full_like(x, value)


class ShortYield(Constant):
    """Yields one predictor too few."""

    def adapt(self, support, steps):
        for _ in range(steps):
            yield lambda x: torch.zeros_like(x)


class NaNLoss(Constant):
    """Reports a NaN training loss."""

    def meta_train(self, ctx):
        for _ in ctx.batches(5):
            ctx.log(torch.tensor(float("nan")))


class Raises(Constant):
    """Raises in meta-training."""

    def meta_train(self, ctx):
        raise RuntimeError("boom in meta_train")


def registry_with(**learners):
    module = types.ModuleType("test_learners")
    module.register_learners = hookimpl(lambda register: [register(name, cls) for name, cls in learners.items()])
    return load_plugins(strict=True, extra=[(PluginSource("test-learners", "tests", "tests", "0"), module)])


def run(tmp_path, learners, **overrides):
    registry = registry_with(**learners)
    values = dict(learners=list(learners), profile="smoke", shots=[5], episodes=4, tasks=20, steps=3)
    config = RunConfig(**{**values, **overrides})
    store = RunStore(tmp_path / "run")
    store.open({"test": True}, {})
    run_cells(plan(config, registry), config, store, torch.device("cpu"),
              show_progress=False)
    return store


def test_episode_is_a_pure_function_of_its_coordinates():
    setting = Sinusoid().settings()[1]
    first = Sinusoid().sample_episode("test", setting, 7, 42)
    second = Sinusoid().sample_episode("test", setting, 7, 42)
    assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(first, second))
    for other in [("test", 7, 43), ("test", 8, 42), ("val", 7, 42)]:
        different = Sinusoid().sample_episode(other[0], setting, other[1], other[2])
        assert not torch.equal(first.support_x, different.support_x)


def test_split_seeds_are_disjoint_by_construction():
    first_words = {split: {episode_entropy("s", split, "K=5", seed, i)[0] for seed in range(3) for i in range(200)}
                   for split in SPLITS}
    assert first_words == {"train": {0}, "val": {1}, "test": {2}}
    hashes = {episode_entropy("s", "train", "K=5", seed, i)[1] for seed in range(3) for i in range(2000)}
    assert len(hashes) == 6000


def test_sample_batch_equals_stacked_episodes():
    suite = Sinusoid()
    setting = suite.settings()[0]
    batch = suite.sample_batch("train", setting, 1, range(3, 6))
    for offset, index in enumerate(range(3, 6)):
        episode = suite.sample_episode("train", setting, 1, index)
        assert all(torch.equal(b[offset], e) for b, e in zip(batch, episode))


def test_sinusoid_follows_the_maml_paper_distribution():
    suite = Sinusoid()
    setting = suite.settings()[1]
    assert [s.shots for s in suite.settings()] == [5, 10, 20]
    batch = suite.sample_batch("train", setting, 0, range(2000))
    assert batch.support_x.shape == (2000, 10, 1) and batch.query_x.shape == (2000, 10, 1)
    assert batch.support_x.min() >= -5 and batch.support_x.max() <= 5
    amplitude = batch.support_y.abs().amax(dim=(1, 2))
    assert amplitude.max() <= 5.0 and amplitude.mean() > 1.5
    test = suite.sample_episode("test", setting, 0, 0)
    assert test.query_x.shape == (Sinusoid.TEST_QUERY, 1)


def test_two_learners_see_byte_equal_episodes(tmp_path):
    RecorderA.log.clear()
    RecorderB.log.clear()
    run(tmp_path, {"recorder-a": RecorderA, "recorder-b": RecorderB})

    def as_bytes(log):
        return [(kind, [t.numpy().tobytes() for t in (item if isinstance(item, tuple) else (item,))]) for kind, item in log]

    assert as_bytes(RecorderA.log) == as_bytes(RecorderB.log)
    kinds = [kind for kind, _ in RecorderA.log]
    # 20 tasks in batches of 7; the smoke profile's 2 meta-val points (at 14 and 20 tasks) of 10 episodes; 4 test episodes
    assert kinds.count("train") == 3 and kinds.count("support") == 2 * 10 + 4
    supports = [item for kind, item in RecorderA.log if kind == "support"]
    setting = Sinusoid().settings()[0]
    for support, split, index in ((supports[0], "val", 0), (supports[10], "val", 0), (supports[20], "test", 0)):
        episode = Sinusoid().sample_episode(split, setting, 0, index)
        assert torch.equal(support.x, episode.support_x) and torch.equal(support.y, episode.support_y)


def test_meta_training_budget_is_counted_in_tasks():
    suite = Sinusoid()
    context = HostContext(suite, suite.settings()[0], 0, task_budget=20, device=torch.device("cpu"),
                          progress=lambda tasks, loss: None)
    sizes = [batch.support_x.shape[0] for batch in context.batches(7)]
    assert sizes == [7, 7, 6] and context.tasks_seen == 20


def test_host_computes_the_metric_and_keeps_divergence(tmp_path):
    store = run(tmp_path, {"constant": Constant}, val_episodes=0)  # Constant diverges on the first episode it adapts to
    records = store.records()
    setting = Sinusoid().settings()[0]
    for index in range(4):
        episode = Sinusoid().sample_episode("test", setting, 0, index)
        expected = float(((1.5 - episode.query_y.double()) ** 2).mean())
        got = records[(records.episode == index) & (records.step == 0)].metric.item()
        assert got == pytest.approx(expected, rel=1e-6)
    diverged = records[records.step == 2]
    assert np.isinf(diverged.metric).sum() == 1
    summary = summarize(records, ["suite", "setting", "learner"]).set_index("step")
    assert summary.loc[2, "nonfinite"] == 1 and np.isinf(summary.loc[2, "mean"])
    assert np.isfinite(summary.loc[2, "median"]) and np.isfinite(summary.loc[2, "finite_mean"])


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (ShortYield, "adapt() yielded 3 predictors; the protocol needs steps + 1 = 4"),
        (NaNLoss, "NonFiniteLossError: training loss became nan"),
        (Raises, "RuntimeError: boom in meta_train"),
    ],
)
def test_a_failing_learner_fails_only_its_cell(tmp_path, learner, message):
    store = run(tmp_path, {"bad": learner, "constant": Constant})
    cells = {cell.learner: cell for cell in store.cells()}
    assert cells["bad"].status is CellStatus.FAILED and message in cells["bad"].error
    assert "Traceback" in cells["bad"].traceback
    assert cells["constant"].status is CellStatus.OK
    assert set(store.records().learner) == {"constant"}


@pytest.mark.parametrize("learner_name", ["maml", "fomaml", "adaptation-layer", "finetune"])
def test_batched_evaluation_gives_the_same_numbers_as_one_at_a_time(registry, learner_name):
    suite = Sinusoid()
    setting = suite.settings()[1]
    learner_class = registry.learners[learner_name].cls
    learner = learner_class(learner_class.Config())
    learner.meta_train(HostContext(suite, setting, 0, 2_000, torch.device("cpu"), lambda tasks, loss: None))
    assert learner.batched
    one_at_a_time, _ = evaluate(learner, suite, setting, 0, 60, 5, torch.device("cpu"), batched=False)
    batched, _ = evaluate(learner, suite, setting, 0, 60, 5, torch.device("cpu"), batched=True)
    np.testing.assert_allclose(batched, one_at_a_time, rtol=1e-5, atol=1e-7)


def test_a_learner_that_does_not_batch_is_adapted_one_episode_at_a_time():
    """Its adapt(support, steps) never gets the batched keyword, even where batching is the default (regression)."""
    setting, cpu = Sinusoid().settings()[0], torch.device("cpu")
    metric, _ = evaluate(Constant(NoConfig()), Sinusoid(), setting, 0, 3, 2, cpu)
    assert metric.shape == (3, 3)
    with pytest.raises(ValueError, match=r"Constant adapts one task at a time \(it does not set batched = True\)"):
        evaluate(Constant(NoConfig()), Sinusoid(), setting, 0, 3, 2, cpu, batched=True)


class DeclinesSinusoid(Constant):
    """Declines the sinusoid suite, to exercise the "n/a" path."""

    @classmethod
    def unsupported_reason(cls, suite):
        return "needs a regression suite" if suite.name == "sinusoid" else None


def test_a_learner_that_does_not_apply_is_reported_not_applicable(tmp_path):
    store = run(tmp_path, {"declines": DeclinesSinusoid, "constant": Constant})
    cells = {cell.learner: cell for cell in store.cells()}
    assert cells["declines"].status is CellStatus.NOT_APPLICABLE and cells["declines"].error == "needs a regression suite"
    tables = render.text(Report(store.records(), store.cells()))
    assert "n/a: needs a regression suite" in tables
