"""MLflow runs of each cell's meta-training, in the run folder's SQLite store by default (``mlflow-skinny``)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from bench.loggers import Logger


def tracking_uri(run_dir: Path, options: dict[str, str]) -> str:
    """The ``tracking_uri`` option, else ``$MLFLOW_TRACKING_URI``, else the SQLite store ``RUN/mlflow.db``."""
    return (options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")


def _client(run_dir: Path, options: dict[str, str]) -> Any:
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # not a line per new database on stderr
    return MlflowClient(tracking_uri=tracking_uri(run_dir, options))


def _experiment(run_dir: Path, options: dict[str, str]) -> str:
    return options.get("experiment") or run_dir.resolve().name


class MLflowLogger(Logger):
    """MLflow: one run per cell (hyper-parameters; training loss, meta-val metric per step by tasks seen;
    RUN/mlflow.db)."""

    requires = ("mlflow", "sqlalchemy", "alembic")
    install_hint = "pip install 'metabench[mlflow]'"
    options = {"tracking_uri": "where runs go (default: $MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db)",
               "experiment": "the experiment of the cells' runs (default: the run folder's name)"}

    @classmethod
    def prepare(cls, run_dir: Path, options: dict[str, str]) -> None:
        """Create the store and the experiment once, before the cells' processes share them."""
        client, name = _client(run_dir, options), _experiment(run_dir, options)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)

    def start(self, cell: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client = _client(self.run_dir, self.options)
        experiment = self.client.get_experiment_by_name(_experiment(self.run_dir, self.options))
        tags = {f"metabench.{key}": str(cell[key]) for key in ("cell_id", "suite", "setting", "learner", "seed")}
        tags["metabench.run_dir"] = str(self.run_dir.resolve())
        self._end_killed_attempts(experiment.experiment_id, tags)
        self.run_id = self.client.create_run(experiment.experiment_id, run_name=cell["cell_id"], tags=tags).info.run_id
        values = {**cell["hyperparameters"], "task_budget": cell["task_budget"]}
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in values.items()])
        self.metric = cell["metric_name"]

    def _end_killed_attempts(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Mark ``KILLED`` the runs an earlier attempt at this cell of this run folder left ``RUNNING`` (a process
        killed mid-cell never finishes its run; the resumed cell starts a new one with the whole curve)."""
        same_cell = " AND ".join(f"tags.`{key}` = '{tags[key]}'" for key in ("metabench.cell_id", "metabench.run_dir"))
        running = self.client.search_runs([experiment_id], filter_string=f"{same_cell} AND attributes.status = 'RUNNING'")
        for run in running:
            self.client.set_terminated(run.info.run_id, "KILLED")

    def train(self, tasks_seen: int, loss: float) -> None:
        self.client.log_metric(self.run_id, "train_loss", loss, step=tasks_seen)

    def validation(self, tasks_seen: int, means: dict[int, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"val_{self.metric}/step_{step}", mean, now, tasks_seen)
                                                    for step, mean in means.items()])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "ok" else "FAILED")
