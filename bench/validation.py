"""Meta-validation inside a cell: fixed meta-val episodes scored at regular points of meta-training, the best
point's state kept for model selection, and the adaptation step chosen on them.

Meta-val episodes are paired across learners like test episodes (episodes 0..N-1 of the ``val`` split for the
cell's seed) and scored by the same evaluation as the test. A point's *score* is its best step's mean metric, a
non-finite mean counting as the worst; the selected point is the first with the best score (``--select last``: the
last point) and the selected step is that point's best step, the fewest steps on ties.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.api import Learner, Setting, TaskSuite
from bench.protocol import curve_steps, evaluate

VAL_SPLIT = "val"


def _costs(means: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """The means as costs (lower is better), a non-finite mean as +inf: the worst of all."""
    costs = means if lower_is_better else -means
    return np.where(np.isfinite(costs), costs, np.inf)


@dataclasses.dataclass(frozen=True)
class ValidationPoint:
    """The meta-val curve of the learner's state after ``tasks_seen`` tasks."""

    tasks_seen: int
    means: np.ndarray
    """Mean metric over the meta-val episodes after each step of ``steps`` (non-finite kept)."""
    train_loss: float
    """Mean training loss the learner logged since the previous point (NaN when none was)."""
    lower_is_better: bool
    steps: tuple[int, ...]
    """The adaptation steps the curve is scored after (``bench.protocol.curve_steps``), in order."""

    @property
    def best_index(self) -> int:
        """The position in ``steps`` of the best mean (the fewest steps on ties)."""
        return int(np.argmin(_costs(self.means, self.lower_is_better)))

    @property
    def best_step(self) -> int:
        """The step with the best mean (the fewest steps on ties)."""
        return self.steps[self.best_index]

    @property
    def score(self) -> float:
        """The mean at the best step (a non-finite best: +inf when lower is better, -inf otherwise)."""
        value = float(self.means[self.best_index])
        return value if math.isfinite(value) else (math.inf if self.lower_is_better else -math.inf)

    def beats(self, other: ValidationPoint | None) -> bool:
        """Whether this point's score is strictly better than ``other``'s (any point beats None)."""
        if other is None:
            return True
        mine, theirs = _costs(np.array([self.score, other.score]), self.lower_is_better)
        return bool(mine < theirs)


def copy_state(state: Any) -> Any:
    """A deep copy of a learner's state (tensors detached and cloned, on their device)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: copy_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(copy_state(value) for value in state)
    return state


class MetaValidation:
    """Scores one cell's learner on its meta-val episodes every ``every`` tasks and keeps the best point's state."""

    def __init__(self, learner: Learner, suite: TaskSuite, setting: Setting, seed: int, episodes: int, every: int,
                 steps: int, device: torch.device) -> None:
        self.learner, self.suite, self.setting, self.seed = learner, suite, setting, seed
        self.episodes, self.every, self.steps, self.device = episodes, every, steps, device
        self.curve_steps = tuple(curve_steps(learner, setting, steps))
        """The steps each point's curve is scored after (the protocol's ``steps``, or the learner's own)."""
        self.lower_is_better = suite.lower_is_better
        self.points: list[ValidationPoint] = []
        self.best: ValidationPoint | None = None
        self.best_state: Any = None
        """A copy of the learner's state at ``best`` (None when the learner hands over none)."""
        self.seconds = 0.0
        self._next = every

    def due(self, tasks_seen: int) -> bool:
        """Whether a validation point has been reached (one point however far a batch went past it)."""
        return tasks_seen >= self._next

    def score(self, tasks_seen: int, train_loss: float) -> ValidationPoint:
        """Score the learner's current state; keep a copy of it when it is the best so far."""
        began = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metric, _ = evaluate(self.learner, self.suite, self.setting, self.seed, self.episodes, self.steps,
                                 self.device, split=VAL_SPLIT)
        with np.errstate(invalid="ignore"):
            means = metric.mean(axis=0)
        point = ValidationPoint(tasks_seen, means, train_loss, self.lower_is_better, self.curve_steps)
        self.points.append(point)
        if point.beats(self.best):
            self.best = point
            state = self.learner.state_dict()
            self.best_state = None if state is None else copy_state(state)
        self._next = (tasks_seen // self.every + 1) * self.every
        self.seconds += time.perf_counter() - began
        return point

    def frame(self, identity: dict[str, Any]) -> pd.DataFrame:
        """The tidy rows of ``cells/<cell>.val.csv``: ``identity`` columns, then tasks_seen, step, metric, train_loss."""
        rows = [{**identity, "tasks_seen": point.tasks_seen, "step": step, "metric": float(mean),
                 "train_loss": point.train_loss}
                for point in self.points for step, mean in zip(point.steps, point.means)]
        return pd.DataFrame(rows, columns=[*identity, "tasks_seen", "step", "metric", "train_loss"])

    def state(self) -> dict[str, Any]:
        """What a mid-cell checkpoint keeps of the validation so far."""
        return {"points": [[point.tasks_seen, point.means.tolist(), point.train_loss] for point in self.points],
                "best_tasks": None if self.best is None else self.best.tasks_seen, "best_state": self.best_state,
                "seconds": self.seconds}

    def load(self, saved: dict[str, Any]) -> None:
        """Go on from a checkpoint's ``state()``."""
        self.points = [ValidationPoint(tasks, np.array(means, dtype=float), loss, self.lower_is_better,
                                       self.curve_steps)
                       for tasks, means, loss in saved["points"]]
        self.best = next((point for point in self.points if point.tasks_seen == saved["best_tasks"]), None)
        self.best_state, self.seconds = saved["best_state"], saved["seconds"]
        if self.points:
            self._next = (self.points[-1].tasks_seen // self.every + 1) * self.every


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which state of a cell the test scores, and at which step its result is read."""

    mode: str
    """``best-val`` or ``last``: what was done (not necessarily what was asked)."""
    tasks: int
    step: int
    val_metric: float | None
    note: str | None = None


def select(validation: MetaValidation | None, asked: str, tasks_seen: int, steps: int) -> Selection:
    """Choose the state and step a cell is tested at, and hand the chosen state back to the learner; ``steps``: the
    learner's last adaptation step (where a cell without meta-validation is read)."""
    if validation is None or not validation.points:
        return Selection("last", tasks_seen, steps, None, "no meta-validation (--val-episodes 0): the last state, "
                         "read at the last step")
    last = validation.points[-1]
    chosen, note = last, None
    if asked == "best-val" and validation.best is not last:
        if validation.best_state is None:
            note = f"{type(validation.learner).__name__} cannot hand over its state (state_dict() is None): scored at its last state"
        else:
            validation.learner.load_state_dict(validation.best_state)
            chosen = validation.best
    mode = "last" if asked == "last" or note else "best-val"
    return Selection(mode, chosen.tasks_seen, chosen.best_step, float(chosen.means[chosen.best_index]), note)
