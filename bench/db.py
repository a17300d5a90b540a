"""``bench db``: one SQLite database of every run folder and tune folder under a results folder, kept up to date.

Each build walks the results folder for ``run.json`` (a run) and ``tune.json`` (a ``bench tune`` folder). A folder
whose files are unchanged since the last build (same names, sizes and modification times of ``run.json`` and the
cell files, or of ``tune.json`` and ``study.db``) is skipped; a changed one is read whole, then replaced in one
transaction; a folder that vanished is removed. A folder that cannot be read (corrupt ``run.json``, an unreadable
cell file) is named in one warning and keeps whatever an earlier build stored of it; every other folder is built.

Tables (every child table's ``run`` is ``runs.path``, the folder relative to the results folder; deleting a run
deletes its rows): ``runs``, ``cells`` (every ``CellMetadata`` field; dicts and lists as JSON text), ``records``
(test episodes x steps), ``val_curves`` (meta-validation points), ``train_curves`` (meta-training loss against
tasks seen, failed cells' too), ``results`` (the report's headline number per
learner and setting, ``bench.headline``), ``tuning_trials`` and ``provenance`` (the run's environment, flattened to
dotted keys). The schema's text is stored in ``db_info``; a database built with another schema is rebuilt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cells import CellMetadata, CellStatus
from bench.errors import BenchError
from bench.headline import Headline, headlines
from bench.report import Report
from bench.store import CELLS_DIR, RUN_FILE, RunStore, training_file, validation_file
from bench.tune_study import STUDY_FILE, TUNE_FILE

RUN_KEY = "TEXT NOT NULL REFERENCES runs(path) ON DELETE CASCADE"
RECORD_COLUMNS = ("suite", "setting", "learner", "seed", "episode", "step", "metric")
VAL_COLUMNS = ("suite", "setting", "learner", "seed", "tasks_seen", "step", "metric", "train_loss")
TRAIN_COLUMNS = ("suite", "setting", "learner", "seed", "tasks_seen", "train_loss")


def _sql_type(annotation: str) -> str:
    """The SQLite type of a dataclass field's annotation (JSON text for dicts and lists)."""
    for name, kind in (("dict", "TEXT"), ("list", "TEXT"), ("bool", "INTEGER"), ("int", "INTEGER"), ("float", "REAL")):
        if name in str(annotation):
            return kind
    return "TEXT"


def _fields(cls: type) -> tuple[tuple[str, str], ...]:
    return tuple((field.name, _sql_type(field.type)) for field in dataclasses.fields(cls))


SCHEMA: dict[str, tuple[tuple[str, str], ...]] = {
    "runs": (("path", "TEXT PRIMARY KEY"), ("kind", "TEXT NOT NULL"), ("status", "TEXT"), ("started", "TEXT"),
             ("command", "TEXT"), ("config_hash", "TEXT"), ("format_version", "INTEGER"), ("profile", "TEXT"),
             ("seeds", "INTEGER"), ("suites", "TEXT"), ("learners", "TEXT"), ("tuned_study", "TEXT"),
             ("tuned_trials", "INTEGER"), ("tuned_trial_tasks", "INTEGER"), ("metabench", "TEXT"), ("torch", "TEXT"),
             ("python", "TEXT"), ("host", "TEXT"), ("device", "TEXT"), ("device_name", "TEXT"),
             ("git_revision", "TEXT"), ("resumes", "INTEGER"), ("resumes_json", "TEXT"), ("config", "TEXT"),
             ("fingerprint", "TEXT NOT NULL"), ("indexed", "TEXT NOT NULL")),
    "cells": (("run", RUN_KEY), *_fields(CellMetadata)),
    "records": (("run", RUN_KEY), ("cell_id", "TEXT NOT NULL"), ("suite", "TEXT"), ("setting", "TEXT"),
                ("learner", "TEXT"), ("seed", "INTEGER"), ("episode", "INTEGER"), ("step", "INTEGER"),
                ("metric", "REAL")),
    "val_curves": (("run", RUN_KEY), ("cell_id", "TEXT NOT NULL"), ("suite", "TEXT"), ("setting", "TEXT"),
                   ("learner", "TEXT"), ("seed", "INTEGER"), ("tasks_seen", "INTEGER"), ("step", "INTEGER"),
                   ("metric", "REAL"), ("train_loss", "REAL")),
    "train_curves": (("run", RUN_KEY), ("cell_id", "TEXT NOT NULL"), ("suite", "TEXT"), ("setting", "TEXT"),
                     ("learner", "TEXT"), ("seed", "INTEGER"), ("tasks_seen", "INTEGER"), ("train_loss", "REAL")),
    "results": (("run", RUN_KEY), *_fields(Headline)),
    "tuning_trials": (("run", RUN_KEY), ("study", "TEXT"), ("learner", "TEXT"), ("suite", "TEXT"), ("setting", "TEXT"),
                      ("metric_name", "TEXT"), ("lower_is_better", "INTEGER"), ("trial", "INTEGER"), ("state", "TEXT"),
                      ("value", "REAL"), ("params", "TEXT"), ("tasks_seen", "INTEGER"), ("error", "TEXT")),
    "provenance": (("run", RUN_KEY), ("key", "TEXT NOT NULL"), ("value", "TEXT")),
}
"""Every table's columns and their SQLite types, in insertion order."""
PRIMARY_KEYS = {"cells": ("run", "cell_id"), "results": ("run", "suite", "setting", "learner"),
                "provenance": ("run", "key")}

