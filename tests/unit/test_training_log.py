"""The training curve of every cell (``cells/<cell>.train.csv``): its rows and their means, across a resume from a
checkpoint, up to a failure or a timeout, for each seed of a group, in ``bench db`` and in the report; and what live
loggers hear of it."""
from __future__ import annotations

import dataclasses
import math
import sqlite3
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import interrupt_once_saved, readme_sql

from bench import db, hookimpl
from bench.api import Learner
from bench.cells import CellStatus
from bench.config import RunConfig
from bench.grid import plan
from bench.loggers import Logger, LoggerSpec
from bench.plugins import PluginSource, load_plugins
from bench.report_files import write_report
from bench.runner import run_cells
from bench.store import RunStore, checkpoint_file, training_file

BUDGET, BATCH = 1000, 3
IDENTITY = ["suite", "setting", "learner", "seed"]


@dataclasses.dataclass
class NoConfig:
    pass


class Counting(Learner):
    """Logs the loss (tasks seen) / 1000 after each batch of 3 tasks (NaN once past ``diverges_after`` tasks) and
    offers {"c": that loss} as its checkpoint and state."""

    Config = NoConfig
    diverges_after = math.inf

    def meta_train(self, ctx):
        saved = ctx.restore()
        self.c = saved["c"] if saved else torch.tensor(0.0)
        seen = int(self.c * 1000)
        for batch in ctx.batches(BATCH):
            seen += batch.support_x.shape[0]
            self.c = torch.tensor(seen / 1000)
            ctx.log(torch.tensor(math.nan) if seen > self.diverges_after else self.c)
            ctx.checkpoint(lambda: {"c": self.c})

    def adapt(self, support, steps):
        for _ in range(steps + 1):
            yield lambda x: torch.full_like(x, float(self.c))

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state["c"]


class Diverging(Counting):
    """As Counting, but its loss is NaN after 500 tasks."""

    diverges_after = 500


class Recorder(Logger):
    """Keeps every event it hears, by cell, in ``events``."""

    events: dict[str, list[tuple]] = {}

    def start(self, cell):
        self.cell = cell["cell_id"]
        Recorder.events[self.cell] = [("start", cell["learner"], cell["task_budget"])]

    def train(self, tasks_seen, loss):
        Recorder.events[self.cell].append(("train", tasks_seen, loss))

    def validation(self, tasks_seen, means):
        Recorder.events[self.cell].append(("validation", tasks_seen, means))

    def finish(self, status):
        Recorder.events[self.cell].append(("finish", status))


@pytest.fixture(scope="module")
def registry():
    module = types.ModuleType("counting_learners")
    module.register_learners = hookimpl(lambda register: [register("counting", Counting),
                                                          register("diverging", Diverging)])
    return load_plugins(strict=True, extra=[(PluginSource("test", "tests", "tests", "0"), module)])


def run(registry, out: Path, learners=("counting",), checkpoint_every: int | None = None, seeds_together: int = 0,
        cell_timeout: float | None = None, **overrides) -> RunStore:
    config = RunConfig(**{**dict(learners=list(learners), profile="smoke", shots=[5], episodes=2, tasks=BUDGET,
                                 steps=1, val_every=250, val_episodes=2), **overrides})
    store = RunStore(out)
    store.open({"test": True}, {})
    run_cells(plan(config, registry), config, store, torch.device("cpu"), show_progress=False,
              checkpoint_every=checkpoint_every, seeds_together=seeds_together, cell_timeout=cell_timeout,
              loggers=(LoggerSpec("recorder", Recorder, str(out)),))
    return store


def curve(store: RunStore, learner: str = "counting") -> pd.DataFrame:
    return pd.read_csv(training_file(store.cells_dir, f"sinusoid__K=5__{learner}__seed0"), float_precision="round_trip")


def logged_between(start: int, end: int) -> list[float]:
    """What Counting logged after the batches that ended in (start, end]."""
    ends = [min(seen, BUDGET) for seen in range(BATCH, BUDGET + BATCH, BATCH)]
    return [seen / 1000 for seen in ends if start < seen <= end]


