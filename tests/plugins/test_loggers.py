"""The built-in live loggers, TensorBoard and MLflow, in a real ``bench run`` (their numbers read back through their own
readers and compared with the run folder's CSV files); and the bad cases: an unknown or unavailable logger, a wrong
option, a logger that raises."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import cells_of

from bench import cli

CELL = "sinusoid__K=5__maml__seed0"
RUN = ("run", "--learners", "maml", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--tasks", "100",
       "--episodes", "3", "--steps", "1", "--val-every", "50", "--no-progress")

BROKEN = '''
from bench import hookimpl
from bench.loggers import Logger

class Broken(Logger):
    """Raises at its second training row."""

    def train(self, tasks_seen, loss):
        if tasks_seen > 25:
            raise OSError("disk full\\nsecond line")

@hookimpl
def register_loggers(register):
    register("broken", Broken)
'''


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, float_precision="round_trip")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy 2.1 on MLflow's own ORM options
def test_tensorboard_and_mlflow_hear_the_training_and_validation_curves_of_the_csv_files(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli.main([*RUN, "--loggers", "tensorboard,mlflow", "--out", str(out)]) == 0
    assert "logger" not in capsys.readouterr().err
    training, validation = read_csv(out / "cells" / f"{CELL}.train.csv"), read_csv(out / "cells" / f"{CELL}.val.csv")
    assert training["tasks_seen"].tolist() == [25, 50, 75, 100] and sorted(set(validation["tasks_seen"])) == [50, 100]
    expected = {"train_loss": list(zip(training["tasks_seen"], training["train_loss"]))}
    for step, rows in validation.groupby("step"):
        expected[f"val_MSE/step_{step}"] = list(zip(rows["tasks_seen"], rows["metric"]))
    execution = json.loads((out / "run.json").read_text())["environment"]["execution"]
    assert execution["loggers"] == ["tensorboard", "mlflow"]

    events = EventAccumulator(str(out / "tensorboard" / CELL))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():  # event files hold float32
        assert [(event.step, event.value) for event in events.Scalars(tag)] == [
            (tasks, pytest.approx(value, rel=1e-6)) for tasks, value in points]

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert (run.info.run_name, run.info.status) == (CELL, "FINISHED")
    assert run.data.tags["metabench.learner"] == "maml" and run.data.params["task_budget"] == "100"
    assert float(run.data.params["inner_lr"]) == cells_of(out)[CELL]["hyperparameters"]["inner_lr"]
    for key, points in expected.items():
        assert [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, key)] == points


def test_cells_in_worker_processes_log_from_their_workers(tmp_path):
    """Two cells in two worker processes: each worker's TensorBoard writer holds its own cell's curve."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli.main([*RUN, "--learners", "maml,fomaml", "--executor", "processes", "--workers", "2",
                     "--loggers", "tensorboard", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["environment"]["execution"]["executor"] == "processes"
    for cell in ("sinusoid__K=5__maml__seed0", "sinusoid__K=5__fomaml__seed0"):
        training = read_csv(out / "cells" / f"{cell}.train.csv")
        events = EventAccumulator(str(out / "tensorboard" / cell))
        events.Reload()
        expected = zip(training["tasks_seen"], training["train_loss"])
        assert [(event.step, event.value) for event in events.Scalars("train_loss")] == [
            (tasks, pytest.approx(loss, rel=1e-6)) for tasks, loss in expected]


def test_an_unknown_logger_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*RUN, "--loggers", "tensorboard,wandb", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("bench run: error: unknown logger 'wandb'; valid loggers: all, mlflow, "
                                       "tensorboard\n")
    assert not out.exists()