Rows = dict[str, list[tuple]]
"""A folder's rows by table, each a tuple in ``SCHEMA`` order."""


def _statements() -> list[str]:
    """The CREATE statements of the schema (tables, and an index on every child table's run)."""
    statements = []
    for table, columns in SCHEMA.items():
        keys = f", PRIMARY KEY ({', '.join(PRIMARY_KEYS[table])})" if table in PRIMARY_KEYS else ""
        statements.append(f"CREATE TABLE {table} ({', '.join(f'{name} {kind}' for name, kind in columns)}{keys})")
        if table != "runs":
            statements.append(f"CREATE INDEX {table}_run ON {table} (run)")
    return statements


class FolderError(BenchError):
    """A run or tune folder cannot be read; the message says which file and why."""


def _value(value: Any) -> Any:
    """A Python value as SQLite stores it: dicts and lists as JSON text, enums by value."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, CellStatus):
        return value.value
    return value


def _row(*values: Any) -> tuple:
    return tuple(_value(value) for value in values)


def find_folders(results: Path) -> dict[str, tuple[str, Path]]:
    """Every run folder (``run``) and tune folder (``tune``) under ``results``, by path relative to it."""
    found = {}
    for marker, kind in ((RUN_FILE, "run"), (TUNE_FILE, "tune")):
        for file in results.rglob(marker):
            found[file.parent.relative_to(results).as_posix()] = (kind, file.parent)
    return dict(sorted(found.items()))


def fingerprint(kind: str, folder: Path) -> str:
    """A digest of the names, sizes and modification times of the files a folder's rows are read from."""
    if kind == "run":
        cells = folder / CELLS_DIR
        files = [folder / RUN_FILE, *sorted(cells.glob("*.json")), *sorted(cells.glob("*.csv"))]
    else:
        files = [folder / TUNE_FILE, folder / STUDY_FILE, folder / f"{STUDY_FILE}-wal"]
    digest = hashlib.sha256()
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, text) pairs; other values as text (JSON where not a string)."""
    if isinstance(value, dict) and value:
        return [pair for key, item in value.items() for pair in _flatten(item, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, value if isinstance(value, str) else json.dumps(value, default=str))]


def _run_row(info: dict[str, Any], kind: str) -> dict[str, Any]:
    """The ``runs`` columns read from a run.json or tune.json (all but path, fingerprint and indexed)."""
    config, environment = info.get("config", {}), info.get("environment", {})
    tuned = config.get("tuned") or {}
    resumes = environment.get("resumes", [])
    return {
        "kind": kind, "status": info.get("status"), "started": environment.get("started"),
        "command": " ".join(environment.get("command", [])) or None, "config_hash": info.get("config_hash"),
        "format_version": info.get("format_version"), "profile": config.get("profile"), "seeds": config.get("seeds"),
        "suites": config.get("suites"), "learners": config.get("learners"), "tuned_study": tuned.get("study"),
        "tuned_trials": tuned.get("trials"), "tuned_trial_tasks": tuned.get("trial_tasks"),
        "metabench": environment.get("metabench"), "torch": environment.get("libraries", {}).get("torch"),
        "python": environment.get("python"), "host": environment.get("host"), "device": environment.get("device"),
        "device_name": environment.get("device_name"), "git_revision": environment.get("git_revision"),
        "resumes": len(resumes), "resumes_json": resumes, "config": config,
    }


def _read_csv(path: Path, columns: tuple[str, ...], rows: int | None = None) -> pd.DataFrame:
    """A cell's CSV file with ``columns``; ``rows``: the count its metadata promises."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise FolderError(f"{path} is unreadable ({type(error).__name__}: {error})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FolderError(f"{path} lacks the columns {', '.join(missing)}")
    if rows not in (None, len(frame)):
        raise FolderError(f"{path} is truncated ({len(frame)} of {rows} rows)")
    return frame