def test_a_row_each_hundredth_of_the_budget_holds_the_mean_of_the_losses_logged_since_the_last(registry, tmp_path):
    store = run(registry, tmp_path / "run")
    rows = curve(store)
    assert list(rows.columns) == [*IDENTITY, "tasks_seen", "train_loss"]
    assert rows[IDENTITY].drop_duplicates().values.tolist() == [["sinusoid", "K=5", "counting", 0]]
    # a row at the first batch end past each multiple of 10 tasks (1000 / 100): 12, 21, 30, 42, ..., 1000
    assert len(rows) == 100 and rows["tasks_seen"].is_monotonic_increasing and rows["tasks_seen"].iloc[-1] == BUDGET
    assert rows["tasks_seen"].iloc[:4].tolist() == [12, 21, 30, 42]
    starts = [0, *rows["tasks_seen"].iloc[:-1]]
    expected = [np.mean(logged_between(start, end)) for start, end in zip(starts, rows["tasks_seen"])]
    np.testing.assert_allclose(rows["train_loss"], expected, rtol=1e-6)
    assert sum(len(logged_between(start, end)) for start, end in zip(starts, rows["tasks_seen"])) == 334  # every loss
    # the meta-val points (at the first batch end past every 250 tasks) are as before
    assert sorted(store.validation()["tasks_seen"].unique()) == [252, 501, 750, 1000]

    events = Recorder.events["sinusoid__K=5__counting__seed0"]
    assert events[0] == ("start", "counting", BUDGET) and events[-1] == ("finish", "ok")
    trained = [(tasks, loss) for kind, tasks, loss in (event for event in events if event[0] == "train")]
    assert trained == list(zip(rows["tasks_seen"], rows["train_loss"]))  # the loggers hear exactly the CSV's rows
    points = [event for event in events if event[0] == "validation"]
    assert [tasks for _, tasks, _ in points] == [252, 501, 750, 1000] and list(points[0][2]) == [0, 1]
    order = [(event[1], event[0]) for event in events[1:-1]]  # a point after the row of the batch that reached it
    assert order.index((252, "train")) < order.index((252, "validation"))


