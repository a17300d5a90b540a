"""Model selection's state hand-over: every built-in learner, given back a copy of its mid-training state_dict(),
adapts exactly as it did when the copy was taken; its search space is declared without importing torch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.api import TaskKind
from bench.plugins import load_plugins
from bench.testing import LearnerCheck, TinyBlobs, TinyWaves
from bench.testing.learner_checks import state_hand_over

LEARNERS = {name: registration.cls for name, registration in load_plugins().learners.items()
            if registration.source.distribution == "metabench" and not registration.unavailable_reason}
CASES = [(name, suite) for name in sorted(LEARNERS) for suite in (TinyWaves(), TinyBlobs())
         if not LEARNERS[name].unsupported_reason(suite)]
CHECK = LearnerCheck(short_tasks=100, episodes=4, steps=2)


def _equal(first: list[list[torch.Tensor]], second: list[list[torch.Tensor]]) -> bool:
    return all(torch.equal(x, y) for a, b in zip(first, second, strict=True) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("name", "suite"), CASES, ids=[f"{name}-{suite.name}" for name, suite in CASES])
def test_a_copied_state_loaded_back_restores_adapt(name, suite):
    """Copied (as the host copies) after 50 tasks, trained on to 100, loaded back: the predictions of 50 tasks."""
    hand_over = state_hand_over(LEARNERS[name], suite, suite.settings()[-1], {}, CHECK)
    assert hand_over.at_copy is not None, f"{name} hands over no state"
    assert not _equal(hand_over.final, hand_over.at_copy), "training on changed nothing: the test would prove nothing"
    assert _equal(hand_over.restored, hand_over.at_copy)


def test_search_spaces_import_no_torch():
    """``bench tune`` reads every learner's search space without importing torch."""
    script = ("import sys; from bench.api import TaskKind; from bench.plugins import load_plugins\n"
              "for registration in load_plugins().learners.values():\n"
              "    [registration.cls.search_space(kind) for kind in TaskKind]\n"
              "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_built_in_learner_searches_something_where_it_runs(name):
    """A learner with nothing to search would be tuned with fewer trials' worth of choice than the others."""
    suites = {TaskKind.REGRESSION: TinyWaves(), TaskKind.CLASSIFICATION: TinyBlobs()}
    for kind, suite in suites.items():
        space = LEARNERS[name].search_space(kind)
        assert bool(space) == (LEARNERS[name].unsupported_reason(suite) is None), kind
        assert 2 <= len(space) <= 4 or not space
