"""Cell metadata: written by the store and read back typed, cell files of earlier versions included."""
from __future__ import annotations

import dataclasses
import json
import re

import pandas as pd
import pytest

from bench.cells import CellMetadata, CellStatus
from bench.report import Report
from bench.store import RunStore, StoreError
from helpers import finished_cell

RECORDS = pd.DataFrame({"suite": "toy", "setting": "K=5", "learner": "maml", "seed": 0, "episode": [0, 0, 1, 1],
                        "step": [0, 1, 0, 1], "metric": [2.0, 1.0, 3.0, 1.5]})

# A finished cell as the first version wrote it: before cell fingerprints, record counts, episode fingerprints
# and resume counts were recorded.
FIRST_VERSION = {
    "cell_id": "maml-toy-K=5-0", "suite": "toy", "setting": "K=5", "setting_index": 0, "shots": 5, "ways": None,
    "learner": "maml", "seed": 0, "hyperparameters": {"inner_lr": 0.01}, "device": "cpu",
    "learner_plugin": {"name": "maml", "distribution": "metabench", "version": "0.1.0"},
    "suite_plugin": {"name": "toy", "distribution": "metabench", "version": "0.1.0"},
    "task_budget": 16, "test_episodes": 2, "test_steps": 1, "status": "ok", "tasks_seen": 16,
    "meta_train_seconds": 1.5, "adapt_ms_per_episode": 3.0, "metric_name": "MSE", "lower_is_better": True,
    "peak_rss_mib": 500.0, "peak_cuda_mib": None,
}


def open_store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.open({"profile": "smoke"}, {})
    return store


def test_metadata_is_written_as_json_and_read_back_as_it_was(tmp_path):
    store = open_store(tmp_path)
    cell = finished_cell("toy", "K=5", "maml", test_episodes=2, test_steps=1, metric_name="MSE", lower_is_better=True)
    store.write_cell(cell.cell_id, cell, RECORDS)
    written = json.loads((store.cells_dir / f"{cell.cell_id}.json").read_text())
    assert written["status"] == "ok" and written["record_rows"] == 4 and written["error"] is None
    assert store.cells() == [dataclasses.replace(cell, record_rows=4)]
    assert CellMetadata.from_json(cell.to_json()) == cell


def test_a_cell_file_of_the_first_version_loads_is_kept_on_resume_and_reported(tmp_path):
    store = open_store(tmp_path)
    (store.cells_dir / "maml-toy-K=5-0.json").write_text(json.dumps(FIRST_VERSION))
    RECORDS.to_csv(store.cells_dir / "maml-toy-K=5-0.csv", index=False)
    (cell,) = store.cells()
    assert cell.status is CellStatus.OK and cell.hyperparameters == {"inner_lr": 0.01}
    assert cell.cell_fingerprint is cell.record_rows is cell.test_episodes_sha256 is cell.resumed_from_tasks is None
    assert store.cells_to_run({"maml-toy-K=5-0": "any-fingerprint"}) == set()
    (row,) = Report(store.records(), store.cells()).accuracy_table.rows
    assert row[:4] == ["toy", "K=5", "maml", "MSE ↓ 1.25 ± 0.49"]


@pytest.mark.parametrize(("data", "message"), [
    ({**FIRST_VERSION, "colour": "red"}, "unknown fields: colour"),
    ({key: value for key, value in FIRST_VERSION.items() if key not in ("seed", "learner")}, "missing fields: learner, seed"),
    ({**FIRST_VERSION, "status": "done"}, "'done' is not a valid CellStatus"),
])
def test_metadata_that_is_not_a_cells_is_refused_with_what_is_wrong(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        CellMetadata.from_json(data)
    store = open_store(tmp_path)
    path = store.cells_dir / "maml-toy-K=5-0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=f"{re.escape(str(path))} is not a cell's metadata .*{message}"):
        store.cells()
    warnings = []
    assert store.cells_to_run({"maml-toy-K=5-0": "f"}, warnings.append) == {"maml-toy-K=5-0"}
    assert "unreadable or corrupt" in warnings[0] and not path.exists()  # moved to cells/corrupt/


def test_a_status_reads_as_its_value():
    assert [f"{status:6}|" for status in CellStatus] == ["ok    |", "failed|", "n/a   |"]
    assert CellStatus("n/a") is CellStatus.NOT_APPLICABLE and CellStatus.OK == "ok"
