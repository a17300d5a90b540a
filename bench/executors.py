"""Executors: how the cells of a run are run (in this process, in worker processes, on a Ray cluster).

An executor is a plugin like a learner (hook ``register_executors``). It receives the cells still to
run and yields each one's result as soon as it finishes, in any order; the host writes every result
at once, so what an executor finished is never lost. Results must not depend on the executor: a
cell is a pure function of its configuration and seed.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.api import PluginClass

if TYPE_CHECKING:
    import pandas as pd

    from bench.config import RunConfig
    from bench.grid import Cell


@dataclasses.dataclass(frozen=True)
class CellJob:
    """What every cell of a run shares; picklable, so that it can travel to workers."""

    config: "RunConfig"
    device: str
    show_progress: bool = False
    cell_timeout: float | None = None
    checkpoint_dir: str | None = None
    """Where mid-cell checkpoints go (the run's cells/ folder; it must be reachable from the workers)."""
    checkpoint_every: int | None = None


CellResult = tuple["Cell", dict[str, Any], "pd.DataFrame | None"]


def run_one(cell: "Cell", job: CellJob) -> CellResult:
    """Run one cell (in whatever process the executor chose); failures come back in the metadata."""
    import torch

    from pathlib import Path

    from bench.runner import Checkpoints, run_cell
    from bench.store import checkpoint_file

    checkpoints = (Checkpoints(checkpoint_file(Path(job.checkpoint_dir), cell.cell_id), job.checkpoint_every)
                   if job.checkpoint_dir and job.checkpoint_every else None)
    metadata, records = run_cell(cell, job.config, torch.device(job.device), job.show_progress, job.cell_timeout, checkpoints)
    return cell, metadata, records


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    workers: int = 1
    """Parallel cells (worker processes, or Ray tasks at a time)."""
    address: str | None = None
    """A cluster to connect to (Ray: ``--ray-address``); None starts a local one where that applies."""


class Executor(PluginClass, ABC):
    """Runs cells; the first line of the docstring is what ``bench plugins`` shows."""

    shows_progress: bool = False
    """Whether cells can draw progress bars (only where they run in this process)."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    @abstractmethod
    def run(self, cells: list["Cell"], job: CellJob) -> Iterator[CellResult]:
        """Yield ``(cell, metadata, records)`` for every cell as it finishes. Stopping the iteration early
        (an error, Ctrl-C) must cancel what is still queued or running: see ``close``."""

    def close(self) -> None:
        """Stop everything still running and release workers; called however the run ends."""


class InlineExecutor(Executor):
    """One cell at a time, in this process (the default; progress bars per cell)."""

    shows_progress = True

    def run(self, cells: list["Cell"], job: CellJob) -> Iterator[CellResult]:
        for cell in cells:
            yield run_one(cell, job)