def test_a_resumed_cell_has_every_row_once_and_its_loggers_hear_the_whole_curve(registry, tmp_path, monkeypatch):
    whole = curve(run(registry, tmp_path / "whole"))
    out = tmp_path / "interrupted"
    checkpoint = checkpoint_file(out / "cells", "sinusoid__K=5__counting__seed0")
    save_normally = interrupt_once_saved(monkeypatch, checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(registry, out, checkpoint_every=400)
    assert checkpoint.exists() and not training_file(out / "cells", "sinusoid__K=5__counting__seed0").exists()
    save_normally()
    store = run(registry, out, checkpoint_every=400)
    (cell,) = store.cells()
    assert cell.resumed_from_tasks == 402 and cell.status is CellStatus.OK
    pd.testing.assert_frame_equal(curve(store), whole)
    events = Recorder.events["sinusoid__K=5__counting__seed0"]  # the second attempt's: restored rows replayed first
    assert [(tasks, loss) for kind, tasks, loss in (e for e in events if e[0] == "train")] == list(
        zip(whole["tasks_seen"], whole["train_loss"]))
    assert [event[1] for event in events if event[0] == "validation"] == [252, 501, 750, 1000]


def test_a_failed_cell_keeps_its_curve_up_to_the_failure_and_bench_db_reads_it(registry, tmp_path):
    store = run(registry, tmp_path / "results" / "run", learners=("counting", "diverging"))
    failed = next(cell for cell in store.cells() if cell.learner == "diverging")
    assert failed.status is CellStatus.FAILED and "training loss became nan" in failed.error
    rows = curve(store, "diverging")
    finite = rows[rows["tasks_seen"] <= 500]  # NaN from 501 tasks on; the host notices it at its next check
    assert len(finite) == 49 and np.isfinite(finite["train_loss"]).all()
    np.testing.assert_allclose(finite["train_loss"], curve(store)["train_loss"].iloc[:49], rtol=1e-6)
    assert rows["tasks_seen"].iloc[-1] == failed.tasks_seen and rows["train_loss"].iloc[49:].isna().all()
    assert Recorder.events["sinusoid__K=5__diverging__seed0"][-1] == ("finish", "failed")
    assert store.training()["learner"].unique().tolist() == ["counting"]  # the report reads finished cells only

    database = tmp_path / "results.db"
    db.build(tmp_path / "results", database, warn=pytest.fail)
    stored = pd.read_sql("SELECT * FROM train_curves ORDER BY cell_id, tasks_seen", sqlite3.connect(database))
    assert set(stored["run"]) == {"run"}
    files = pd.concat([curve(store), rows])
    assert len(stored) == len(files) == 100 + len(rows)
    pd.testing.assert_frame_equal(
        stored[[*IDENTITY, "tasks_seen", "train_loss"]].sort_values(["learner", "tasks_seen"]).reset_index(drop=True),
        files.sort_values(["learner", "tasks_seen"]).reset_index(drop=True))
    *_, last_loss_of_failed_cells = readme_sql()  # the README's example, as written
    (last,) = pd.read_sql(last_loss_of_failed_cells, sqlite3.connect(database)).itertuples()
    assert (last.cell_id, last.tasks_seen, last.error) == (failed.cell_id, failed.tasks_seen, failed.error)
    assert pd.isna(last.train_loss)


def test_each_seed_of_a_group_has_its_own_curve_as_it_would_alone(registry, tmp_path):
    options = dict(learners=("maml",), tasks=100, val_every=50, seeds=2)
    together = run(registry, tmp_path / "together", **options)
    assert all(cell.seed_group == [0, 1] for cell in together.cells())
    alone = run(registry, tmp_path / "alone", seeds_together=1, **options)
    assert all(len(cell.seed_group or [cell.seed]) == 1 for cell in alone.cells())
    curves, apart = together.training(), alone.training()
    assert len(curves) == 2 * 4 and set(curves["seed"]) == {0, 1}
    assert curves.groupby("seed")["tasks_seen"].apply(list).tolist() == [[25, 50, 75, 100]] * 2  # meta-batch 25
    mine = curves.set_index(["seed", "tasks_seen"])["train_loss"]
    assert not np.allclose(mine[0], mine[1])  # each seed its own
    np.testing.assert_allclose(mine, apart.set_index(["seed", "tasks_seen"])["train_loss"].loc[mine.index], rtol=1e-4)


def test_each_seed_of_a_group_that_runs_out_of_time_keeps_its_curve(registry, tmp_path):
    """maml's 2 seeds train together under --cell-timeout 2 (4 s for the group) on a budget that takes minutes."""
    store = run(registry, tmp_path / "run", learners=("maml",), tasks=200_000, val_episodes=0, seeds=2,
                cell_timeout=2)
    cells = store.cells()
    timed_out = "CellTimeoutError: the group of 2 seeds ran longer than --cell-timeout 4 s"
    assert [cell.error for cell in cells] == [timed_out] * 2
    for cell in cells:  # the report reads finished cells only: the files themselves
        rows = pd.read_csv(training_file(store.cells_dir, cell.cell_id))
        assert rows["seed"].unique().tolist() == [cell.seed]
        assert len(rows) >= 1 and 0 < rows["tasks_seen"].iloc[-1] <= cell.tasks_seen < 200_000
        assert np.isfinite(rows["train_loss"]).all()
        assert Recorder.events[cell.cell_id][-1] == ("finish", "failed")


def test_the_report_plots_the_training_curve_and_old_run_folders_still_render(registry, tmp_path):
    store = run(registry, tmp_path / "run")
    report, figures = write_report(store)
    ((learning,),) = report.learning_curves.values()
    pd.testing.assert_frame_equal(learning.training, curve(store)[["tasks_seen", "train_loss"]])
    assert "sinusoid-K-5-learning.png" in figures
    training_file(store.cells_dir, "sinusoid__K=5__counting__seed0").unlink()  # a run folder from before the curves
    report, figures = write_report(store)
    ((learning,),) = report.learning_curves.values()
    assert learning.training is None and learning.points["tasks_seen"].tolist() == [252, 501, 750, 1000]
    assert "sinusoid-K-5-learning.png" in figures


class Slow(Recorder):
    """A Recorder that takes 20 ms for each training row."""

    def train(self, tasks_seen, loss):
        time.sleep(0.02)
        super().train(tasks_seen, loss)


def test_time_spent_in_the_loggers_is_not_meta_training_time(registry, tmp_path):
    config = RunConfig(learners=["counting"], profile="smoke", shots=[5], episodes=2, tasks=BUDGET, steps=1,
                       val_episodes=0)
    store = RunStore(tmp_path / "run")
    store.open({"test": True}, {})
    began = time.perf_counter()
    run_cells(plan(config, registry), config, store, torch.device("cpu"), show_progress=False,
              loggers=(LoggerSpec("slow", Slow, str(tmp_path)),))
    (cell,) = store.cells()
    assert time.perf_counter() - began > 2.0  # 100 rows x 20 ms
    assert cell.meta_train_seconds < 1.0
