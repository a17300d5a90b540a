"""Which settings a run's `--shots` and `--ways` select, and the hyper-parameters each cell gets."""
from __future__ import annotations

import types

import pytest
from bench_plugins.suites.sinusoid import Sinusoid

from bench import hookimpl
from bench.config import ConfigError, RunConfig
from bench.grid import plan
from bench.plugins import PluginSource, load_plugins


def test_ways_select_classification_settings_and_leave_regression_suites_whole(registry):
    cells = plan(RunConfig(seeds=1, learners=["maml"], suites=["sinusoid", "omniglot"], ways=[5]), registry)
    assert [(cell.suite.name, cell.setting.name) for cell in cells] == [
        ("sinusoid", "K=5"), ("sinusoid", "K=10"), ("sinusoid", "K=20"),
        ("omniglot", "5-way 1-shot"), ("omniglot", "5-way 5-shot")]


class LoudSine(Sinusoid):
    """A third-party suite whose targets are larger than the built-in sinusoid's: it suggests smaller steps."""

    name = "loud-sine"
    suggestions: dict = {}

    def learner_defaults(self, learner, setting):
        return dict(self.suggestions.get(learner, {}))


def registry_with_loud_sine():
    module = types.ModuleType("loud_sine")
    module.register_suites = hookimpl(lambda register: register("loud-sine", LoudSine))
    return load_plugins(strict=True, extra=[(PluginSource("loud-sine", "tests", "tests", "0"), module)])


def test_a_suite_suggests_hyperparameters_to_any_learner_by_name_below_tune_and_set(monkeypatch):
    registry = registry_with_loud_sine()
    monkeypatch.setattr(LoudSine, "suggestions", {"reptile": {"inner_lr": 0.005, "eval_lr": 0.005}})
    (cell,) = plan(RunConfig(seeds=1, learners=["reptile"], suites=["loud-sine"], shots=[10]), registry)
    assert (cell.hyperparameters.inner_lr, cell.hyperparameters.eval_lr) == (0.005, 0.005)
    (maml,) = plan(RunConfig(seeds=1, learners=["maml"], suites=["loud-sine"], shots=[10]), registry)
    assert maml.hyperparameters == plan(RunConfig(seeds=1, learners=["maml"], suites=["sinusoid"], shots=[10]),
                                        registry)[0].hyperparameters  # no suggestion for maml: its own defaults
    (overridden,) = plan(RunConfig(seeds=1, learners=["reptile"], suites=["loud-sine"], shots=[10],
                                   set={"reptile": {"inner_lr": 0.001}}), registry)
    assert (overridden.hyperparameters.inner_lr, overridden.hyperparameters.eval_lr) == (0.001, 0.005)


def test_a_suggestion_the_learner_cannot_take_is_refused_naming_the_suite(monkeypatch):
    registry = registry_with_loud_sine()
    monkeypatch.setattr(LoudSine, "suggestions", {"reptile": {"step_size": 0.005}})
    with pytest.raises(ConfigError, match="suite 'loud-sine' learner_defaults \\(K=10\\) reptile.step_size: learner "
                                          "'reptile' has no hyper-parameter 'step_size'"):
        plan(RunConfig(seeds=1, learners=["reptile"], suites=["loud-sine"], shots=[10]), registry)
