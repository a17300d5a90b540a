"""Running cells: meta-training under a shared task budget, then the episodic evaluation.

Each cell runs in isolation: an exception, a non-finite training loss or running past the cell
timeout fails that cell (error and traceback kept in its metadata) and the run goes on. An executor
maps ``CellWork`` over the cells wherever it runs them; every finished cell is written at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.api import (Episode, Executor, Learner, MetaTrainContext, SeedsApart, Setting, TaskSuite, declined,
                       trains_seeds_together)
from bench.cells import CellMetadata, CellStatus
from bench.config import ConfigError, RunConfig
from bench.grid import Cell, setting_fields
from bench.loggers import CellLoggers, LoggerSpec
from bench.machine_load import MachineLoad, cpu_cores
from bench.memory import PeakMemory
from bench.nn.backbones import regularise, regularised_passes
from bench.progress import loss_progress, progress_bar
from bench.protocol import curve_steps, episodes_fingerprint, evaluate
from bench.saved_models import model_file, model_info, save_model
from bench.store import RunStore, atomic_write_bytes, checkpoint_file, config_hash
from bench.threads import cell_threads, network_weights
from bench.validation import MetaValidation, Selection, ValidationPoint, select

TRAIN_SPLIT = "train"
LOSS_CHECK_EVERY = 20
TRAIN_ROWS = 100
"""About how many rows a cell's training curve has, whatever its budget (``TrainingCurve``)."""


class NonFiniteLossError(RuntimeError):
    """A learner reported a NaN or infinite training loss."""


class CellTimeoutError(BaseException):
    """A cell ran longer than ``--cell-timeout``. Not an ``Exception``, as ``KeyboardInterrupt`` is not: a plugin's
    ``except Exception`` (a compile failure's eager fallback, say) must not swallow the host's deadline."""


@contextlib.contextmanager
def deadline(seconds: float | None, what: str = "the cell") -> Iterator[None]:
    """Raise ``CellTimeoutError`` in this thread once ``seconds`` have passed (a timer signal; main thread only)."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise CellTimeoutError("--cell-timeout needs the cell to run in the main thread of its process")

    def expire(signum: int, frame: object) -> None:
        raise CellTimeoutError(f"{what} ran longer than --cell-timeout {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Mid-cell checkpoints: one file per cell, rewritten every ``every`` tasks seen, removed when the cell ends."""

    path: Path
    every: int


