"""``bench eval``: test the models a run saved (``bench run --save-models``) again, with more adaptation steps, more
test episodes or on other test suites, into a new run folder that the report, ``bench runs`` and ``bench compare``
read like any run.

Each model is rebuilt as its cell built it (its hyper-parameters, ``meta_train`` with a budget of 0 tasks through the
host's context, then ``load_state_dict``) and scored by the host's protocol. Test episode i is a pure function of
(suite, split, setting, seed, i), so the first episodes are those the run scored. A cell's result is read at the step
its run chose on meta-validation (``selected_step``): nothing is chosen on test episodes here. Every model is checked
(readable, same plugin versions, same cell fingerprint) before anything is written; the run folder is only read.
"""
from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.api import Learner, TaskSuite
from bench.cells import CellMetadata, CellStatus
from bench.config import RunConfig, build_run_config
from bench.environment import environment
from bench.errors import BenchError
from bench.grid import Cell, plan
from bench.machine_load import cpu_cores
from bench.memory import PeakMemory
from bench.plugins import Registry
from bench.progress import progress_bar
from bench.protocol import curve_steps, episodes_fingerprint, evaluate
from bench.report_files import write_report
from bench.runner import HostContext, cell_fingerprint, resolve_device
from bench.saved_models import MODEL_SUFFIX, SavedModel, load_model, mismatch, model_file
from bench.session import (FINISHED, FINISHED_WITH_FAILURES, INTERRUPTED, RunOutcome, check_cross_domain,
                           resolved_config, resumed_config)
from bench.store import RunStore
from bench.threads import cell_threads, network_weights

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What ``bench eval`` was asked: the run, the new folder, and the protocol's changes (None: the run's)."""

    run_dir: Path
    out: Path
    steps: int | None = None
    episodes: int | None = None
    test_suites: str | None = None
    device: str | None = None
    show_progress: bool = True


@dataclasses.dataclass(frozen=True)
class Source:
    """A checked model: its cell in the run's plan, that cell's metadata there, and the file's path and sha256."""

    cell: Cell
    metadata: CellMetadata
    path: Path
    sha256: str


def evaluate_run(request: EvalRequest, registry: Registry, say: Say) -> RunOutcome:
    """Test every saved model of ``request.run_dir`` again into ``request.out``; bad input (no saved model, a corrupt
    file, another plugin version or configuration) raises a ``BenchError`` before anything is written."""
    if request.out.resolve() == request.run_dir.resolve():
        raise BenchError(f"--out {request.out}: bench eval writes a new run folder, not into the run it evaluates")
    original = resumed_config(request.run_dir)
    config = _eval_config(original, request)
    device = resolve_device(config.device)
    sources = _checked_sources(request.run_dir, original, registry, say)
    cells = [cell for cell in plan(config, registry) if cell.home.cell_id in sources]
    _check_steps(cells, sources)
    for suite in {cell.test_suite.name: cell.test_suite for cell in cells if cell.test_suite}.values():
        config.make_suite(suite.cls).prepare()
    check_cross_domain(config, cells, say)
    resolved = {**resolved_config(config, request.out, cells), "evaluated_from": _provenance(request.run_dir, sources)}
    store = RunStore(request.out)
    env = store.open(resolved, environment(registry, device))
    todo = store.cells_to_run({cell.cell_id: cell_fingerprint(cell, config) for cell in cells},
                              lambda message: say(f"warning: {message}"))
    say(f"metabench eval: {len(cells)} cells from {len(sources)} saved models of {request.run_dir} "
        f"({len(cells) - len(todo)} already finished) -> {request.out}")
    try:
        for home_id, source in sources.items():
            targets = [cell for cell in cells if cell.home.cell_id == home_id and cell.cell_id in todo]
            _write_each(store, targets, _evaluate_model(source, targets, config, device, request) if targets else [],
                        say)
    except KeyboardInterrupt:
        store.write_run_file(resolved, env, status=INTERRUPTED)
        say(f"\ninterrupted: finished cells are kept in {request.out}; the same bench eval command goes on")
        return RunOutcome(request.out, INTERRUPTED)
    failed = store.failed_cells()
    store.write_run_file(resolved, env, status=FINISHED_WITH_FAILURES if failed else FINISHED)
    report, _ = write_report(store)
    return RunOutcome(request.out, FINISHED_WITH_FAILURES if failed else FINISHED, failed, report)


