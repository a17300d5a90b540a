"""The whole plugin contract: the hooks a metabench plugin may implement."""
from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "metabench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_learners(register: Callable[[str, type], None]) -> None:
    """Register learner classes: ``register("maml", MAML)``. Each must subclass bench.api.Learner."""


@hookspec
def register_suites(register: Callable[[str, type], None]) -> None:
    """Register task-suite classes: ``register("sinusoid", Sinusoid)``. Each must subclass bench.api.TaskSuite."""


@hookspec
def register_executors(register: Callable[[str, type], None]) -> None:
    """Register executors, which run a run's cells: ``register("ray", RayExecutor)``. Each must subclass bench.api.Executor."""


@hookspec
def register_loggers(register: Callable[[str, type], None]) -> None:
    """Register live loggers of meta-training: ``register("tensorboard", TensorBoardLogger)``. Each must subclass
    bench.loggers.Logger."""