def test_a_logger_without_its_extra_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    from bench_plugins.loggers.tensorboard import TensorBoardLogger

    monkeypatch.setattr(TensorBoardLogger, "requires", ("metabench_absent_module",))
    out = tmp_path / "run"
    assert cli.main([*RUN, "--loggers", "tensorboard", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "bench run: error: logger 'tensorboard' is unavailable: needs metabench_absent_module, which is not installed "
        "(pip install 'metabench[tensorboard]')\n")
    assert not out.exists()


@pytest.mark.parametrize(("option", "message"), [
    ("tensorboard.logdir=x", "--logger-option 'tensorboard.logdir=x': logger 'tensorboard' takes no option 'logdir'; "
                             "valid: log_dir"),
    ("mlflow.experiment=x", "--logger-option 'mlflow.experiment=x': 'mlflow' is not among --loggers (tensorboard)"),
    ("log_dir", "--logger-option 'log_dir': expected NAME.KEY=VALUE, e.g. mlflow.tracking_uri=sqlite:///m.db"),
])
def test_a_wrong_logger_option_is_one_line_before_any_work(tmp_path, capsys, option, message):
    out = tmp_path / "run"
    assert cli.main([*RUN, "--loggers", "tensorboard", "--logger-option", option, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"bench run: error: {message}\n"
    assert not out.exists()


def test_a_logger_option_is_used(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
    out, logs = tmp_path / "run", tmp_path / "logs"
    assert cli.main([*RUN, "--loggers", "tensorboard", "--logger-option", f"tensorboard.log_dir={logs}",
                     "--out", str(out)]) == 0
    assert list((logs / CELL).glob("events.out.tfevents.*")) and not (out / "tensorboard").exists()


def test_a_logger_that_raises_is_dropped_with_one_note_and_the_cell_finishes(tmp_path, capsys, install):
    install("broken-logger", {"broken_logger": BROKEN}, {"broken": "broken_logger"})
    out = tmp_path / "run"
    assert cli.main([*RUN, "--seeds", "2", "--seeds-together", "1", "--loggers", "broken", "--out", str(out)]) == 0
    note = "logger 'broken' failed (OSError: disk full); the cell went on without it"
    assert capsys.readouterr().err.count(note) == 1  # said once, though both cells dropped it
    for cell in cells_of(out).values():
        assert cell["status"] == "ok" and note in cell["notes"]
        assert read_csv(out / "cells" / f"{cell['cell_id']}.train.csv")["tasks_seen"].tolist() == [25, 50, 75, 100]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy 2.1 on MLflow's own ORM options
def test_mlflow_marks_the_run_of_a_killed_attempt_killed_when_the_cell_starts_again(tmp_path):
    """A process killed mid-cell leaves its MLflow run RUNNING; the resumed cell's logger marks it KILLED and starts
    its own, which finishes. A cell of another run folder with the same id is left alone."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
    from bench_plugins.loggers.mlflow import MLflowLogger
    from mlflow.tracking import MlflowClient

    options = {"tracking_uri": f"sqlite:///{tmp_path / 'common.db'}", "experiment": "common"}
    cell = {"cell_id": CELL, "suite": "sinusoid", "setting": "K=5", "learner": "maml", "seed": 0,
            "hyperparameters": {"inner_lr": 0.01}, "task_budget": 100, "metric_name": "MSE", "lower_is_better": True}
    first_run, other_run = tmp_path / "run", tmp_path / "other"
    MLflowLogger.prepare(first_run, options)
    other = MLflowLogger(other_run, options)
    other.start(cell)  # another run folder's cell of the same id, still running
    killed = MLflowLogger(first_run, options)
    killed.start(cell)
    killed.train(25, 1.5)  # ... and the process dies here
    resumed = MLflowLogger(first_run, options)
    resumed.start(cell)
    resumed.train(25, 1.5)
    resumed.finish("ok")
    client = MlflowClient(tracking_uri=options["tracking_uri"])
    statuses = {run.info.run_id: run.info.status
                for run in client.search_runs([client.get_experiment_by_name("common").experiment_id])}
    assert statuses == {killed.run_id: "KILLED", resumed.run_id: "FINISHED", other.run_id: "RUNNING"}
