"""One benchmark run from start to end, the host behind ``bench run``: plan the cells, prepare the data, open
the run folder, run the cells, mark how the run ended and write its report.

Nothing here prints: every message for the user goes to the ``say`` callback, one line each.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.api import Executor, ExecutorOptions
from bench.cells import CellMetadata, CellStatus
from bench.config import CONFIG_KEYS, RunConfig, build_run_config
from bench.environment import environment
from bench.errors import BenchError, DataError
from bench.grid import Cell, plan
from bench.loggers import LoggerSpec
from bench.plugins import Registration, Registry
from bench.report import Report
from bench.report_files import write_report
from bench.machine_load import cpu_cores
from bench.runner import default_run_dir, resolve_device, run_cells, seed_groups
from bench.store import RUN_FILE, RunStore
from bench.threads import network_weights, side_by_side_workers

Say = Callable[[str], None]

FINISHED, FINISHED_WITH_FAILURES, INTERRUPTED = "finished", "finished with failed cells", "interrupted"

AUTO_EXECUTOR = "auto"
EXECUTOR_ENV = "METABENCH_EXECUTOR"
"""The executor ``bench run`` uses when ``--executor`` is not given (default ``auto``)."""


@dataclasses.dataclass(frozen=True)
class Execution:
    """How the cells run: the executor and its limits. Nothing here changes a cell's numbers."""

    executor: str = "inline"
    """The registered name of the executor, or ``auto`` (``bench run``'s default, ``AUTO_EXECUTOR``): on a CPU, small
    independent cells side by side in worker processes, one per core (``bench.threads``); else inline."""
    workers: int | None = None
    """Cells at a time (worker processes, or a local Ray's CPUs); None: this machine's CPU cores."""
    address: str | None = None
    """The cluster to use (Ray); None starts a local one where that applies."""
    cell_timeout: float | None = None
    """Seconds after which a cell fails (the run goes on)."""
    checkpoint_every: int | None = None
    """Save a cell's meta-training state every so many tasks (learners that support it)."""
    show_progress: bool = True
    seeds_together: int = 0
    """Seeds of one (suite, setting, learner) meta-trained at once as one vectorised model, for learners that can
    (``SeedGroup``): 0, all of the run's; 1, one at a time. Their numbers are those of one at a time to float
    rounding."""
    loggers: tuple[str, ...] = ()
    """The live loggers of every cell's meta-training, by registered name (``bench.loggers``)."""
    logger_options: tuple[str, ...] = ()
    """``NAME.KEY=VALUE`` options of those loggers (``Logger.options`` lists the keys each takes)."""


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its folder, its status (``run.json``), how many cells failed and, unless it was
    interrupted, its report."""

    run_dir: Path
    status: str
    failed_cells: int = 0
    report: Report | None = None


def resumed_config(run_dir: Path) -> RunConfig:
    """The configuration the run in ``run_dir`` was started with (``bench run --resume``)."""
    stored = RunStore(run_dir).run_info().get("config", {})
    values = {key: value for key, value in stored.items() if key in CONFIG_KEYS}
    return build_run_config(values | {"out": str(run_dir)}, origin=f"{run_dir / RUN_FILE}")


def resumed_checkpoint_every(run_dir: Path) -> int | None:
    """How often the run in ``run_dir`` last wrote mid-cell checkpoints (``--checkpoint-every``, in run.json's
    environment), so that ``bench run --resume`` goes on from them and keeps writing them; None where it wrote none."""
    execution = RunStore(run_dir).run_info().get("environment", {}).get("execution", {})
    return execution.get("checkpoint_every")


def make_executor(registry: Registry, execution: Execution) -> Executor:
    """The executor the run asks for, with its options."""
    (registration,) = registry.select("executor", [execution.executor])
    return registration.cls(ExecutorOptions(workers=execution.workers or os.cpu_count() or 1, address=execution.address))


def select_loggers(registry: Registry, execution: Execution) -> list[tuple[Registration, dict[str, str]]]:
    """The loggers the run asks for, each with its options; an unknown or unavailable logger, or an option that is
    malformed, names no chosen logger or a key it does not take, is a ``BenchError`` (one line)."""
    chosen = registry.select("logger", execution.loggers) if execution.loggers else []
    options: dict[str, dict[str, str]] = {registration.name: {} for registration in chosen}
    for option in execution.logger_options:
        target, sep, value = option.partition("=")
        name, dot, key = target.strip().partition(".")
        if not sep or not dot or not key.strip():
            raise BenchError(f"--logger-option {option!r}: expected NAME.KEY=VALUE, "
                             "e.g. mlflow.tracking_uri=sqlite:///m.db")
        if name not in options:
            raise BenchError(f"--logger-option {option!r}: '{name}' is not among --loggers "
                             f"({', '.join(options) or 'none given'})")
        takes = registry.loggers[name].cls.options
        if key.strip() not in takes:
            raise BenchError(f"--logger-option {option!r}: logger '{name}' takes no option {key.strip()!r}; "
                             f"valid: {', '.join(takes) or 'none'}")
        options[name][key.strip()] = value.strip()
    return [(registration, options[registration.name]) for registration in chosen]


def prepare_loggers(chosen: list[tuple[Registration, dict[str, str]]], run_dir: Path) -> tuple[LoggerSpec, ...]:
    """Prepare each chosen logger for the run in ``run_dir`` (``Logger.prepare``; its failure is a ``BenchError``)."""
    for registration, options in chosen:
        try:
            registration.cls.prepare(run_dir, options)
        except Exception as error:  # a plugin's failure, said in one line
            reason = (str(error).splitlines() or [""])[0]
            raise BenchError(f"logger '{registration.name}' cannot start: {type(error).__name__}: {reason}") from None
    return tuple(LoggerSpec(registration.name, registration.cls, str(run_dir), options)
                 for registration, options in chosen)


def resolve_auto_executor(execution: Execution, cells: list[Cell], config: RunConfig, device) -> Execution:
    """``execution`` with ``auto`` made concrete: ``processes`` with one worker per core (``--workers`` caps them) when
    the run is on a CPU and has several independent groups of cells whose networks are all small; else ``inline``."""
    if execution.executor != AUTO_EXECUTOR:
        return execution
    workers = 1
    if device.type == "cpu":
        networks = {(cell.suite.name, cell.setting.name): cell for cell in cells}
        weights = [network_weights(config.make_suite(cell.suite.cls), cell.setting) for cell in networks.values()]
        groups = len(seed_groups(cells, execution.seeds_together))
        workers = side_by_side_workers(weights, groups, min(cpu_cores(), execution.workers or cpu_cores()))
    if workers == 1:
        return dataclasses.replace(execution, executor="inline")
    return dataclasses.replace(execution, executor="processes", workers=workers)


def _note_what_all_leaves_out(config: RunConfig, registry: Registry, say: Say) -> None:
    """Say which learners and suites ``all`` skipped: those unavailable here and those run only when named."""
    for kind, names in (("learner", config.learners), ("suite", config.suites)):
        if "all" in names:
            for name, reason in registry.unavailable(kind).items():
                say(f"note: skipping {kind} '{name}': {reason}")
    if "all" in config.learners:
        named_only = sorted(name for name, registration in registry.learners.items()
                            if not registration.cls.in_all and not registration.unavailable_reason
                            and name not in config.learners)
        if named_only:
            say(f"note: not in 'all', run when named: {', '.join(named_only)}")


def resolved_config(config: RunConfig, run_dir: Path, cells: list[Cell]) -> dict[str, Any]:
    """The configuration saved in ``run.json``: the run's keys with every budget and hyper-parameter resolved."""
    def key(cell: Cell) -> str:
        return f"{cell.learner.name} @ {cell.suite.name} {cell.setting.name}"

    return {
        **dataclasses.asdict(config), "out": str(run_dir),
        "budgets": {key(cell): dataclasses.asdict(cell.budget) for cell in cells},
        "hyperparameters": {key(cell): dataclasses.asdict(cell.hyperparameters) for cell in cells},
    }


