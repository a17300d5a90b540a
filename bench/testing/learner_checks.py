"""Conformance checks of a learner class against the plugin contract, on the kit's tiny suites."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bench.api import (
    Choice,
    Episode,
    FloatRange,
    IntRange,
    Learner,
    MetaTrainContext,
    SearchRange,
    SeedGroup,
    Setting,
    Support,
    TaskKind,
    TaskSuite,
    config_fields,
    trains_seeds_together,
)
from bench.testing.suites import TinyBlobs, TinyWaves

if TYPE_CHECKING:
    import numpy
    import torch

    from bench.runner import HostContext

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
    """Meta-training budget of the two runs compared for determinism, of the learner whose batched and
    one-at-a-time numbers are compared (a seed's randomness is drawn from the first batches on), and of the state
    hand-over round trip (``state_dict()`` copied halfway, loaded back at the end)."""
    episodes: int = 40
    steps: int = 5
    seed: int = 0
    ratio: float = 0.5
    """'Learns' for a lower-is-better metric (error): trained <= ratio x untrained (kit's built-ins: 0.2-0.3)."""
    gain: float = 0.1
    """'Learns' for a higher-is-better metric (accuracy): trained >= untrained + gain (kit's built-ins: +0.22 to +0.36)."""
    batched_tolerance: float = 1e-4
    seed_group_tolerance: float = 1e-4
    """A ``SeedGroup`` learner's predictions after meta-training two seeds together against each seed alone
    (``short_tasks``): largest difference relative to the largest prediction (float32 rounding; built-ins: < 1e-6)."""


def _make(learner_class: type[Learner], suite: TaskSuite, setting: Setting, overrides: dict[str, Any]) -> Learner:
    from bench.config import learner_config

    defaults = learner_class.suite_defaults(suite, setting)
    return learner_class(learner_config(learner_class.__name__, learner_class.Config, {**defaults, **overrides}))


def _test_episodes(suite: TaskSuite, setting: Setting, check: LearnerCheck) -> Iterator[Episode]:
    return (suite.sample_episode(TEST_SPLIT, setting, check.seed, index) for index in range(check.episodes))


def _predictions(learner: Learner, suite: TaskSuite, setting: Setting,
                 check: LearnerCheck) -> list[list["torch.Tensor"]]:
    """The learner's predictions on the kit's test episodes after each adaptation step: [episode][step]."""
    import torch

    from bench.protocol import ProtocolError

    steps = learner.adaptation_steps(setting, check.steps)
    predictions = []
    for episode in _test_episodes(suite, setting, check):
        curve = []
        for predictor in learner.adapt(Support(episode.support_x, episode.support_y), steps):
            with torch.no_grad():
                curve.append(predictor(episode.query_x).detach().clone())
        if len(curve) != steps + 1:
            raise ProtocolError(f"adapt(support, steps={steps}) yielded {len(curve)} predictors, not steps + 1 = {steps + 1}")
        _check_predictions(suite, setting, episode, curve)
        predictions.append(curve)
    return predictions


def _context(suite: TaskSuite, setting: Setting, tasks: int, check: LearnerCheck,
             seed: int | None = None) -> "HostContext":
    import torch

    from bench.runner import HostContext

    return HostContext(suite, setting, check.seed if seed is None else seed, tasks, torch.device("cpu"),
                       lambda tasks, loss: None)


def _meta_train_and_test(learner_class: type[Learner], suite: TaskSuite, setting: Setting, tasks: int,
                         overrides: dict[str, Any], check: LearnerCheck, seed: int | None = None) -> _Outcome:
    import numpy as np

    watched = _WatchedSuite(suite)
    learner = _make(learner_class, watched, setting, overrides)
    context = _context(watched, setting, tasks, check, seed)
    learner.meta_train(context)
    context.check_loss()
    watched.phase = "adapt"
    predictions = _predictions(learner, suite, setting, check)
    metric = [[float(suite.metric(prediction, episode.query_y)) for prediction in curve]
              for episode, curve in zip(_test_episodes(suite, setting, check), predictions)]
    return _Outcome(learner, predictions, np.array(metric), list(dict.fromkeys(watched.violations)))


def _check_predictions(suite: TaskSuite, setting: Setting, episode: Episode, curve: list["torch.Tensor"]) -> None:
    from bench.protocol import ProtocolError

    queries = episode.query_x.shape[0]
    expected = (queries, setting.ways) if setting.ways else tuple(episode.query_y.shape)
    for step, prediction in enumerate(curve):
        if tuple(prediction.shape) != expected:
            raise ProtocolError(f"the predictor of step {step} returned shape {tuple(prediction.shape)} "
                                f"for {queries} query inputs; expected {expected}")


def _first_difference(first: list[list["torch.Tensor"]],
                      second: list[list["torch.Tensor"]]) -> tuple[int, int, float] | None:
    """Where two sets of predictions first differ (a NaN equals a NaN): (episode, step, largest difference), or None."""
    import torch

    for episode, (a, b) in enumerate(zip(first, second)):
        for step, (x, y) in enumerate(zip(a, b)):
            if not torch.allclose(x, y, rtol=0, atol=0, equal_nan=True):
                both_nan = x.isnan() & y.isnan()
                return episode, step, (x - y).abs().masked_fill(both_nan, 0).nan_to_num(nan=float("inf")).max().item()
    return None


def _check_deterministic(first: _Outcome, second: _Outcome, seed: int) -> str | None:
    difference = _first_difference(first.predictions, second.predictions)
    if difference is None:
        return None
    episode, step, largest = difference
    return (f"two runs with seed {seed} differ (test episode {episode}, step {step}, largest difference "
            f"{largest:.3g}); draw all randomness from ctx.generator or the seeded backbone")


def _check_learns(suite: TaskSuite, trained: _Outcome, untrained: _Outcome, check: LearnerCheck) -> str | None:
    import numpy as np

    final_trained, final_untrained = trained.metric[:, -1].mean(), untrained.metric[:, -1].mean()
    if not np.isfinite(final_trained):
        return f"the meta-trained learner's final {suite.metric_name} is not finite"
    target = check.ratio * final_untrained if suite.lower_is_better else final_untrained + check.gain
    if (final_trained <= target) if suite.lower_is_better else (final_trained >= target):
        return None
    return (f"did not learn: final {suite.metric_name} {final_trained:.4g} after {check.tasks} tasks, "
            f"{final_untrained:.4g} untrained (needed {'<=' if suite.lower_is_better else '>='} {target:.4g})")


def _check_batched(learner: Learner, suite: TaskSuite, setting: Setting, check: LearnerCheck) -> str | None:
    """Whether a meta-trained learner gives the same numbers adapted in a batch and one episode at a time."""
    import numpy as np
    import torch

    from bench.protocol import evaluate

    arguments = (learner, suite, setting, check.seed, check.episodes, check.steps, torch.device("cpu"))
    single, _ = evaluate(*arguments, batched=False)
    batched, _ = evaluate(*arguments, batched=True)
    if np.allclose(single, batched, rtol=check.batched_tolerance, atol=check.batched_tolerance, equal_nan=True):
        return None
    return (f"adapt(batched=True) and adapt() disagree: largest metric difference "
            f"{np.nanmax(np.abs(single - batched)):.3g} (tolerance {check.batched_tolerance})")


def _check_seed_group(learner_class: type[Learner], suite: TaskSuite, setting: Setting, overrides: dict[str, Any],
                      check: LearnerCheck, alone: list[_Outcome]) -> str | None:
    """Whether ``meta_train_seeds`` on seeds ``check.seed`` and ``check.seed + 1`` leaves each learner as
    ``meta_train`` on that seed alone (``alone``) does."""
    assert issubclass(learner_class, SeedGroup)
    seeds = [check.seed, check.seed + 1]
    learners = [_make(learner_class, suite, setting, overrides) for _ in seeds]
    contexts = [_context(suite, setting, check.short_tasks, check, seed) for seed in seeds]
    learner_class.meta_train_seeds(learners, contexts)
    for seed, learner, context, single in zip(seeds, learners, contexts, alone, strict=True):
        context.check_loss()
        together = _predictions(learner, suite, setting, check)
        scale = max(1.0, max(float(x.abs().max()) for curve in single.predictions for x in curve))
        largest = max(float((x - y).abs().max()) for a, b in zip(together, single.predictions)
                      for x, y in zip(a, b, strict=True))
        if not largest <= check.seed_group_tolerance * scale:
            return (f"meta_train_seeds and meta_train disagree for seed {seed}: largest prediction "
                    f"difference {largest:.3g} (tolerance {check.seed_group_tolerance} x {scale:.3g})")
    return None


@dataclasses.dataclass
class StateHandOver:
    """A state hand-over round trip: predictions when ``state_dict()`` was copied mid-training, at the end of
    meta-training, and after ``load_state_dict(copy)``; all None when the learner hands over no state."""

    tasks: int
    """Tasks seen when the state was copied."""
    at_copy: list[list["torch.Tensor"]] | None
    final: list[list["torch.Tensor"]] | None
    restored: list[list["torch.Tensor"]] | None


class _PausingContext(MetaTrainContext):
    """The host's context, calling ``pause`` once when the learner asks for the batch after ``after`` tasks: where
    the host scores a meta-validation point (the learner has finished its update on every batch it received)."""

    def __init__(self, inner: MetaTrainContext, after: int, pause: Callable[[], None]) -> None:
        self.inner, self.after, self._pause = inner, after, pause
        self.suite, self.setting, self.device = inner.suite, inner.setting, inner.device
        self.generator, self.task_budget = inner.generator, inner.task_budget

    def batches(self, meta_batch: int, *, setting: Setting | None = None) -> Iterator[Episode]:
        seen = 0
        for batch in self.inner.batches(meta_batch, setting=setting):
            yield batch
            seen += batch.support_x.shape[0]
            if self._pause is not None and seen >= self.after:
                pause, self._pause = self._pause, None
                pause()

    def backbone(self) -> Any:
        return self.inner.backbone()

    def log(self, loss: "torch.Tensor") -> None:
        self.inner.log(loss)


def state_hand_over(learner_class: type[Learner], suite: TaskSuite, setting: Setting, overrides: dict[str, Any],
                    check: LearnerCheck) -> StateHandOver:
    """Meta-train for ``check.short_tasks`` tasks, copying ``state_dict()`` (as the host does) halfway; then load
    the copy back. The predictions are on the kit's test episodes."""
    from bench.validation import copy_state

    learner = _make(learner_class, suite, setting, overrides)
    taken: dict[str, Any] = {}

    def pause() -> None:
        state = learner.state_dict()
        if state is not None:
            taken.update(state=copy_state(state), predictions=_predictions(learner, suite, setting, check))

    after = check.short_tasks // 2
    context = _context(suite, setting, check.short_tasks, check)
    learner.meta_train(_PausingContext(context, after, pause))
    context.check_loss()
    if not taken:
        return StateHandOver(after, None, None, None)
    final = _predictions(learner, suite, setting, check)
    learner.load_state_dict(taken["state"])
    return StateHandOver(after, taken["predictions"], final, _predictions(learner, suite, setting, check))


def _check_state_hand_over(hand_over: StateHandOver) -> str | None:
    if hand_over.at_copy is None:
        return None  # no state to hand over: the host scores the last state, and says so
    difference = _first_difference(hand_over.at_copy, hand_over.restored)
    if difference is None:
        return None
    episode, step, largest = difference
    return (f"after load_state_dict() of a copy of state_dict() taken after {hand_over.tasks} tasks, adapt() predicts "
            f"otherwise than it did then (test episode {episode}, step {step}, largest difference {largest:.3g}): "
            f"state_dict() must hold everything adapt() uses, and load_state_dict() copy it back in")


def _range_problem(name: str, value: SearchRange, learner_class: type[Learner]) -> str | None:
    """What is wrong with one dimension of a search space, or None."""
    from bench.config import ConfigError, learner_config

    if isinstance(value, (FloatRange, IntRange)):
        if isinstance(value, IntRange) and not all(isinstance(end, int) for end in (value.low, value.high)):
            return f"'{name}': IntRange ends must be integers, got {value.low!r} and {value.high!r}"
        if not value.low < value.high:
            return f"'{name}': low {value.low!r} must be below high {value.high!r}"
        if value.log and value.low <= 0:
            return f"'{name}': a log-scale range must be positive, got low {value.low!r}"
        candidates = (value.low, value.high)
    elif isinstance(value, Choice):
        if not value.options:
            return f"'{name}': Choice has no options"
        candidates = value.options
    else:
        return f"'{name}': {value!r} is not a FloatRange, IntRange or Choice"
    for candidate in candidates:
        try:
            learner_config(learner_class.__name__, learner_class.Config, {name: candidate}, origin="search_space")
        except ConfigError as error:
            return f"'{name}': {candidate!r}, in its range, is rejected by the Config ({error})"
    return None


def _search_space_problems(learner_class: type[Learner]) -> list[str]:
    """Every way the learner's ``search_space`` breaks the contract, per suite kind."""
    fields = config_fields(learner_class.Config)
    problems = []
    for kind in TaskKind:
        where = f"search_space({kind.value})"
        try:
            space = learner_class.search_space(kind)
        except Exception as error:
            problems.append(f"{where} raised {type(error).__name__}: {error}")
            continue
        if not isinstance(space, dict):
            problems.append(f"{where} returned {type(space).__name__}, not a dict of Config field names to ranges")
            continue
        for name, value in space.items():
            if name not in fields:
                problems.append(f"{where}: '{name}' is not a field of {learner_class.Config.__name__} "
                                f"(fields: {', '.join(fields) or 'none'})")
                continue
            problem = _range_problem(name, value, learner_class)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def learner_problems(learner_class: type[Learner], suites: Sequence[TaskSuite] | None = None,
                     overrides: dict[str, Any] | None = None, check: LearnerCheck = LearnerCheck()) -> list[str]:
    """Every way ``learner_class`` breaks the contract on the given suites (default: the kit's tiny suites it
    supports), one message each; empty when it conforms."""
    from bench.plugins import class_problem

    why = class_problem("learner", "learner", learner_class)
    if why:
        return [why]
    overrides = overrides or {}
    problems = _search_space_problems(learner_class)
    suites = [suite for suite in (suites or (TinyWaves(), TinyBlobs())) if not learner_class.unsupported_reason(suite)]
    if not suites:
        return [*problems, "the learner declines every suite it was checked on (unsupported_reason)"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kit's networks are tiny: one thread is fastest, and immune to a busy machine
    try:
        return problems + [problem for suite in suites
                           for problem in _suite_problems(learner_class, suite, overrides, check)]
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
        hand_over = _check_state_hand_over(state_hand_over(learner_class, suite, setting, overrides, check))
        together = None
        if trains_seeds_together(learner_class):
            next_seed = _meta_train_and_test(learner_class, suite, setting, check.short_tasks, overrides, check,
                                             check.seed + 1)
            together = _check_seed_group(learner_class, suite, setting, overrides, check, [short, next_seed])
    except Exception as error:  # report the contract breach, not a traceback
        return [f"on '{suite.name}': {type(error).__name__}: {error}"]
    violations = dict.fromkeys(trained.violations + short.violations + again.violations)
    problems = [*violations, _check_deterministic(short, again, check.seed),
                _check_learns(suite, trained, untrained, check), batched, hand_over, together]
    return [f"on '{suite.name}': {problem}" for problem in problems if problem]