class TrainingCurve:
    """A cell's meta-training loss against tasks seen (``cells/<cell>.train.csv``): a row at the first loss logged
    once each multiple of ``every`` tasks is reached (``every`` makes about ``TRAIN_ROWS`` rows of the budget), and
    one when meta-training ends; each row is the mean of the losses logged since the previous one. The losses add up
    on their device: only a row reads the sum (one sync with the device per row)."""

    def __init__(self, task_budget: int) -> None:
        self.every = max(1, -(-task_budget // TRAIN_ROWS))
        self.rows: list[tuple[int, float]] = []
        self._sum: torch.Tensor | float = 0.0
        self._count = 0
        self._next = self.every

    def add(self, loss: torch.Tensor, tasks_seen: int) -> tuple[int, float] | None:
        """Add a logged loss; the row it completes, if any."""
        self._sum = self._sum + loss.detach().float()
        self._count += 1
        return self.end(tasks_seen) if tasks_seen >= self._next else None

    def end(self, tasks_seen: int) -> tuple[int, float] | None:
        """The row at ``tasks_seen`` of the losses logged since the previous row; None when none was."""
        if not self._count:
            return None
        row = (tasks_seen, float(self._sum) / self._count)
        self.rows.append(row)
        self._sum, self._count = 0.0, 0
        self._next = (tasks_seen // self.every + 1) * self.every
        return row

    def state(self) -> dict[str, Any]:
        """What a mid-cell checkpoint keeps of the curve."""
        return {"rows": [list(row) for row in self.rows], "sum": float(self._sum), "count": self._count}

    def load(self, saved: dict[str, Any]) -> None:
        """Go on from a checkpoint's ``state()``."""
        self.rows = [(int(tasks), float(loss)) for tasks, loss in saved["rows"]]
        self._sum, self._count = saved["sum"], saved["count"]
        if self.rows:
            self._next = (self.rows[-1][0] // self.every + 1) * self.every


PointCallback = Callable[[ValidationPoint], bool]
"""Hears of every meta-validation point; returning False stops meta-training there (a pruned tuning trial)."""


class HostContext(MetaTrainContext):
    """The meta-training context: the budgeted episode stream, the seeded backbone, loss checks, checkpoints, the
    meta-validation points (scored when the learner asks for the batch after one), the training curve and the
    loggers that hear it (``bench.loggers``)."""

    def __init__(self, suite: TaskSuite, setting: Setting, seed: int, task_budget: int, device: torch.device,
                 progress: Callable[[int, float | None], None], checkpoints: Checkpoints | None = None,
                 validation: MetaValidation | None = None, on_point: PointCallback | None = None) -> None:
        self.suite, self.setting, self.seed = suite, setting, seed
        self.task_budget, self.device = task_budget, device
        self.generator = torch.Generator().manual_seed(seed)
        self.tasks_seen = 0
        self.resumed_from = 0
        self.validation = validation
        self.stopped = False
        """Whether ``on_point`` stopped meta-training before the budget was spent."""
        self._on_point = on_point
        self._progress = progress
        self._losses_logged = 0
        self._last_loss: torch.Tensor | None = None
        self._loss_sum: torch.Tensor | float = 0.0
        self._losses_since_point = 0
        self._checkpoints = checkpoints
        self._last_checkpoint = 0
        self.curve = TrainingCurve(task_budget)
        self.loggers = CellLoggers()
        """The cell's live loggers (none unless the host sets them)."""
        self._closed = False
        self.notes: list[str] = []
        self.networks: list[torch.nn.Module] = []
        """Every network ``backbone`` built."""

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def restore(self) -> dict[str, Any] | None:
        if self._checkpoints is None or not self._checkpoints.path.exists():
            return None
        # weights_only: tensors and plain containers; nothing in a results folder is ever executed.
        saved = torch.load(self._checkpoints.path, map_location=self.device, weights_only=True)
        self.tasks_seen = self.resumed_from = self._last_checkpoint = saved["tasks_seen"]
        self.generator.set_state(saved["generator"])
        if self.validation is not None and saved.get("validation"):
            self.validation.load(saved["validation"])
            self._loss_sum, self._losses_since_point = saved["loss_since_point"]
        if saved.get("training"):
            self.curve.load(saved["training"])
        self._replay()
        self._progress(self.tasks_seen, None)
        return saved["state"]

    def _replay(self) -> None:
        """Tell the loggers the curve restored from a checkpoint, as it happened (a row before a point at the same
        tasks)."""
        points = self.validation.points if self.validation is not None else []
        events = [(tasks, 0, loss) for tasks, loss in self.curve.rows] + [(point.tasks_seen, 1, point)
                                                                         for point in points]
        for tasks, kind, event in sorted(events, key=lambda event: event[:2]):
            if kind == 0:
                self.loggers.train(tasks, event)
            else:
                self._log_point(event)

    def checkpoint(self, state: Callable[[], dict[str, Any]]) -> None:
        plan = self._checkpoints
        if plan is None or self.tasks_seen - self._last_checkpoint < plan.every or self.tasks_seen >= self.task_budget:
            return
        buffer = io.BytesIO()
        torch.save({"tasks_seen": self.tasks_seen, "generator": self.generator.get_state(), "state": state(),
                    "validation": None if self.validation is None else self.validation.state(),
                    "loss_since_point": [float(self._loss_sum), self._losses_since_point],
                    "training": self.curve.state()}, buffer)
        atomic_write_bytes(plan.path, buffer.getvalue())
        self._last_checkpoint = self.tasks_seen

    def batches(self, meta_batch: int, *, setting: Setting | None = None) -> Iterator[Episode]:
        if meta_batch < 1:
            raise ValueError(f"meta-batch must be positive, got {meta_batch}")
        drawn = setting or self.setting
        if drawn.variable is not None and meta_batch > 1:
            self.note(f"meta-batch {meta_batch} -> 1: the episodes of '{drawn.name}' vary in ways and shots and "
                      "cannot be stacked; one episode a step, as Meta-Dataset trains")
            meta_batch = 1
        while self.tasks_seen < self.task_budget:
            if self.validation is not None and self.tasks_seen and self.validation.due(self.tasks_seen):
                if not self.validate():
                    self.stopped = True
                    return
            indices = range(self.tasks_seen, min(self.tasks_seen + meta_batch, self.task_budget))
            batch = self.suite.sample_batch(TRAIN_SPLIT, drawn, self.seed, indices).to(self.device)
            self.tasks_seen = indices.stop
            yield batch
            self._progress(len(indices), None)
        self.check_loss()

    def backbone(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
            network = self.suite.backbone(self.setting).to(self.device)
        self.networks.append(network)
        return network

    def switch_off_regularisers(self) -> None:
        """Switch off the training-time regularisers of the suite's networks (``bench.nn.backbones.Switched``: the
        dropout and DropBlock of ``resnet12-dropblock``) for the test, whatever the learner left; note where the learner
        never switched them on (it meta-trained the network without them)."""
        networks = [network for network in self.networks if regularise(network, False)]
        if networks and self.tasks_seen and not any(regularised_passes(network) for network in networks):
            self.note("the network's dropout and DropBlock stayed off: this learner does not switch them on "
                      "(bench.nn.backbones.regularise), so it meta-trained without them")

    def log(self, loss: torch.Tensor) -> None:
        self._last_loss = loss
        self._losses_logged += 1
        self._loss_sum = self._loss_sum + loss.detach()
        self._losses_since_point += 1
        row = self.curve.add(loss, self.tasks_seen)
        if row is not None:
            self.loggers.train(*row)
        if self._losses_logged % LOSS_CHECK_EVERY == 0:
            self._progress(0, self.check_loss())

    def validate(self) -> bool:
        """Score a meta-validation point of the learner's current state; False when ``on_point`` says stop."""
        assert self.validation is not None
        train_loss = float(self._loss_sum) / self._losses_since_point if self._losses_since_point else float("nan")
        self._loss_sum, self._losses_since_point = 0.0, 0
        point = self.validation.score(self.tasks_seen, train_loss)
        self._log_point(point)
        return self._on_point is None or self._on_point(point)

    def _log_point(self, point: ValidationPoint) -> None:
        self.loggers.validation(point.tasks_seen, {step: float(mean) for step, mean in zip(point.steps, point.means)})

    def end_curve(self) -> None:
        """Record the training curve's last row (the losses logged since the previous one, if any)."""
        row = self.curve.end(self.tasks_seen)
        if row is not None:
            self.loggers.train(*row)

    def close(self, status: str) -> None:
        """End the training curve and tell the loggers that meta-training ended (``ok`` or ``failed``), once."""
        self.end_curve()
        if not self._closed:
            self._closed = True
            self.loggers.finish(status)

    def check_loss(self) -> float | None:
        """Raise if the latest logged loss is not finite; return it (this syncs with the device)."""
        if self._last_loss is None:
            return None
        value = float(self._last_loss)
        if not np.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} after {self.tasks_seen} tasks")
        return value


def cell_fingerprint(cell: Cell, config: RunConfig) -> str:
    """A hash of everything that determines a cell's numbers: a finished cell is reused only when it matches."""
    budget = cell.budget
    return config_hash({
        "cell": cell.cell_id, "setting": setting_fields(cell.setting), "budget": dataclasses.asdict(budget),
        "select": config.select,
        "hyperparameters": dataclasses.asdict(cell.hyperparameters), "data_dir": config.data_dir,
        "learner_plugin": [cell.learner.source.distribution, cell.learner.source.version],
        "suite_plugin": [cell.suite.source.distribution, cell.suite.source.version],
        # only where set, so that cells of runs from before these options keep their fingerprints
        **({"backbone": config.backbone} if config.backbone else {}),
        **({"test_suite_plugin": [cell.test_suite.source.distribution, cell.test_suite.source.version],
            "test_setting": setting_fields(cell.test_setting)} if cell.test_suite and cell.test_setting else {}),
    })


@dataclasses.dataclass(frozen=True)
class TrainedCell:
    """A cell's learner after meta-training, with its meta-validation."""

    learner: Learner
    validation: MetaValidation | None
    tasks_seen: int
    resumed_from: int
    meta_train_seconds: float
    """Meta-training wall-clock seconds, without the time spent scoring meta-validation and in the loggers."""
    stopped: bool
    """Whether an ``on_point`` callback stopped meta-training before the budget was spent."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the learner said about how it ran (``MetaTrainContext.note``)."""
    training: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """The training curve's rows (``TrainingCurve``): tasks seen, mean training loss."""


def _start(cell: Cell, config: RunConfig, suite: TaskSuite, device: torch.device,
           progress: Callable[[int, float | None], None], checkpoints: Checkpoints | None,
           on_point: PointCallback | None, loggers: tuple[LoggerSpec, ...] = ()) -> tuple[Learner, HostContext]:
    """The cell's learner and its meta-training context (with the meta-validation the budget asks for), its
    ``loggers`` started."""
    budget = cell.budget
    learner: Learner = cell.learner.cls(cell.hyperparameters)
    validation = (MetaValidation(learner, suite, cell.setting, cell.seed, budget.val_episodes, budget.val_every,
                                 budget.test_steps, device)
                  if budget.val_episodes else None)
    context = HostContext(suite, cell.setting, cell.seed, budget.meta_train_tasks, device, progress, checkpoints,
                          validation, on_point)
    if loggers:
        context.loggers = CellLoggers(loggers, context.note)
        context.loggers.start({
            "cell_id": cell.cell_id, **_identity(cell), "hyperparameters": dataclasses.asdict(cell.hyperparameters),
            "task_budget": budget.meta_train_tasks, "metric_name": suite.metric_name,
            "lower_is_better": suite.lower_is_better})
    return learner, context


def _identity(cell: Cell) -> dict[str, Any]:
    """The columns that name a cell in its CSV files."""
    return {"suite": cell.suite_label, "setting": cell.setting.name, "learner": cell.learner.name, "seed": cell.seed}


def _train(learner: Learner, context: HostContext) -> TrainedCell:
    """Meta-train ``learner``, then score meta-validation once more at the end unless already done there."""
    start = time.perf_counter()
    try:
        learner.meta_train(context)
    except BaseException:
        context.close("failed")
        raise
    _end_training(context)
    return _trained(learner, context, time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class MemberFailure:
    """A member of a group that failed on its own (its training loss became non-finite) while the others trained on."""

    error: Exception
    tasks_seen: int
    training: list[tuple[int, float]]
    """Its training curve up to the failure."""


def _train_seed_group(learners: list[Learner], contexts: list[HostContext]) -> list[TrainedCell | MemberFailure]:
    """Meta-train several seeds' learners together (``SeedGroup``); each seed's meta-training seconds are the
    group's divided by the number of seeds. A member whose loss became non-finite fails alone."""
    start = time.perf_counter()
    try:
        type(learners[0]).meta_train_seeds(learners, contexts)
    except BaseException:
        for context in contexts:
            context.close("failed")
        raise
    failures: dict[int, MemberFailure] = {}
    for index, context in enumerate(contexts):
        try:
            _end_training(context)
        except NonFiniteLossError as error:
            failures[index] = MemberFailure(error, context.tasks_seen, context.curve.rows)
    share = (time.perf_counter() - start - sum(_aside(context) for context in contexts)) / len(learners)
    return [failures.get(index) or _trained(learner, context, share + _aside(context))
            for index, (learner, context) in enumerate(zip(learners, contexts, strict=True))]


def _aside(context: HostContext) -> float:
    """Seconds of a context's meta-training that are not meta-training: scoring meta-validation, the loggers."""
    return (context.validation.seconds if context.validation else 0.0) + context.loggers.seconds


def _end_training(context: HostContext) -> None:
    """End the training curve, check the last loss, switch off the network's regularisers, and score meta-validation
    at the end of the budget unless already done there; then tell the loggers how meta-training ended."""
    try:
        context.end_curve()
        context.check_loss()
        context.switch_off_regularisers()
        validation = context.validation
        if validation is not None and not context.stopped and (
                not validation.points or validation.points[-1].tasks_seen != context.tasks_seen):
            context.validate()
    except BaseException:
        context.close("failed")
        raise
    context.close("ok")


def _trained(learner: Learner, context: HostContext, seconds: float) -> TrainedCell:
    """``seconds`` of meta-training, meta-validation and the loggers included (taken out here)."""
    return TrainedCell(learner, context.validation, context.tasks_seen, context.resumed_from,
                       seconds - _aside(context), context.stopped, context.notes, context.curve.rows)


def train_and_validate(cell: Cell, config: RunConfig, device: torch.device, *, show_progress: bool = False,
                       on_point: PointCallback | None = None, checkpoints: Checkpoints | None = None) -> TrainedCell:
    """Meta-train a cell's learner under the run's budget, scoring meta-validation at every point (what ``bench
    tune``'s trials run; nothing here reads a test episode). Raises what the learner raises."""
    suite: TaskSuite = config.make_suite(cell.suite.cls)
    with progress_bar(cell.budget.meta_train_tasks, f"meta-train {cell.label}", "task", show_progress) as bar:
        return _train(*_start(cell, config, suite, device, loss_progress(bar), checkpoints, on_point))


def train_together(cells: list[Cell], config: RunConfig, device: torch.device,
                   on_points: list[PointCallback | None] | None = None,
                   progress: Callable[[int, float | None], None] = lambda tasks, loss: None,
                   checkpoints: Callable[[Cell], Checkpoints | None] = lambda cell: None,
                   loggers: tuple[LoggerSpec, ...] = ()) -> list[TrainedCell | MemberFailure]:
    """Meta-train cells of one suite setting and learner together as one vectorised model (``SeedGroup``): seeds, or
    tuning trials whose hyper-parameters differ in what the learner can vectorise, each with its own meta-validation,
    ``on_point`` and checkpoints; a member whose loss became non-finite comes back as a ``MemberFailure``. Raises
    ``SeedsApart`` when they cannot train together, and what the learner raises. Each member has its own
    ``loggers``."""
    members = start_together(cells, config, device, on_points, progress, checkpoints, loggers)
    return _train_seed_group([learner for learner, _ in members], [context for _, context in members])


def start_together(cells: list[Cell], config: RunConfig, device: torch.device,
                   on_points: list[PointCallback | None] | None = None,
                   progress: Callable[[int, float | None], None] = lambda tasks, loss: None,
                   checkpoints: Callable[[Cell], Checkpoints | None] = lambda cell: None,
                   loggers: tuple[LoggerSpec, ...] = ()) -> list[tuple[Learner, HostContext]]:
    """Each member's learner and host context, ready to meta-train together (``train_together``'s first half). Raises
    ``SeedsApart`` when they cannot train together."""
    learner_class = cells[0].learner.cls
    if not trains_seeds_together(learner_class):
        raise SeedsApart(f"{cells[0].learner.name} does not meta-train several models together")
    suite: TaskSuite = config.make_suite(cells[0].suite.cls)
    return [_start(cell, config, suite, device, progress, checkpoints(cell), on_point, loggers)
            for cell, on_point in zip(cells, on_points or [None] * len(cells), strict=True)]


def _selection_fields(selection: Selection, validation: MetaValidation | None) -> dict:
    return {"selection": selection.mode, "selection_note": selection.note, "selected_tasks": selection.tasks,
            "selected_step": selection.step, "selected_val_metric": selection.val_metric,
            "val_seconds": validation.seconds if validation else 0.0}


CellOutcome = tuple[CellMetadata, pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]
"""A cell's metadata, test records, meta-validation rows (None where it did not finish) and training curve (None where
it has none: a cross-domain cell's is its home cell's)."""


def _metadata(cell: Cell, config: RunConfig, device: torch.device) -> Callable[..., CellMetadata]:
    """The cell's metadata, short of how it ended (the keyword arguments still to give)."""
    budget = cell.budget
    return functools.partial(
        CellMetadata, cell_id=cell.cell_id, suite=cell.suite_label, setting=cell.setting.name,
        test_suite=cell.test_suite.name if cell.test_suite else None,
        backbone=config.make_suite(cell.suite.cls).chosen_backbone(),
        setting_index=cell.setting_index, shots=cell.setting.shots, ways=cell.setting.ways, learner=cell.learner.name,
        seed=cell.seed, hyperparameters=dataclasses.asdict(cell.hyperparameters), device=str(device),
        learner_plugin=dataclasses.asdict(cell.learner.source), suite_plugin=dataclasses.asdict(cell.suite.source),
        task_budget=budget.meta_train_tasks, test_episodes=budget.test_episodes, test_steps=budget.test_steps,
        val_episodes=budget.val_episodes, val_every=budget.val_every, cell_fingerprint=cell_fingerprint(cell, config),
    )


def _failed(cell: Cell, config: RunConfig, device: torch.device, error: BaseException, tasks_seen: int = 0, *,
            training: list[tuple[int, float]] = (), **fields: Any) -> CellOutcome:
    """A failed cell's outcome, with its training curve up to the failure."""
    return _metadata(cell, config, device)(
        status=CellStatus.FAILED, error=f"{type(error).__name__}: {error}",
        traceback="".join(traceback.format_exception(error)), tasks_seen=tasks_seen, **fields), None, None, \
        _training_frame(cell, training)


def _training_frame(cell: Cell, rows: list[tuple[int, float]]) -> pd.DataFrame | None:
    """The tidy rows of ``cells/<cell>.train.csv``: the cell's identity columns, then tasks_seen, train_loss; None for
    a cross-domain cell or a curve without rows."""
    if cell.test_suite is not None or not rows:
        return None
    tasks, losses = zip(*rows)
    return pd.DataFrame({**_identity(cell), "tasks_seen": list(tasks), "train_loss": list(losses)})


def _test(cell: Cell, config: RunConfig, home_suite: TaskSuite, trained: TrainedCell, device: torch.device,
          show_progress: bool) -> Tested:
    """Select the state and step on meta-validation, then score the cell's test episodes (those of ``home_suite``,
    the suite instance it meta-trained on, or for a cross-domain cell its test suite's): the metric per episode and
    step, and the adaptation seconds per episode."""
    budget = cell.budget
    suite, setting = _test_target(cell, config, home_suite)
    selection = select(trained.validation, config.select, trained.tasks_seen,
                       trained.learner.adaptation_steps(setting, budget.test_steps))
    with progress_bar(budget.test_episodes, f"evaluate   {cell.label}", "episode", show_progress) as bar:
        metric, seconds = evaluate(trained.learner, suite, setting, cell.seed, budget.test_episodes,
                                   budget.test_steps, device, on_episodes=bar.update)
    return Tested(cell, suite, setting, selection, metric, seconds)


def _test_target(cell: Cell, config: RunConfig, home_suite: TaskSuite) -> tuple[TaskSuite, Setting]:
    """The suite and setting whose test episodes ``cell`` scores."""
    if cell.test_suite is None:
        return home_suite, cell.setting
    assert cell.test_setting is not None
    return config.make_suite(cell.test_suite.cls), cell.test_setting


@dataclasses.dataclass(frozen=True)
class Tested:
    """A cell's test: where its episodes came from, the selection, the metric per episode and step, and the
    adaptation seconds per episode."""

    cell: Cell
    suite: TaskSuite
    setting: Setting
    selection: Selection
    metric: np.ndarray
    seconds: np.ndarray


def _finished(config: RunConfig, device: torch.device, trained: TrainedCell, tested: Tested, memory: PeakMemory,
              **fields: Any) -> CellOutcome:
    """The outcome of a cell that meta-trained and was tested; the meta-validation rows go with its home cell."""
    cell, suite, metric = tested.cell, tested.suite, tested.metric
    budget = cell.budget
    identity = _identity(cell)
    episodes, steps = np.meshgrid(np.arange(metric.shape[0]), curve_steps(trained.learner, tested.setting,
                                                                          budget.test_steps), indexing="ij")
    records = pd.DataFrame({**identity, "episode": episodes.ravel(), "step": steps.ravel(), "metric": metric.ravel()})
    validation = trained.validation.frame(identity) if trained.validation and cell.test_suite is None else None
    return _metadata(cell, config, device)(
        status=CellStatus.OK, tasks_seen=trained.tasks_seen, resumed_from_tasks=trained.resumed_from,
        meta_train_seconds=trained.meta_train_seconds, **_selection_fields(tested.selection, trained.validation),
        adapt_ms_per_episode=float(tested.seconds.mean() * 1000),
        adapted_parameters=trained.learner.adapted_parameter_count(), metric_name=suite.metric_name,
        lower_is_better=suite.lower_is_better, **memory.as_dict(), notes=trained.notes or None,
        test_episodes_sha256=episodes_fingerprint(suite, tested.setting, cell.seed, budget.test_episodes), **fields,
    ), records, validation, _training_frame(cell, trained.training)


def _test_each(cells: list[Cell], config: RunConfig, home_suite: TaskSuite, trained: TrainedCell, device: torch.device,
               show_progress: bool, models_dir: Path | None = None,
               **fields: Any) -> list[Callable[[PeakMemory], CellOutcome]]:
    """Test one meta-trained model on each of ``cells`` (a home cell and its cross-domain cells): how to finish each
    once the peak memory is known; with ``models_dir`` (``--save-models``), the home cell's tested model is saved
    there. A test that fails fails its cell only; running past the deadline fails them all."""
    finish: list[Callable[[PeakMemory], CellOutcome]] = []
    for cell in cells:
        try:
            tested = _test(cell, config, home_suite, trained, device, show_progress)
        except Exception as error:  # a test that fails fails its cell only (a timeout is no Exception: all fail)
            failed = _failed(cell, config, device, error, trained.tasks_seen, training=trained.training, **fields)
            finish.append(lambda memory, failed=failed: failed)
            continue
        if models_dir is not None and cell.test_suite is None:
            trained = _saved(models_dir, tested, trained, config)
        finish.append(functools.partial(_finished, config, device, trained, tested, **fields))
    return finish


def _saved(models_dir: Path, tested: Tested, trained: TrainedCell, config: RunConfig) -> TrainedCell:
    """Save the model ``tested`` scored (``--save-models``); ``trained`` with a note where it cannot be saved."""
    cell = tested.cell
    note = save_model(model_file(models_dir, cell.cell_id), trained.learner,
                      model_info(cell, cell_fingerprint(cell, config), tested.selection))
    return dataclasses.replace(trained, notes=[*trained.notes, note]) if note else trained


def _with_targets(home: Cell, cells: list[Cell]) -> list[Cell]:
    """``home`` and the cross-domain cells among ``cells`` that test its model."""
    return [home, *(cell for cell in cells if cell.test_suite is not None and cell.home == home)]


def run_cell(cell: Cell, config: RunConfig, device: torch.device, show_progress: bool,
             timeout: float | None = None, checkpoints: Checkpoints | None = None, cross: tuple[Cell, ...] = (),
             models_dir: Path | None = None, loggers: tuple[LoggerSpec, ...] = (), **fields: Any) -> list[CellOutcome]:
    """Meta-train one cell with meta-validation, select its state and step on meta-val, then evaluate it on its
    test episodes and on those of each ``cross``-domain cell of it, within ``timeout`` seconds, from its checkpoint
    if there is one: the outcome of the cell, then of each cross-domain cell. Failures are returned in the
    metadata, never raised; ``fields`` go into the metadata as they are. ``models_dir``: where the tested model is
    saved (``--save-models``); ``loggers``: the live loggers of its meta-training."""
    budget = cell.budget
    targets = [cell, *cross]
    suite: TaskSuite = config.make_suite(cell.suite.cls)
    reason = declined(cell.learner.cls, suite, cell.setting)
    if reason:
        return [(_metadata(target, config, device)(status=CellStatus.NOT_APPLICABLE, error=reason, **fields), None,
                 None, None) for target in targets]
    context: HostContext | None = None
    try:
        with deadline(timeout), PeakMemory(device) as memory:
            with progress_bar(budget.meta_train_tasks, f"meta-train {cell.label}", "task", show_progress) as bar:
                learner, context = _start(cell, config, suite, device, loss_progress(bar), checkpoints, None, loggers)
                trained = _train(learner, context)
            finish = _test_each(targets, config, suite, trained, device, show_progress, models_dir, **fields)
    except (Exception, CellTimeoutError) as error:  # a plugin's failure or the deadline fails its cell, not the run
        return [_failed(target, config, device, error, context.tasks_seen if context else 0,
                        training=context.curve.rows if context else [], **fields) for target in targets]
    return [outcome(memory) for outcome in finish]


def run_seed_group(cells: list[Cell], config: RunConfig, device: torch.device, show_progress: bool,
                   timeout: float | None = None, checkpoints: Callable[[Cell], Checkpoints | None] = lambda cell: None,
                   models_dir: Path | None = None, loggers: tuple[LoggerSpec, ...] = ()) -> list[CellOutcome]:
    """Run the cells of one (suite, setting, learner) that differ only in their seed, meta-training them together
    as one vectorised model (``SeedGroup``), then testing each (and the cross-domain cells among ``cells`` with
    each one's model); each cell's outcome as ``run_cell`` gives it, in the order of ``cells``. The group has
    ``timeout`` seconds per seed. If the group cannot train together (``SeedsApart``) or fails in meta-training,
    each seed runs again alone (from its own checkpoint) and its metadata says why."""
    homes = [cell for cell in cells if cell.test_suite is None]
    learner_class = homes[0].learner.cls
    suite: TaskSuite = config.make_suite(homes[0].suite.cls)
    if len(homes) == 1 or not trains_seeds_together(learner_class) or declined(learner_class, suite, homes[0].setting):
        return _in_order(cells, [outcome for home in homes for outcome in run_cell(
            home, config, device, show_progress, timeout, checkpoints(home), tuple(_with_targets(home, cells)[1:]),
            models_dir, loggers)])
    budget = homes[0].budget
    seeds = [cell.seed for cell in homes]
    label = f"{homes[0].learner.name} | {homes[0].suite.name} {homes[0].setting.name} | seeds {_seed_list(seeds)}"
    finish: list[Callable[[PeakMemory], CellOutcome]] = []
    contexts: dict[int, HostContext] = {}  # by seed, once started: a timed-out seed keeps its curve
    try:
        with deadline(timeout and timeout * len(homes), f"the group of {len(homes)} seeds"), \
                PeakMemory(device) as memory:
            with progress_bar(budget.meta_train_tasks * len(homes), f"meta-train {label}", "task",
                              show_progress) as bar:
                members = start_together(homes, config, device, progress=loss_progress(bar), checkpoints=checkpoints,
                                         loggers=loggers)
                contexts = {home.seed: context for home, (_, context) in zip(homes, members, strict=True)}
                trained = _train_seed_group([learner for learner, _ in members], list(contexts.values()))
            for home, one in zip(homes, trained, strict=True):
                targets = _with_targets(home, cells)
                if not isinstance(one, MemberFailure):
                    finish.extend(_test_each(targets, config, suite, one, device, show_progress, models_dir,
                                             seed_group=seeds))
                    continue
                for target in targets:  # diverged alone: fails as it would alone
                    failed = _failed(target, config, device, one.error, one.tasks_seen, training=one.training,
                                     seed_group=seeds)
                    finish.append(lambda memory, failed=failed: failed)
    except CellTimeoutError as error:
        timed_out = []
        for home in homes:
            context = contexts.get(home.seed)
            timed_out += [_failed(target, config, device, error, context.tasks_seen if context else 0,
                                  training=context.curve.rows if context else [], seed_group=seeds)
                          for target in _with_targets(home, cells)]
        return _in_order(cells, timed_out)
    except Exception as error:  # the group could not train together: each seed alone, as it would have run
        why = "cannot train together" if isinstance(error, SeedsApart) else "failed in meta-training together"
        note = f"meta-trained alone: the seed group {why} ({type(error).__name__}: {error})"
        return _in_order(cells, [outcome for home in homes for outcome in run_cell(
            home, config, device, show_progress, timeout, checkpoints(home), tuple(_with_targets(home, cells)[1:]),
            models_dir, loggers, seed_group=[home.seed], seed_group_note=note)])
    return _in_order(cells, [outcome(memory) for outcome in finish])


def _in_order(cells: list[Cell], outcomes: list[CellOutcome]) -> list[CellOutcome]:
    """``outcomes`` (one per cell, in any order) in the order of ``cells``."""
    by_id = {outcome[0].cell_id: outcome for outcome in outcomes}
    return [by_id[cell.cell_id] for cell in cells]


def _seed_list(seeds: list[int]) -> str:
    """``0-4`` for consecutive seeds, else ``0,2,5``."""
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive else ",".join(map(str, seeds))


def seed_groups(cells: list[Cell], seeds_together: int) -> list[list[Cell]]:
    """The cells in groups that meta-train together: those of one (suite, setting, learner) whose learner trains
    seeds together (``trains_seeds_together``), at most ``seeds_together`` seeds each (0: no limit; 1: every cell
    alone), in the cells' order; a cross-domain cell goes with its home cell (which must come first)."""
    groups: dict[tuple, list[list[Cell]]] = {}
    chunk_of: dict[str, list[Cell]] = {}
    for index, cell in enumerate(cells):
        if cell.test_suite is not None and cell.home.cell_id in chunk_of:  # cross-domain: with its home cell's model
            chunk_of[cell.home.cell_id].append(cell)
            continue
        together = (seeds_together != 1 and trains_seeds_together(cell.learner.cls)
                    and cell.setting.variable is None)  # seeds step in lockstep on stacked batches: fixed shapes
        key = (cell.suite.name, cell.setting_index, cell.learner.name) if together else ("alone", index)
        chunks = groups.setdefault(key, [[]])
        if seeds_together and sum(member.test_suite is None for member in chunks[-1]) >= seeds_together:
            chunks.append([])
        chunks[-1].append(cell)
        chunk_of[cell.home.cell_id] = chunks[-1]
    return [group for chunks in groups.values() for group in chunks]


CellResult = tuple[Cell, CellMetadata, pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]
"""A cell and its ``CellOutcome``."""


@dataclasses.dataclass(frozen=True)
class CellWork:
    """Runs a group of cells of a run (one cell, or the seeds of one configuration that meta-train together), in
    whatever process an executor calls it; what every group shares, picklable so that it can travel to workers.
    Failures come back in the metadata."""

    config: RunConfig
    device: str
    show_progress: bool = False
    cell_timeout: float | None = None
    checkpoint_dir: str | None = None
    """Where mid-cell checkpoints go (the run's cells/ folder; it must be reachable from the workers)."""
    checkpoint_every: int | None = None
    models_dir: str | None = None
    """Where each finished cell's tested model is saved (``--save-models``: the run's cells/ folder); None: nowhere."""
    loggers: tuple[LoggerSpec, ...] = ()
    """The live loggers each cell makes where it runs (``bench run --loggers``)."""

    def checkpoints(self, cell: Cell) -> Checkpoints | None:
        return (Checkpoints(checkpoint_file(Path(self.checkpoint_dir), cell.cell_id), self.checkpoint_every)
                if self.checkpoint_dir and self.checkpoint_every else None)

    def __call__(self, cells: list[Cell]) -> list[CellResult]:
        device, available = torch.device(self.device), torch.get_num_threads()
        threads = available
        if device.type == "cpu":  # a small network on one thread (``bench.threads``)
            threads = cell_threads(network_weights(self.config.make_suite(cells[0].suite.cls), cells[0].setting),
                                   available)
        torch.set_num_threads(threads)
        try:
            with MachineLoad() as load:
                outcomes = run_seed_group(cells, self.config, device, self.show_progress, self.cell_timeout,
                                          self.checkpoints, Path(self.models_dir) if self.models_dir else None,
                                          self.loggers)
        finally:
            torch.set_num_threads(available)
        machine = {"machine_load": round(load.mean, 2), "cpu_cores": cpu_cores(), "torch_threads": threads}
        return [(cell, dataclasses.replace(metadata, **machine), *rest)
                for cell, (metadata, *rest) in zip(cells, outcomes, strict=True)]


def run_cells(cells: list[Cell], config: RunConfig, store: RunStore, device: torch.device,
              show_progress: bool = True, executor: Executor | None = None, cell_timeout: float | None = None,
              checkpoint_every: int | None = None, seeds_together: int = 0, loggers: tuple[LoggerSpec, ...] = (),
              warn: Callable[[str], None] = lambda message: None,
              on_start: Callable[[int], None] = lambda finished: None,
              on_cell: Callable[[Cell, CellMetadata], None] = lambda cell, metadata: None) -> None:
    """Run the cells not yet finished in ``store`` with ``executor`` (None: one after the other, in this
    process), writing each as soon as it completes; the seeds of one configuration meta-train together, up to
    ``seeds_together`` at a time (``seed_groups``), each cell with its live ``loggers``. Finished cells must match
    their configuration (``StoreError``); ``warn`` hears of corrupt cell files, ``on_start`` of how many cells were
    already finished."""
    todo = store.cells_to_run({cell.cell_id: cell_fingerprint(cell, config) for cell in cells}, warn)
    on_start(len(cells) - len(todo))
    work = CellWork(config, str(device), show_progress and (executor is None or executor.shows_progress),
                    cell_timeout, str(store.cells_dir) if checkpoint_every else None, checkpoint_every,
                    str(store.cells_dir) if config.save_models else None, loggers)
    # a cross-domain cell to run needs its home cell's model: the home meta-trains again even where it is finished
    needed = todo | {cell.home.cell_id for cell in cells if cell.cell_id in todo}
    groups = seed_groups([cell for cell in cells if cell.cell_id in needed], seeds_together)
    try:
        results = (executor.map(work, groups, gpus=int(device.type == "cuda")) if executor is not None
                   else map(work, groups))
        for group in results:
            for cell, metadata, records, validation, training in group:
                if cell.cell_id not in todo:  # finished before: kept as it is
                    continue
                store.write_cell(cell.cell_id, metadata, records, validation, training)
                on_cell(cell, metadata)
    finally:
        if executor is not None:
            executor.close()


def default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{'-'.join(config.suites)}-{config.profile}"
