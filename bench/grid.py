"""The grid of a run: which cells (suite x setting x seed x learner) and with which hyper-parameters.

Resolving the grid validates names, shots and ``--set`` overrides without importing torch, so bad
input is reported at once.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from bench.api import VARY, Setting, TaskSuite, declined
from bench.config import ConfigError, Profile, RunConfig, learner_config
from bench.plugins import Registration, Registry


def setting_fields(setting: Setting) -> dict[str, Any]:
    """A setting's fields as a cell's fingerprint and its saved model read them: ``variable`` only where set, so that
    cells of fixed settings keep the fingerprints they had before it existed."""
    fields = dataclasses.asdict(setting)
    if fields["variable"] is None:
        del fields["variable"]
    return fields


@dataclasses.dataclass(frozen=True)
class Cell:
    suite: Registration
    setting: Setting
    setting_index: int
    learner: Registration
    seed: int
    hyperparameters: Any
    budget: Profile
    """The cell's budget, resolved by ``RunConfig.budget_for``."""
    test_suite: Registration | None = None
    """Cross-domain: the suite whose test episodes this cell scores (``test_setting`` of it) with the model
    meta-trained on ``suite`` (its home cell's: the same cell without ``test_suite``); None: ``suite``'s own."""
    test_setting: Setting | None = None

    @property
    def suite_label(self) -> str:
        """How tables name the cell's suite: ``omniglot``, or ``omniglot→digits`` for a cross-domain cell."""
        return f"{self.suite.name}{CROSS_DOMAIN}{self.test_suite.name}" if self.test_suite else self.suite.name

    @property
    def cell_id(self) -> str:
        suite = f"{self.suite.name}-to-{self.test_suite.name}" if self.test_suite else self.suite.name
        raw = f"{suite}__{self.setting.name}__{self.learner.name}__seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=-]", "-", raw)

    @property
    def home(self) -> Cell:
        """The cell whose meta-trained model this one tests: itself, or for a cross-domain cell the same cell on
        its meta-training suite."""
        return dataclasses.replace(self, test_suite=None, test_setting=None) if self.test_suite else self

    @property
    def label(self) -> str:
        return f"{self.learner.name} | {self.suite_label} {self.setting.name} | seed {self.seed}"


CROSS_DOMAIN = "→"
"""Between the meta-training and the test suite in a cross-domain cell's suite label."""


def home_suite(suite_label: str) -> str:
    """The meta-training suite of a table's suite label: ``omniglot`` of ``omniglot→digits`` and of ``omniglot``."""
    return suite_label.split(CROSS_DOMAIN)[0]


def tuned_key(suite: str, setting: Setting) -> str:
    """How a suite setting is named in the ``tuned`` table: ``"<suite> <setting>"``, e.g. ``"sinusoid K=10"``."""
    return f"{suite} {setting.name}"


def plan(config: RunConfig, registry: Registry) -> list[Cell]:
    """Every cell of the run, in the order they run (suite, setting, seed, learner), with its hyper-parameters.

    A learner's hyper-parameters for a cell are its defaults, then its defaults for that suite
    setting (``Learner.suite_defaults``), then what the suite suggests to it (``TaskSuite.learner_defaults``), then
    the values ``bench tune`` found for that suite setting (the ``tuned`` table), then the run's ``--set`` overrides.
    """
    learners = registry.select("learner", config.learners)
    suites = registry.select("suite", config.suites)
    instances = {suite.name: config.make_suite(suite.cls) for suite in suites}
    _check_suites(config, registry, instances)
    tuned = config.tuned.get("hyperparameters", {})
    for origin, names in (("--set", config.set), ("tuned", tuned)):
        for name in names:
            if name not in registry.learners:
                raise ConfigError(f"{origin} {name}.*: unknown learner '{name}'; valid learners: {', '.join(sorted(registry.learners))}")
    for learner in learners:  # validate every override once, before any suite defaults are mixed in
        learner_config(learner.name, learner.cls.Config, config.set.get(learner.name, {}))
    cells = []
    if config.ways and all(setting.ways is None for instance in instances.values() for setting in instance.settings()):
        raise ConfigError(f"--ways selects nothing: {', '.join(instances)} {'has' if len(instances) == 1 else 'have'} "
                          "no settings with ways (regression suites); drop --ways or add a classification suite")
    for suite in suites:
        instance = instances[suite.name]
        settings = instance.settings()
        chosen = [i for i, setting in enumerate(settings) if selected(setting, config.shots, config.ways)]
        if not chosen:
            offered = ", ".join(setting.name for setting in settings)
            wanted = " and ".join(f"{key} {value}" for key, value in (("shots", config.shots), ("ways", config.ways)) if value)
            raise ConfigError(f"suite '{suite.name}' has no setting with {wanted}; it offers: {offered}")
        for index in chosen:
            setting = settings[index]
            key = tuned_key(suite.name, setting)
            hyperparameters = {}
            for learner in learners:
                found = tuned.get(learner.name, {}).get(key, {})
                learner_config(learner.name, learner.cls.Config, found, origin=f"tuned ({key})")
                suggested = instance.learner_defaults(learner.name, setting)
                learner_config(learner.name, learner.cls.Config, suggested,
                               origin=f"suite '{suite.name}' learner_defaults ({setting.name})")
                hyperparameters[learner.name] = learner_config(
                    learner.name, learner.cls.Config,
                    {**learner.cls.suite_defaults(instance, setting), **suggested, **found,
                     **config.set.get(learner.name, {})},
                )
            budgets = {learner.name: config.budget_for(suite.cls, setting, learner.cls) for learner in learners}
            targets = cross_domain_targets(config, registry, instance, setting)
            for seed in range(config.seeds):
                for learner in learners:
                    home = Cell(suite, setting, index, learner, seed, hyperparameters[learner.name], budgets[learner.name])
                    cells.append(home)
                    cells.extend(dataclasses.replace(home, test_suite=target, test_setting=target_setting)
                                 for target, target_setting in targets)
    return cells


