"""The grid of a run: which cells (suite x setting x seed x learner) and with which hyper-parameters.

Resolving the grid validates names, shots and ``--set`` overrides without importing torch, so bad
input is reported at once.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from bench.api import Setting
from bench.config import ConfigError, RunConfig, learner_config
from bench.plugins import Registration, Registry


@dataclasses.dataclass(frozen=True)
class Cell:
    suite: Registration
    setting: Setting
    setting_index: int
    learner: Registration
    seed: int

    @property
    def cell_id(self) -> str:
        raw = f"{self.suite.name}__{self.setting.name}__{self.learner.name}__seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=-]", "-", raw)

    @property
    def label(self) -> str:
        return f"{self.learner.name} | {self.suite.name} {self.setting.name} | seed {self.seed}"


def plan(config: RunConfig, registry: Registry) -> list[Cell]:
    """Every cell of the run, in the order they run: suite, setting, seed, learner."""
    learners = registry.select("learner", config.learners)
    cells = []
    for suite in registry.select("suite", config.suites):
        settings = suite.cls().settings()
        chosen = [i for i, setting in enumerate(settings) if not config.shots or setting.shots in config.shots]
        if not chosen:
            offered = sorted({setting.shots for setting in settings})
            raise ConfigError(f"shots: suite '{suite.name}' has no setting with shots {config.shots}; it offers {offered}")
        for index in chosen:
            setting = settings[index]
            for seed in range(config.seeds):
                cells.extend(Cell(suite, setting, index, learner, seed) for learner in learners)
    return cells


def learner_configs(config: RunConfig, registry: Registry) -> dict[str, Any]:
    """The resolved hyper-parameters of every selected learner (validates ``--set`` first)."""
    selected = {registration.name: registration for registration in registry.select("learner", config.learners)}
    for name in config.set:
        if name not in registry.learners:
            raise ConfigError(f"--set {name}.*: unknown learner '{name}'; valid learners: {', '.join(sorted(registry.learners))}")
    return {name: learner_config(name, reg.cls.Config, config.set.get(name, {})) for name, reg in selected.items()}