def _cell_line(cell: Cell, metadata: CellMetadata, said: set[str]) -> str:
    """The cell's line of ``bench run``'s output, with the notes not ``said`` before (a seed group's cells share
    theirs)."""
    together = metadata.seed_group and len(metadata.seed_group) > 1
    detail = (f" ({metadata.meta_train_seconds:.1f} s meta-training"
              f"{f', its share of {len(metadata.seed_group)} seeds together' if together else ''})"
              if metadata.status is CellStatus.OK else f": {metadata.error}")
    for note in ([metadata.seed_group_note] if metadata.seed_group_note else []) + (metadata.notes or []):
        if note not in said:
            said.add(note)
            detail += f"\n         {note}"
    return f"  {str(metadata.status):6} {cell.label}{detail}"


def check_cross_domain(config: RunConfig, cells: list[Cell], say: Say) -> None:
    """Refuse a ``--test-suites`` suite whose inputs differ in shape from those of the suite it tests models of;
    say which meta-training settings a test suite has no counterpart of (they are tested on their own suite only)."""
    crosses = [cell for cell in cells if cell.test_suite is not None]
    checked: set[tuple[str, str]] = set()
    for cell in crosses:
        assert cell.test_suite is not None and cell.test_setting is not None
        pair = (cell.suite.name, cell.test_suite.name)
        if pair in checked:
            continue
        checked.add(pair)
        trained = config.make_suite(cell.suite.cls).sample_episode("test", cell.setting, 0, 0).support_x.shape[1:]
        tested = config.make_suite(cell.test_suite.cls).sample_episode("test", cell.test_setting, 0, 0).support_x
        if tuple(tested.shape[1:]) != tuple(trained):
            raise DataError(f"--test-suites {cell.test_suite.name}: its inputs have shape {tuple(tested.shape[1:])}, "
                            f"the models meta-trained on '{cell.suite.name}' take {tuple(trained)}")
    homes = dict.fromkeys((cell.suite.name, cell.setting.name) for cell in cells if cell.test_suite is None)
    for name in config.test_suites or []:
        tested = {(cell.suite.name, cell.setting.name) for cell in crosses if cell.test_suite.name == name}
        untested = [f"{suite} {setting}" for suite, setting in homes if (suite, setting) not in tested]
        if untested:
            say(f"note: --test-suites {name} has no setting of the kind, ways and shots of {', '.join(untested)}: "
                "tested on their own suite only")