def _write_each(store: RunStore, cells: list[Cell], outcomes: list[tuple[CellMetadata, pd.DataFrame | None]],
                say: Say) -> None:
    """Write each cell's outcome to the new run folder and say how it ended, one line each."""
    for cell, (metadata, records) in zip(cells, outcomes, strict=True):
        store.write_cell(cell.cell_id, metadata, records)
        say(f"  {metadata.status!s:6} {cell.label}" + (f": {metadata.error}" if metadata.error else ""))


def _eval_config(original: RunConfig, request: EvalRequest) -> RunConfig:
    """The run's configuration with the protocol's changes and the new folder (validated as ``bench run``'s flags)."""
    given = {"steps": request.steps, "episodes": request.episodes, "test_suites": request.test_suites,
             "device": request.device}
    values = {**dataclasses.asdict(original), **{key: value for key, value in given.items() if value is not None},
              "out": str(request.out), "save_models": False}
    return build_run_config(values, origin="command line")


def _checked_sources(run_dir: Path, original: RunConfig, registry: Registry, say: Say) -> dict[str, Source]:
    """The run's finished cells that have a saved model, by cell id, each model read and checked against its cell in
    the run's configuration under the installed plugins; a note names the finished cells without one."""
    store = RunStore(run_dir)
    finished = {cell.cell_id: cell for cell in store.cells() if cell.status is CellStatus.OK}
    planned = {cell.cell_id: cell for cell in plan(original, registry) if cell.test_suite is None}
    sources: dict[str, Source] = {}
    for cell_id, metadata in finished.items():
        path = model_file(store.cells_dir, cell_id)
        if metadata.test_suite is None and path.exists():
            sources[cell_id] = _source(load_model(path, torch.device("cpu")), planned.get(cell_id), metadata, original)
    if not sources:
        raise BenchError(f"{run_dir} holds no saved model (cells/*{MODEL_SUFFIX}) of a finished cell; "
                         "run it with bench run --save-models")
    missing = sorted(cell_id for cell_id, cell in finished.items()
                     if cell.test_suite is None and cell_id not in sources)
    if missing:
        say(f"note: not evaluated, no saved model: {', '.join(missing)}")
    return sources


def _source(saved: SavedModel, cell: Cell | None, metadata: CellMetadata, original: RunConfig) -> Source:
    """A saved model as a ``Source``, refused (one line naming the cell) when it no longer fits its cell."""
    if cell is None:
        raise BenchError(f"cell {metadata.cell_id}: not a cell of the run's configuration under the installed plugins")
    if saved.info.get("cell_id") != cell.cell_id:
        problem = f"{saved.path} holds the model of {saved.info.get('cell_id')}"
    else:
        problem = mismatch(saved.info, cell, cell_fingerprint(cell, original))
    if problem:
        raise BenchError(f"cell {cell.cell_id}: its saved model is refused: {problem}")
    return Source(cell, metadata, saved.path, saved.sha256)


def _check_steps(cells: list[Cell], sources: dict[str, Source]) -> None:
    """Refuse a protocol whose curves leave out a cell's val-chosen step (fewer ``--steps`` than it)."""
    for cell in cells:
        step = sources[cell.home.cell_id].metadata.selected_step
        learner = cell.learner.cls(cell.hyperparameters)
        setting = cell.test_setting or cell.setting
        if step is not None and step not in curve_steps(learner, setting, cell.budget.test_steps):
            raise BenchError(f"--steps {cell.budget.test_steps}: cell {cell.cell_id} was chosen on meta-validation "
                             f"at step {step}, which its curve would not reach; use --steps {step} or more")


def _provenance(run_dir: Path, sources: dict[str, Source]) -> dict[str, Any]:
    """Where the models came from, for run.json: the run folder and each model file with its sha256."""
    return {"run": str(run_dir), "selected_step": "each cell's val-chosen step in that run",
            "models": {cell_id: {"file": str(source.path.relative_to(run_dir)), "sha256": source.sha256}
                       for cell_id, source in sources.items()}}


def _evaluate_model(source: Source, targets: list[Cell], config: RunConfig, device: torch.device,
                    request: EvalRequest) -> list[tuple[CellMetadata, pd.DataFrame | None]]:
    """Rebuild one saved model and score it on each of ``targets`` (its cell and cross-domain cells): each one's
    metadata and records. A learner that fails fails its cells."""
    home = source.cell
    suite: TaskSuite = config.make_suite(home.suite.cls)
    available = torch.get_num_threads()
    threads = available
    if device.type == "cpu":  # as ``CellWork``: a small network on one thread
        with torch.random.fork_rng(devices=[]):
            threads = cell_threads(network_weights(suite, home.setting), available)
    torch.set_num_threads(threads)
    try:
        saved = load_model(source.path, device)
        if saved.sha256 != source.sha256:
            raise BenchError(f"{source.path} changed while bench eval ran; run the command again")
        with PeakMemory(device) as memory:
            learner = _rebuild(home, suite, saved, device)
            scored = [_score(learner, cell, config, suite, device, request.show_progress) for cell in targets]
    except BenchError:
        raise
    except Exception as error:  # a plugin's failure fails its cells, not the command
        return [(_failed(source, cell, config, device, error), None) for cell in targets]
    finally:
        torch.set_num_threads(available)
    machine = {"device": str(device), "cpu_cores": cpu_cores(), "torch_threads": threads, "machine_load": None,
               **memory.as_dict()}
    return [_finished(source, cell, config, request.run_dir, *outcome, **machine)
            for cell, outcome in zip(targets, scored, strict=True)]


