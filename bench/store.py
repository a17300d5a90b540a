"""The results folder: ``run.json``, one record file and one metadata file per finished cell, atomic writes.

Layout of ``results/<run-id>/``::

    run.json              resolved configuration, environment and versions, status
    cells/<cell>.csv      tidy records of one cell: one row per test episode x step
    cells/<cell>.val.csv  its meta-validation curve: one row per validation point x step (mean over the meta-val
                          episodes; columns suite, setting, learner, seed, tasks_seen, step, metric, train_loss)
    cells/<cell>.train.csv  its meta-training curve: about 100 rows of the mean training loss since the previous row
                          (columns suite, setting, learner, seed, tasks_seen, train_loss); failed cells keep theirs
    cells/<cell>.json     the cell's metadata (status, timings, memory, configuration, fingerprint);
                          written last, so its presence marks the cell finished
    cells/<cell>.checkpoint.pt   mid-cell meta-training state (``--checkpoint-every``), while the cell runs
    cells/<cell>.model.pt   the model its test scored (``--save-models``; ``bench.saved_models``)
    cells/corrupt/        cell files found unreadable when the run was resumed (those cells re-run)
    records.csv           all cells' records together (written at the end of a run)
    report.md             the comparison report (tables, figures/, provenance); also report.html
    summary.csv           the report's numbers, machine-readable
    figures/*.png         adaptation curves, metric vs. time, final-metric bars, learning curves (meta-val)

Everything is CSV or JSON: data anyone can open, never pickles, and nothing in a run folder is ever
executed. A run folder can be re-entered: finished cells are kept and skipped (failed ones run again),
and a folder holding a different configuration is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cells import CellMetadata, CellStatus
from bench.errors import BenchError

FORMAT_VERSION = 1
RUN_FILE = "run.json"
CELLS_DIR = "cells"
RECORDS_FILE = "records.csv"


class StoreError(BenchError, RuntimeError):
    """The results folder cannot be used; the message names the path and the problem."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


NOT_IDENTITY = ("out", "save_models")
"""Configuration keys that change no result: where the folder is (it may move), whether models are kept."""


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's configuration that determines its results (not the ``NOT_IDENTITY`` keys)."""
    return {key: value for key, value in config.items() if key not in NOT_IDENTITY}


def checkpoint_file(cells_dir: Path, cell_id: str) -> Path:
    """The mid-cell checkpoint of a cell (``--checkpoint-every``), beside its records."""
    return cells_dir / f"{cell_id}.checkpoint.pt"


def validation_file(cells_dir: Path, cell_id: str) -> Path:
    """A cell's meta-validation curve."""
    return cells_dir / f"{cell_id}.val.csv"


def training_file(cells_dir: Path, cell_id: str) -> Path:
    """A cell's meta-training curve."""
    return cells_dir / f"{cell_id}.train.csv"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{path} is unreadable or corrupt ({error}); move it away to re-run that part") from None


RESUME_KEYS = ("started", "host", "metabench", "git_revision", "command", "device_name", "execution")
"""What ``run.json`` records of each resume of a run (``environment.resumes``)."""