def selected(setting: Setting, shots: list[int | str] | None, ways: list[int] | None) -> bool:
    """Whether ``--shots`` and ``--ways`` keep ``setting``: a number of shots (ways) keeps the fixed settings with
    that many, ``vary`` the variable ones (``Setting.variable``), which any ``--ways`` leaves out (their ways vary);
    a setting without ways (regression) passes ``--ways``."""
    if shots and (VARY if setting.variable is not None else setting.shots) not in shots:
        return False
    return not ways or setting.ways is None or (setting.variable is None and setting.ways in ways)


def _check_suites(config: RunConfig, registry: Registry, instances: dict[str, TaskSuite]) -> None:
    """Refuse a test-only suite among the meta-training suites, a ``--backbone`` one of them does not offer, and a
    ``--test-suites`` suite that matches no setting of any of them."""
    for name, instance in instances.items():
        if instance.test_only:
            raise ConfigError(f"suite '{name}' is test-only (it has no meta-training split): test on it with "
                              f"--test-suites {name} beside --suites SUITE")
        if config.backbone and config.backbone not in instance.backbone_names:
            offered = ", ".join(instance.backbone_names) or "only its standard network, no choice"
            raise ConfigError(f"--backbone {config.backbone}: suite '{name}' does not offer it; it offers: {offered}")
    for target in _test_suites(config, registry):
        if target.name in instances:
            raise ConfigError(f"--test-suites {target.name}: it is also meta-trained on (--suites): its own test "
                              "split is scored anyway")
        test_suite = config.make_suite(target.cls)
        if all(_same_setting(test_suite, instance, setting) is None
               for instance in instances.values() for setting in instance.settings()):
            trained = ", ".join(f"{name} ({', '.join(s.name for s in instance.settings())})"
                                for name, instance in instances.items())
            offered = ", ".join(setting.name for setting in test_suite.settings())
            raise ConfigError(f"--test-suites {target.name}: none of its settings ({offered}) has the kind, ways and "
                              f"shots of a meta-training suite's: {trained}")


def _test_suites(config: RunConfig, registry: Registry) -> list[Registration]:
    """The ``--test-suites`` suites, in the order given; none without the option."""
    return registry.select("suite", config.test_suites) if config.test_suites else []


def _same_setting(test_suite: TaskSuite, instance: TaskSuite, setting: Setting) -> Setting | None:
    """``test_suite``'s first setting of the kind, ways and shots of ``instance``'s ``setting``; None if it has none."""
    if test_suite.kind is not instance.kind:
        return None
    return next((s for s in test_suite.settings()
                 if (s.ways, s.shots, s.variable) == (setting.ways, setting.shots, setting.variable)), None)


def cross_domain_targets(config: RunConfig, registry: Registry, instance: TaskSuite,
                         setting: Setting) -> list[tuple[Registration, Setting]]:
    """The ``--test-suites`` suites that can test a model meta-trained on ``instance``'s ``setting``, each with its
    setting of the same kind, ways and shots."""
    targets = []
    for target in _test_suites(config, registry):
        matching = _same_setting(config.make_suite(target.cls), instance, setting)
        if matching is not None:
            targets.append((target, matching))
    return targets


def describe_plan(cells: list[Cell], suites: dict[str, TaskSuite]) -> list[dict[str, Any]]:
    """One row per (suite, setting, learner) of a plan, what ``bench run --dry-run`` prints: its seeds, budget and
    resolved hyper-parameters, or why the learner declines the suite (``suites``: the run's suite instances)."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for cell in cells:
        key = (cell.suite_label, cell.setting.name, cell.learner.name)
        if key in rows:
            rows[key]["seeds"] += f",{cell.seed}"
            continue
        reason = declined(cell.learner.cls, suites[cell.suite.name], cell.setting)
        budget = cell.budget
        rows[key] = {
            "suite": cell.suite_label, "setting": cell.setting.name, "learner": cell.learner.name,
            "seeds": str(cell.seed),
            "tasks": f"{budget.meta_train_tasks:,}", "test": f"{budget.test_episodes} x {budget.test_steps} steps",
            "meta-val": f"{budget.val_episodes} every {budget.val_every:,}" if budget.val_episodes else "none",
            "hyper-parameters": f"n/a: {reason}" if reason else " ".join(
                f"{name}={value}" for name, value in dataclasses.asdict(cell.hyperparameters).items()),
        }
    return list(rows.values())