def _rebuild(cell: Cell, suite: TaskSuite, saved: SavedModel, device: torch.device) -> Learner:
    """The cell's learner with its saved state: built by ``meta_train`` on a budget of 0 tasks through the host's
    context (networks initialised as the cell's were), regularisers off as for the test, then ``load_state_dict``."""
    learner: Learner = cell.learner.cls(cell.hyperparameters)
    context = HostContext(suite, cell.setting, cell.seed, 0, device, lambda tasks, loss: None)
    learner.meta_train(context)
    context.switch_off_regularisers()
    learner.load_state_dict(saved.state)
    return learner


def _score(learner: Learner, cell: Cell, config: RunConfig, home_suite: TaskSuite, device: torch.device,
           show_progress: bool) -> tuple[TaskSuite, np.ndarray, np.ndarray]:
    """The suite whose test episodes ``cell`` scores, the metric per episode and step, and seconds per episode."""
    suite = config.make_suite(cell.test_suite.cls) if cell.test_suite else home_suite
    setting = cell.test_setting or cell.setting
    budget = cell.budget
    with progress_bar(budget.test_episodes, f"evaluate   {cell.label}", "episode", show_progress) as bar:
        metric, seconds = evaluate(learner, suite, setting, cell.seed, budget.test_episodes, budget.test_steps, device,
                                   on_episodes=bar.update)
    return suite, metric, seconds


def _cell_fields(cell: Cell, config: RunConfig) -> dict[str, Any]:
    """The metadata fields of ``cell`` that differ from its model's cell in the run: identity and protocol."""
    return {"cell_id": cell.cell_id, "suite": cell.suite_label,
            "test_suite": cell.test_suite.name if cell.test_suite else None,
            "test_episodes": cell.budget.test_episodes, "test_steps": cell.budget.test_steps,
            "cell_fingerprint": cell_fingerprint(cell, config), "record_rows": None}


def _finished(source: Source, cell: Cell, config: RunConfig, run_dir: Path, suite: TaskSuite, metric: np.ndarray,
              seconds: np.ndarray, **machine: Any) -> tuple[CellMetadata, pd.DataFrame]:
    """A scored cell's metadata (its model's cell's, with this protocol and these measurements) and records."""
    setting = cell.test_setting or cell.setting
    learner = cell.learner.cls(cell.hyperparameters)
    episodes, steps = np.meshgrid(np.arange(metric.shape[0]), curve_steps(learner, setting, cell.budget.test_steps),
                                  indexing="ij")
    identity = {"suite": cell.suite_label, "setting": cell.setting.name, "learner": cell.learner.name,
                "seed": cell.seed}
    records = pd.DataFrame({**identity, "episode": episodes.ravel(), "step": steps.ravel(), "metric": metric.ravel()})
    note = (f"re-evaluated by bench eval: the model {source.path.name} of run {run_dir} (the state its test scored), "
            f"read at that run's val-chosen step {source.metadata.selected_step}")
    metadata = dataclasses.replace(
        source.metadata, **_cell_fields(cell, config), **machine, status=CellStatus.OK,
        adapt_ms_per_episode=float(seconds.mean() * 1000), metric_name=suite.metric_name,
        lower_is_better=suite.lower_is_better, notes=[*(source.metadata.notes or []), note],
        test_episodes_sha256=episodes_fingerprint(suite, setting, cell.seed, cell.budget.test_episodes))
    return metadata, records


def _failed(source: Source, cell: Cell, config: RunConfig, device: torch.device, error: Exception) -> CellMetadata:
    """The metadata of a cell whose model could not be rebuilt or scored (it runs again with the same command)."""
    return dataclasses.replace(source.metadata, **_cell_fields(cell, config), status=CellStatus.FAILED,
                               device=str(device), error=f"{type(error).__name__}: {error}",
                               traceback="".join(traceback.format_exception(error)), notes=None)
