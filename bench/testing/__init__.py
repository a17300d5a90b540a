"""The conformance kit: prove in one pytest test that a learner or a suite honours the plugin contract.

    from bench.testing import assert_learner_conforms, assert_suite_conforms

    def test_my_learner():
        assert_learner_conforms(MyLearner)           # a few seconds on a CPU

    def test_my_suite():
        assert_suite_conforms(MySuite(data_dir=...))

A learner is meta-trained on the kit's tiny suites (``TinyWaves`` regression, ``TinyBlobs``
classification; those it does not decline) and must: read only the training split while
meta-training and no episodes at all while adapting (so it never sees query labels); yield a
predictor for each of 0..steps with predictions of the right shape; give identical predictions
in two runs with the same seed; beat its untrained self (``LearnerCheck.ratio``, ``.gain``); when
``batched``, give the same numbers batched and one episode at a time; adapt, after ``load_state_dict`` of a
copy of a mid-training ``state_dict()``, as it did when the copy was taken (unless ``state_dict()`` is None);
and declare a ``search_space`` per suite kind whose keys are ``Config`` fields and whose ranges are
well-formed and accepted by the ``Config``. A suite must give
deterministic episodes that change with the index and the seed, ``sample_batch`` equal to stacked
``sample_episode``, disjoint splits (no input example in two splits), the declared shapes and
labels, and a backbone, loss and metric that fit them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.api import Learner, TaskSuite
from bench.testing.learner_checks import LearnerCheck, learner_problems
from bench.testing.suite_checks import SuiteCheck, suite_problems
from bench.testing.suites import TinyBlobs, TinyWaves

__all__ = ["ConformanceError", "LearnerCheck", "SuiteCheck", "TinyBlobs", "TinyWaves", "assert_learner_conforms", "assert_suite_conforms",
           "learner_problems", "suite_problems"]


class ConformanceError(AssertionError):
    """A plugin breaks the contract; the message lists every problem found."""


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        raise ConformanceError(f"{what} does not conform:\n" + "\n".join(f"  - {problem}" for problem in problems))


def assert_learner_conforms(learner_class: type[Learner], suites: Sequence[TaskSuite] | None = None,
                            overrides: dict[str, Any] | None = None, check: LearnerCheck = LearnerCheck()) -> None:
    """Raise ``ConformanceError`` listing every contract breach of ``learner_class``; ``overrides`` are
    hyper-parameters (as ``--set``) for the kit's runs."""
    _raise(f"learner {learner_class.__qualname__}", learner_problems(learner_class, suites, overrides, check))


def assert_suite_conforms(suite: TaskSuite, check: SuiteCheck = SuiteCheck()) -> None:
    """Raise ``ConformanceError`` listing every contract breach of ``suite`` (an instance with its data)."""
    _raise(f"suite '{suite.name}'", suite_problems(suite, check))