def _frame_rows(path: str, cell_id: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple]:
    values = [frame[column].tolist() for column in columns]
    return [(path, cell_id, *row) for row in zip(*values)]


def read_run(path: str, folder: Path) -> Rows:
    """A run folder's rows (``runs`` without fingerprint and time)."""
    store = RunStore(folder)
    info = store.run_info()
    cells = store.cells()
    rows: Rows = {"cells": [_row(path, *(getattr(cell, name) for name, _ in SCHEMA["cells"][1:])) for cell in cells],
                  "records": [], "val_curves": [], "train_curves": []}
    frames = []
    for cell in cells:
        train = training_file(store.cells_dir, cell.cell_id)
        if train.exists():  # a failed cell's too: its curve up to the failure
            rows["train_curves"] += _frame_rows(path, cell.cell_id, _read_csv(train, TRAIN_COLUMNS), TRAIN_COLUMNS)
        if cell.status is not CellStatus.OK:
            continue
        records = _read_csv(store.cells_dir / f"{cell.cell_id}.csv", RECORD_COLUMNS, cell.record_rows)
        frames.append(records)
        rows["records"] += _frame_rows(path, cell.cell_id, records, RECORD_COLUMNS)
        val = validation_file(store.cells_dir, cell.cell_id)
        if val.exists():
            rows["val_curves"] += _frame_rows(path, cell.cell_id, _read_csv(val, VAL_COLUMNS), VAL_COLUMNS)
    report = Report(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), cells, info)
    rows["results"] = [_row(path, *dataclasses.astuple(headline)) for headline in headlines(report)]
    rows["provenance"] = [(path, key, value) for key, value in _flatten(info.get("environment", {}))]
    rows["runs"] = [_run_row(info, "run")]
    return rows


def _trials(path: str, folder: Path, studies: list[dict[str, Any]]) -> list[tuple]:
    """The ``tuning_trials`` rows of a tune folder's studies (``bench.tune_study.trial_rows``)."""
    import optuna
    import sqlalchemy.exc

    from bench.tune_study import storage_url, trial_rows

    rows = []
    try:
        storage = storage_url(folder)
        names = set(optuna.study.get_all_study_names(storage))
        for spec in studies:
            if spec["name"] not in names:
                continue
            for trial in trial_rows(optuna.load_study(study_name=spec["name"], storage=storage)):
                rows.append(_row(path, spec["name"], spec["learner"], spec["suite"], spec["setting"], spec["metric"],
                                 spec["lower_is_better"], trial.index, trial.state, trial.value, trial.params,
                                 trial.tasks_seen, trial.error))
    except KeyError as error:
        raise FolderError(f"{folder / TUNE_FILE} lists a study without its {error}") from None
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error  # the driver's one-line error, not SQLAlchemy's several lines
        raise FolderError(f"{folder / STUDY_FILE} is unreadable ({type(reason).__name__}: {reason})") from None
    return rows


