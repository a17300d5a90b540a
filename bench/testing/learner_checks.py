"""Conformance checks of a learner class against the plugin contract, on the kit's tiny suites."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bench.api import Episode, Learner, Setting, Support, TaskSuite
from bench.testing.suites import TinyBlobs, TinyWaves

if TYPE_CHECKING:
    import numpy
    import torch

TEST_SPLIT = "test"


class _WatchedSuite(TaskSuite):
    """A suite that records every episode a learner asks it for, so the kit can tell what the learner read.

    The host's own meta-training stream (training split) is allowed; anything else is a violation.
    """

    def __init__(self, inner: TaskSuite) -> None:
        super().__init__(inner.data_dir)
        self.inner = inner
        self.name, self.kind = inner.name, inner.kind
        self.metric_name, self.lower_is_better = inner.metric_name, inner.lower_is_better
        self.phase = "meta_train"
        self.violations: list[str] = []

    def _watch(self, split: str) -> None:
        if self.phase == "adapt":
            self.violations.append(f"adapt() sampled a '{split}' episode from the suite (it may use the support set only)")
        elif split != "train":
            self.violations.append(f"meta_train() sampled a '{split}' episode (only the training split is allowed)")

    def settings(self) -> list[Setting]:
        return self.inner.settings()

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        self._watch(split)
        return self.inner.sample_episode(split, setting, seed, index)

    def sample_batch(self, split: str, setting: Setting, seed: int, indices: range) -> Episode:
        self._watch(split)
        return self.inner.sample_batch(split, setting, seed, indices)

    def backbone(self, setting: Setting) -> Any:
        return self.inner.backbone(setting)

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return self.inner.loss(prediction, target)

    def metric(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return self.inner.metric(prediction, target)

    def num_classes(self, split: str) -> int:
        return self.inner.num_classes(split)


@dataclasses.dataclass
class _Outcome:
    """What one meta-train + test pass produced: predictions[episode][step] and the metric per episode and step."""

    learner: Learner
    predictions: list[list["torch.Tensor"]]
    metric: "numpy.ndarray"
    violations: list[str]


@dataclasses.dataclass(frozen=True)
class LearnerCheck:
    """How hard the kit tests a learner; the defaults take a few seconds per suite on a CPU."""

    tasks: int = 2000
    """Meta-training budget (tasks seen) of the 'learns' check."""
    short_tasks: int = 200
    """Meta-training budget of the two runs compared for determinism, and of the learner whose batched and
    one-at-a-time numbers are compared (a seed's randomness is drawn from the first batches on)."""
    episodes: int = 40
    steps: int = 5
    seed: int = 0
    ratio: float = 0.5
    """'Learns' for a lower-is-better metric (error): trained <= ratio x untrained (kit's built-ins: 0.2-0.3)."""
    gain: float = 0.1
    """'Learns' for a higher-is-better metric (accuracy): trained >= untrained + gain (kit's built-ins: +0.22 to +0.36)."""
    batched_tolerance: float = 1e-4


def _make(learner_class: type[Learner], suite: TaskSuite, setting: Setting, overrides: dict[str, Any]) -> Learner:
    from bench.config import learner_config

    defaults = learner_class.suite_defaults(suite, setting)
    return learner_class(learner_config(learner_class.__name__, learner_class.Config, {**defaults, **overrides}))


def _test_episodes(suite: TaskSuite, setting: Setting, check: LearnerCheck) -> Iterator[Episode]:
    return (suite.sample_episode(TEST_SPLIT, setting, check.seed, index) for index in range(check.episodes))


def _meta_train_and_test(learner_class: type[Learner], suite: TaskSuite, setting: Setting, tasks: int,
                         overrides: dict[str, Any], check: LearnerCheck) -> _Outcome:
    import numpy as np
    import torch

    from bench.protocol import ProtocolError, learner_steps
    from bench.runner import HostContext

    watched = _WatchedSuite(suite)
    learner = _make(learner_class, watched, setting, overrides)
    context = HostContext(watched, setting, check.seed, tasks, torch.device("cpu"), lambda tasks, loss: None)
    learner.meta_train(context)
    context.check_loss()
    watched.phase = "adapt"
    steps = learner_steps(learner, check.steps)
    predictions, metric = [], []
    for episode in _test_episodes(suite, setting, check):
        curve = []
        for predictor in learner.adapt(Support(episode.support_x, episode.support_y), steps):
            with torch.no_grad():
                curve.append(predictor(episode.query_x).detach().clone())
        if len(curve) != steps + 1:
            raise ProtocolError(f"adapt(support, steps={steps}) yielded {len(curve)} predictors, not steps + 1 = {steps + 1}")
        _check_predictions(suite, setting, episode, curve)
        predictions.append(curve)
        metric.append([float(suite.metric(prediction, episode.query_y)) for prediction in curve])
    return _Outcome(learner, predictions, np.array(metric), list(dict.fromkeys(watched.violations)))


def _check_predictions(suite: TaskSuite, setting: Setting, episode: Episode, curve: list["torch.Tensor"]) -> None:
    from bench.protocol import ProtocolError

    queries = episode.query_x.shape[0]
    expected = (queries, setting.ways) if setting.ways else tuple(episode.query_y.shape)
    for step, prediction in enumerate(curve):
        if tuple(prediction.shape) != expected:
            raise ProtocolError(f"the predictor of step {step} returned shape {tuple(prediction.shape)} "
                                f"for {queries} query inputs; expected {expected}")


def _check_deterministic(first: _Outcome, second: _Outcome, seed: int) -> str | None:
    import torch

    for episode, (a, b) in enumerate(zip(first.predictions, second.predictions)):
        for step, (x, y) in enumerate(zip(a, b)):
            if not torch.equal(x, y):
                difference = (x - y).abs().max().item()
                return (f"two runs with seed {seed} differ (test episode {episode}, step {step}, largest difference "
                        f"{difference:.3g}); draw all randomness from ctx.generator or the seeded backbone")
    return None


def _check_learns(suite: TaskSuite, trained: _Outcome, untrained: _Outcome, check: LearnerCheck) -> str | None:
    import numpy as np

    final_trained, final_untrained = trained.metric[:, -1].mean(), untrained.metric[:, -1].mean()
    if not np.isfinite(final_trained):
        return f"the meta-trained learner's final {suite.metric_name} on '{suite.name}' is not finite"
    target = check.ratio * final_untrained if suite.lower_is_better else final_untrained + check.gain
    if (final_trained <= target) if suite.lower_is_better else (final_trained >= target):
        return None
    return (f"did not learn on '{suite.name}': final {suite.metric_name} {final_trained:.4g} after {check.tasks} tasks, "
            f"{final_untrained:.4g} untrained (needed {'<=' if suite.lower_is_better else '>='} {target:.4g})")


def _check_batched(learner: Learner, suite: TaskSuite, setting: Setting, check: LearnerCheck) -> str | None:
    """Whether a meta-trained learner gives the same numbers adapted in a batch and one episode at a time."""
    import numpy as np
    import torch

    from bench.protocol import evaluate, learner_steps

    steps = learner_steps(learner, check.steps)
    arguments = (learner, suite, setting, check.seed, check.episodes, steps, torch.device("cpu"))
    single, _ = evaluate(*arguments, batched=False)
    batched, _ = evaluate(*arguments, batched=True)
    if np.allclose(single, batched, rtol=check.batched_tolerance, atol=check.batched_tolerance, equal_nan=True):
        return None
    return (f"adapt(batched=True) and adapt() disagree on '{suite.name}': largest metric difference "
            f"{np.nanmax(np.abs(single - batched)):.3g} (tolerance {check.batched_tolerance})")


def learner_problems(learner_class: type[Learner], suites: Sequence[TaskSuite] | None = None,
                     overrides: dict[str, Any] | None = None, check: LearnerCheck = LearnerCheck()) -> list[str]:
    """Every way ``learner_class`` breaks the contract on the given suites (default: the kit's tiny suites it
    supports), one message each; empty when it conforms."""
    from bench.plugins import class_problem

    why = class_problem("learner", "learner", learner_class)
    if why:
        return [why]
    overrides = overrides or {}
    suites = [suite for suite in (suites or (TinyWaves(), TinyBlobs())) if not learner_class.unsupported_reason(suite)]
    if not suites:
        return ["the learner declines every suite it was checked on (unsupported_reason)"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kit's networks are tiny: one thread is fastest, and immune to a busy machine
    try:
        return [problem for suite in suites for problem in _suite_problems(learner_class, suite, overrides, check)]
    finally:
        torch.set_num_threads(threads)


def _suite_problems(learner_class: type[Learner], suite: TaskSuite, overrides: dict[str, Any],
                    check: LearnerCheck) -> list[str]:
    """The checks on one suite, in its last setting (the kit's suites: the most shots)."""
    setting = suite.settings()[-1]
    try:
        trained = _meta_train_and_test(learner_class, suite, setting, check.tasks, overrides, check)
        untrained = _meta_train_and_test(learner_class, suite, setting, 0, overrides, check)
        short = _meta_train_and_test(learner_class, suite, setting, check.short_tasks, overrides, check)
        again = _meta_train_and_test(learner_class, suite, setting, check.short_tasks, overrides, check)
        batched = _check_batched(short.learner, suite, setting, check) if learner_class.batched else None
    except Exception as error:  # report the contract breach, not a traceback
        return [f"on '{suite.name}': {type(error).__name__}: {error}"]
    violations = dict.fromkeys(trained.violations + short.violations + again.violations)
    problems = [*violations, _check_deterministic(short, again, check.seed), _check_learns(suite, trained, untrained, check), batched]
    return [f"on '{suite.name}': {problem}" for problem in problems if problem]
