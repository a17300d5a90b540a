"""Long runs of real ``bench`` processes: SIGKILL and resume, cells in worker processes (executors giving the
same records, a cell timeout there), a cell killed mid-way resuming from its checkpoint. The rest (failing
cells, Ctrl-C, full disks, corrupt, stale and newer run folders, bad flags) runs in-process, in
tests/unit/test_resume_and_failures.py."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    BENCH,
    TROUBLE,
    cells_of,
    records_of,
    run_bench,
    three_learner_run,
    trouble_run,
)

pytestmark = pytest.mark.e2e

RUN = three_learner_run(tasks=300)
SMOKE = trouble_run(tasks=50)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_bench("run", *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_cells(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = subprocess.Popen([BENCH, "run", *RUN, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list((out / "cells").glob("*.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(cells_of(out))
    assert 2 <= finished < 6, f"killed after {finished} of 6 cells"

    resumed = run_bench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"6 cells ({finished} already finished)" in resumed.stderr
    assert sorted(cells_of(out)) == sorted(cells_of(uninterrupted))
    assert not list(out.rglob("*.tmp"))
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))  # no duplicates, none lost, same numbers
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_sigterm_interrupts_like_ctrl_c_and_resume_keeps_the_original_provenance(tmp_path, uninterrupted):
    """What `timeout` and schedulers send: the run is marked interrupted (not left "running"), says how to resume; the
    resumed run keeps its original command and start time and lists the resume."""
    out = tmp_path / "run"
    command = [BENCH, "run", *RUN, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / "cells").glob("*.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"interrupted: finished cells are kept in {out}; resume with: bench run --resume {out}" in stderr
    interrupted = json.loads((out / "run.json").read_text())
    assert interrupted["status"] == "interrupted"

    resumed = run_bench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    environment = json.loads((out / "run.json").read_text())["environment"]
    assert environment["command"] == command and environment["started"] == interrupted["environment"]["started"]
    assert [resume["command"][1:] for resume in environment["resumes"]] == [["run", "--resume", str(out)]]
    assert environment["resumes"][0]["host"] and environment["resumes"][0]["started"] >= environment["started"]
    provenance = (out / "report.md").read_text()
    assert f"--out {out}" in provenance and f"{environment['resumes'][0]['started']} on " in provenance
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))


def test_cell_timeout_in_worker_processes_fails_only_the_slow_cell(tmp_path, plugin_dist):
    """The processes executor; the inline one: tests/unit/test_resume_and_failures.py."""
    site = plugin_dist("sleepy", {"sleepy_plugin": TROUBLE.replace("SLEEP", "60")}, {"sleepy": "sleepy_plugin"})
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_bench("run", "--learners", "trouble", *SMOKE, "--cell-timeout", "3", "--executor", "processes",
                       "--workers", "2", "--out", str(out), pythonpath=[site])
    assert time.monotonic() - started < 55
    assert result.returncode == 1, result.stderr
    slow = next(cell for cell in cells_of(out).values() if (cell["setting"], cell["seed"]) == ("K=10", 1))
    assert slow["status"] == "failed" and slow["error"] == "CellTimeoutError: the cell ran longer than --cell-timeout 3 s"
    assert sum(cell["status"] == "ok" for cell in cells_of(out).values()) == 1  # K=5 seed 0


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_executors_give_identical_results(tmp_path, uninterrupted, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "run"
    result = run_bench("run", *RUN, "--executor", executor, "--workers", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"with the {executor} executor" in result.stderr
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))
    assert json.loads((out / "run.json").read_text())["environment"]["execution"]["executor"] == executor


def test_a_cell_killed_mid_way_resumes_from_its_checkpoint(tmp_path):
    """One long maml cell, checkpointed every 500 tasks, killed after a checkpoint: the resumed cell (``--resume``
    alone) goes on from there and ends with exactly the numbers of an uninterrupted cell. The in-process test (an
    interrupt right after the first checkpoint) does not replace it: here the kill lands wherever the process is, not
    where the test chose, and the resume starts in a fresh process that remembers nothing of the first."""
    cell = ("--learners", "maml", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--tasks", "2000",
            "--episodes", "5", "--steps", "2", "--no-progress")
    whole = tmp_path / "whole"
    assert run_bench("run", *cell, "--out", str(whole)).returncode == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([BENCH, "run", *cell, "--checkpoint-every", "500", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "cells" / "sinusoid__K=5__maml__seed0.checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not cells_of(out), "killed before the first checkpoint or after the cell"

    resumed = run_bench("run", "--resume", str(out))  # keeps the run's --checkpoint-every (run.json)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["environment"]["execution"]["checkpoint_every"] == 500
    (metadata,) = cells_of(out).values()
    assert metadata["resumed_from_tasks"] >= 500 and metadata["tasks_seen"] == 2000
    assert not checkpoint.exists()  # removed once the cell finished
    pd.testing.assert_frame_equal(records_of(out), records_of(whole))