def read_tune(path: str, folder: Path) -> Rows:
    """A tune folder's rows: its studies' trials and its environment. A tune killed before its first trial has no
    study.db (and none is created)."""
    from bench.tune import read_tune_file

    info = read_tune_file(folder)
    trials = _trials(path, folder, info.get("studies", [])) if (folder / STUDY_FILE).exists() else []
    return {"tuning_trials": trials, "runs": [_run_row(info, "tune")],
            "provenance": [(path, key, value) for key, value in _flatten(info.get("environment", {}))]}


READERS: dict[str, Callable[[str, Path], Rows]] = {"run": read_run, "tune": read_tune}


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    connection.execute("BEGIN")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def connect(database: Path) -> sqlite3.Connection:
    """The database at ``database`` with this schema (created, or rebuilt when it was built with another)."""
    schema = ";\n".join(_statements())
    try:
        connection = sqlite3.connect(database, isolation_level=None)
        connection.execute("PRAGMA foreign_keys = ON")
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        stored = (connection.execute("SELECT value FROM db_info WHERE key = 'schema'").fetchone()
                  if "db_info" in tables else None)
        if tables and "db_info" not in tables:
            raise BenchError(f"{database} holds tables bench db did not write; choose another --out")
        if stored != (schema,):
            with transaction(connection):
                for table in tables:
                    connection.execute(f"DROP TABLE {table}")
                connection.execute("CREATE TABLE db_info (key TEXT PRIMARY KEY, value TEXT)")
                connection.execute("INSERT INTO db_info VALUES ('schema', ?)", (schema,))
                for statement in _statements():
                    connection.execute(statement)
    except sqlite3.DatabaseError as error:
        raise BenchError(f"{database} is not a SQLite database this command can use ({error}); choose another --out") from None
    return connection


def _insert(connection: sqlite3.Connection, table: str, rows: list[tuple]) -> None:
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        connection.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def replace(connection: sqlite3.Connection, path: str, print_: str, rows: Rows) -> None:
    """Put a folder's rows in place of what the database held of it, in one transaction."""
    (run,) = rows["runs"]
    run = {**run, "fingerprint": print_, "indexed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with transaction(connection):
        connection.execute("DELETE FROM runs WHERE path = ?", (path,))
        _insert(connection, "runs", [_row(path, *(run[name] for name, _ in SCHEMA["runs"][1:]))])
        for table, table_rows in rows.items():
            if table != "runs":
                _insert(connection, table, table_rows)


@dataclasses.dataclass
class Build:
    """What a build did, by folder (paths relative to the results folder)."""

    added: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return ", ".join(f"{len(paths)} {name}" for name, paths in dataclasses.asdict(self).items())


def build(results: Path, database: Path, warn: Callable[[str], None]) -> Build:
    """Bring ``database`` up to date with every run and tune folder under ``results``; ``warn`` gets one line per
    folder that cannot be read."""
    if not results.is_dir():
        raise BenchError(f"no results folder at {results}")
    found, done = find_folders(results), Build()
    connection = connect(database)
    try:
        known = dict(connection.execute("SELECT path, fingerprint FROM runs").fetchall())
        for path in sorted(set(known) - set(found)):
            with transaction(connection):
                connection.execute("DELETE FROM runs WHERE path = ?", (path,))
            done.removed.append(path)
        for path, (kind, folder) in found.items():
            print_ = fingerprint(kind, folder)
            if known.get(path) == print_:
                done.unchanged.append(path)
                continue
            try:
                rows = READERS[kind](path, folder)
            except BenchError as error:
                kept = "; the database keeps what it held of it" if path in known else ""
                warn(f"skipped {folder}: {error}{kept}")
                done.unreadable.append(path)
                continue
            replace(connection, path, print_, rows)
            (done.updated if path in known else done.added).append(path)
    finally:
        connection.close()
    return done
