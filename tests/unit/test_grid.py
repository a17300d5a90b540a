"""Which settings a run's `--shots` and `--ways` select."""
from __future__ import annotations

from bench.config import RunConfig
from bench.grid import plan


def test_ways_select_classification_settings_and_leave_regression_suites_whole(registry):
    cells = plan(RunConfig(seeds=1, learners=["maml"], suites=["sinusoid", "omniglot"], ways=[5]), registry)
    assert [(cell.suite.name, cell.setting.name) for cell in cells] == [
        ("sinusoid", "K=5"), ("sinusoid", "K=10"), ("sinusoid", "K=20"),
        ("omniglot", "5-way 1-shot"), ("omniglot", "5-way 5-shot")]