def run_benchmark(config: RunConfig, registry: Registry, execution: Execution, say: Say) -> RunOutcome:
    """Run every cell of ``config`` not yet finished in its run folder and write the report. Bad input (names,
    settings, data, the run folder) raises a ``BenchError`` before any cell runs; a failing cell is recorded and
    the run goes on; Ctrl-C keeps the finished cells, marks the run interrupted and says how to resume."""
    cells = plan(config, registry)
    device = resolve_device(config.device)
    asked, execution = execution.executor, resolve_auto_executor(execution, cells, config, device)
    executor = make_executor(registry, execution)
    chosen_loggers = select_loggers(registry, execution)
    _note_what_all_leaves_out(config, registry, say)
    suites = {cell.suite.name: cell.suite for cell in cells} | {cell.test_suite.name: cell.test_suite
                                                                 for cell in cells if cell.test_suite}
    for suite in suites.values():  # data problems: one line, before any work
        config.make_suite(suite.cls).prepare()
    check_cross_domain(config, cells, say)
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    resolved = resolved_config(config, run_dir, cells)
    env = {**environment(registry, device),
           "execution": {"executor": execution.executor, "asked": asked, "workers": executor.options.workers,
                         "cell_timeout": execution.cell_timeout, "checkpoint_every": execution.checkpoint_every,
                         "seeds_together": execution.seeds_together,
                         "loggers": [registration.name for registration, _ in chosen_loggers]}}
    store = RunStore(run_dir)
    env = store.open(resolved, env)
    loggers = prepare_loggers(chosen_loggers, run_dir)

    def on_start(finished: int) -> None:
        say(f"metabench: {len(cells)} cells ({finished} already finished) on {env['device_name']} "
            f"with the {execution.executor} executor -> {run_dir}")

    said: set[str] = set()
    try:
        run_cells(cells, config, store, device, show_progress=execution.show_progress, executor=executor,
                  cell_timeout=execution.cell_timeout, checkpoint_every=execution.checkpoint_every,
                  seeds_together=execution.seeds_together, loggers=loggers,
                  warn=lambda message: say(f"warning: {message}"), on_start=on_start,
                  on_cell=lambda cell, metadata: say(_cell_line(cell, metadata, said)))
    except KeyboardInterrupt:
        store.write_run_file(resolved, env, status=INTERRUPTED)
        say(f"\ninterrupted: finished cells are kept in {run_dir}; resume with: bench run --resume {run_dir}")
        return RunOutcome(run_dir, INTERRUPTED)
    failed = store.failed_cells()
    status = FINISHED_WITH_FAILURES if failed else FINISHED
    store.write_run_file(resolved, env, status=status)
    report, _ = write_report(store)
    if report.busy_warning:
        say(f"warning: {report.busy_warning}")
    return RunOutcome(run_dir, status, failed, report)