class RunStore:
    """One run folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells_dir = path / CELLS_DIR

    def open(self, config: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
        """Create the folder, or re-enter it when it holds a run of the same configuration. Returns the environment
        to record: ``environment``, or on re-entering the run's original one (its command, start, versions) with
        this start listed under ``resumes``."""
        run_file = self.path / RUN_FILE
        digest = config_hash(run_identity(config))
        if run_file.exists():
            existing = _read_json(run_file)
            original = existing.get("environment", {})
            environment = {**original, "resumes": [*original.get("resumes", []),
                                                   {key: environment.get(key) for key in RESUME_KEYS}]}
            if existing.get("format_version", 0) > FORMAT_VERSION:
                raise StoreError(f"{self.path} was written by a newer metabench (format {existing['format_version']})")
            if existing.get("config_hash") != digest:
                before = run_identity(existing.get("config", {}))
                changed = sorted(key for key in set(run_identity(config)) | set(before)
                                 if config.get(key) != before.get(key))
                raise StoreError(
                    f"{self.path} holds a run with a different configuration (differs in: {', '.join(changed)}); "
                    "choose another --out or remove that folder"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path} exists and is not a metabench run folder; choose another --out")
        try:
            self.cells_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cells_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise StoreError(f"cannot write to {self.path}: {error.strerror}") from None
        self.write_run_file(config, environment, status="running")
        return environment

    def write_run_file(self, config: dict[str, Any], environment: dict[str, Any], status: str) -> None:
        atomic_write_json(
            self.path / RUN_FILE,
            {
                "format_version": FORMAT_VERSION,
                "status": status,
                "config": config,
                "config_hash": config_hash(run_identity(config)),
                "environment": environment,
            },
        )

    def run_info(self) -> dict[str, Any]:
        run_file = self.path / RUN_FILE
        if not run_file.exists():
            raise StoreError(f"{self.path} is not a metabench run folder (no {RUN_FILE})")
        return _read_json(run_file)

    def cells_to_run(self, planned: dict[str, str], warn: Callable[[str], None] = lambda message: None) -> set[str]:
        """Of the planned cells (id -> fingerprint), those to run: new, failed, or found corrupt (moved to
        ``cells/corrupt/``, with a warning). A finished cell with another fingerprint is refused: its
        numbers came from another configuration or plugin version and must not be mixed in."""
        todo, stale = set(planned), []
        for cell_id, fingerprint in planned.items():
            path = self.cells_dir / f"{cell_id}.json"
            if not path.exists():
                continue
            metadata, problem = self._read_cell(path)
            if problem:
                warn(f"{path}: {problem}; moved to {self._quarantine(cell_id)}/, the cell runs again")
            elif metadata.cell_fingerprint not in (None, fingerprint):
                stale.append(cell_id)
            elif metadata.status is not CellStatus.FAILED:
                todo.discard(cell_id)
        if stale:
            raise StoreError(f"{self.path}: finished cells were run with another configuration or plugin version "
                             f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); choose another --out")
        return todo

    def _read_cell(self, path: Path) -> tuple[CellMetadata | None, str | None]:
        """A cell's metadata, and why its files cannot be used (None when they can)."""
        try:
            metadata = CellMetadata.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            return None, f"unreadable or corrupt ({type(error).__name__}: {error})"
        if metadata.status is not CellStatus.OK:
            return metadata, None
        records = path.with_suffix(".csv")
        try:
            rows = len(pd.read_csv(records))
        except (OSError, ValueError) as error:
            return metadata, f"its records {records.name} are unreadable or missing ({type(error).__name__})"
        if metadata.record_rows not in (None, rows):
            return metadata, f"its records {records.name} are truncated ({rows} of {metadata.record_rows} rows)"
        return metadata, None

    def _quarantine(self, cell_id: str) -> Path:
        folder = self.cells_dir / "corrupt" / time.strftime("%Y%m%d-%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".csv", ".val.csv", ".train.csv"):
            source = self.cells_dir / f"{cell_id}{suffix}"
            if source.exists():
                os.replace(source, folder / source.name)
        return folder

    def write_cell(self, cell_id: str, metadata: CellMetadata, records: pd.DataFrame | None,
                   validation: pd.DataFrame | None = None, training: pd.DataFrame | None = None) -> None:
        """Records, validation rows and training curve first, metadata (with the record count) last: a cell counts as
        finished only once all are in place."""
        try:
            if training is not None:
                atomic_write_text(training_file(self.cells_dir, cell_id), training.to_csv(index=False))
            else:  # not an earlier attempt's
                training_file(self.cells_dir, cell_id).unlink(missing_ok=True)
            if validation is not None:
                atomic_write_text(validation_file(self.cells_dir, cell_id), validation.to_csv(index=False))
            if records is not None:
                atomic_write_text(self.cells_dir / f"{cell_id}.csv", records.to_csv(index=False))
                metadata = dataclasses.replace(metadata, record_rows=len(records))
            atomic_write_json(self.cells_dir / f"{cell_id}.json", metadata.to_json())
            if metadata.status is not CellStatus.FAILED:  # a failed cell runs again from its checkpoint
                checkpoint_file(self.cells_dir, cell_id).unlink(missing_ok=True)
        except OSError as error:
            raise StoreError(f"cannot write cell {cell_id} to {self.cells_dir}: {error.strerror or error}; the cells "
                             f"finished before are kept: free the space, then resume with bench run --resume {self.path}") from None

    def write_report(self, records: pd.DataFrame, files: dict[str, str | bytes]) -> None:
        """``records.csv`` and the report's files (paths relative to the run folder), each written atomically."""
        atomic_write_text(self.path / RECORDS_FILE, records.to_csv(index=False))
        for name, content in files.items():
            path = self.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, content.encode() if isinstance(content, str) else content)

    def cells(self) -> list[CellMetadata]:
        """The metadata of every cell written so far."""
        cells = []
        for path in sorted(self.cells_dir.glob("*.json")):
            try:
                cells.append(CellMetadata.from_json(_read_json(path)))
            except (ValueError, TypeError) as error:
                raise StoreError(f"{path} is not a cell's metadata ({error}); move it away to re-run that cell") from None
        return cells

    def failed_cells(self) -> int:
        return sum(cell.status is CellStatus.FAILED for cell in self.cells())

    def validation(self) -> pd.DataFrame:
        """Every finished cell's meta-validation rows (an empty frame when none has any)."""
        return self._finished_rows(validation_file)

    def training(self) -> pd.DataFrame:
        """Every finished cell's training curve (an empty frame when none has one: a run from before them)."""
        return self._finished_rows(training_file)

    def _finished_rows(self, file: Callable[[Path, str], Path]) -> pd.DataFrame:
        """The rows of every finished cell's ``file`` that exists, together."""
        frames = []
        for cell in self.cells():
            path = file(self.cells_dir, cell.cell_id)
            if cell.status is not CellStatus.OK or not path.exists():
                continue
            try:
                frames.append(pd.read_csv(path))
            except (OSError, ValueError) as error:
                raise StoreError(f"{path} is unreadable or corrupt ({error}); delete it and its .json to re-run that cell") from None
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def records(self) -> pd.DataFrame:
        frames = []
        for cell in self.cells():
            if cell.status is not CellStatus.OK:
                continue
            path = self.cells_dir / f"{cell.cell_id}.csv"
            try:
                frames.append(pd.read_csv(path))
            except (OSError, ValueError) as error:
                raise StoreError(f"{path} is unreadable or corrupt ({error}); delete it and its .json to re-run that cell") from None
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
