"""Live loggers: plugins that hear each cell's meta-training curve while it runs (TensorBoard, MLflow, ...).

A ``Logger`` class is registered with the ``register_loggers`` hook and chosen with ``bench run --loggers NAME,...``.
The host makes one instance per cell, in the process that runs the cell (the class travels there by name), and
calls ``start``, then ``train`` at every row of the cell's training curve (``cells/<cell>.train.csv``: the same
rows) and ``validation`` at every meta-validation point, in the order they happen, then ``finish``. A cell resumed
from its checkpoint replays the rows and points restored from it first, so every attempt hears the whole curve.
A logger that raises is dropped from its cell with a note (``bench run`` prints it with the cell); the cell goes on.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from bench.api import PluginClass


class Logger(PluginClass):
    """Hears one cell's meta-training as it happens. Every method but ``__init__`` may be left as it is."""

    options: ClassVar[dict[str, str]] = {}
    """The keys ``bench run --logger-option NAME.KEY=VALUE`` may set, each with what it means (and its default)."""

    def __init__(self, run_dir: Path, options: dict[str, str]) -> None:
        """``run_dir``: the run folder (where a logger writes by default); ``options``: the ``--logger-option``
        values given for this logger."""
        self.run_dir, self.options = run_dir, options

    @classmethod
    def prepare(cls, run_dir: Path, options: dict[str, str]) -> None:
        """Called once in the ``bench run`` process, before any cell runs (e.g. to create a database the cells'
        processes then share); raising stops the run with one line."""

    def start(self, cell: dict[str, Any]) -> None:
        """A cell's meta-training begins. ``cell``: ``cell_id``, ``suite``, ``setting``, ``learner``, ``seed``,
        ``hyperparameters`` (a dict), ``task_budget``, ``metric_name``, ``lower_is_better``."""

    def train(self, tasks_seen: int, loss: float) -> None:
        """A row of the training curve: the mean training loss the learner logged since the previous row."""

    def validation(self, tasks_seen: int, means: dict[int, float]) -> None:
        """A meta-validation point: the mean metric over the meta-val episodes after each adaptation step."""

    def finish(self, status: str) -> None:
        """Meta-training ended: ``ok``, or ``failed`` (the learner raised, its loss became non-finite, or it ran past
        the cell timeout)."""


@dataclasses.dataclass(frozen=True)
class LoggerSpec:
    """A logger a run uses, picklable so that it travels to the process that runs a cell."""

    name: str
    cls: type[Logger]
    run_dir: str
    options: dict[str, str] = dataclasses.field(default_factory=dict)


class CellLoggers:
    """One cell's loggers: each event goes to every one; a logger that raises is dropped, with a ``note``."""

    def __init__(self, specs: tuple[LoggerSpec, ...] = (), note: Callable[[str], None] = lambda message: None) -> None:
        self._specs, self._note = specs, note
        self._active: dict[str, Logger] = {}
        self.seconds = 0.0
        """Wall-clock seconds spent in the loggers since ``start``, which the host takes out of meta-training time."""

    def start(self, cell: dict[str, Any]) -> None:
        """Make each logger and start it (before meta-training: not counted in ``seconds``)."""
        for spec in self._specs:
            def begin(spec: LoggerSpec = spec) -> None:
                logger = self._active[spec.name] = spec.cls(Path(spec.run_dir), dict(spec.options))
                logger.start(cell)

            self._call(spec.name, begin)
        self.seconds = 0.0

    def train(self, tasks_seen: int, loss: float) -> None:
        self._each("train", tasks_seen, loss)

    def validation(self, tasks_seen: int, means: dict[int, float]) -> None:
        self._each("validation", tasks_seen, means)

    def finish(self, status: str) -> None:
        self._each("finish", status)
        self._active.clear()

    def _each(self, event: str, *args: Any) -> None:
        for name, logger in list(self._active.items()):
            self._call(name, lambda logger=logger: getattr(logger, event)(*args))

    def _call(self, name: str, call: Callable[[], object]) -> None:
        began = time.perf_counter()
        try:
            call()
        except Exception as error:  # a logger's failure must not cost the cell its result
            self._active.pop(name, None)
            reason = (str(error).splitlines() or [""])[0]
            self._note(f"logger '{name}' failed ({type(error).__name__}: {reason}); the cell went on without it")
        finally:
            self.seconds += time.perf_counter() - began
