"""``bench tune`` in real processes: killed with SIGKILL in the middle of a trial and resumed, it ends with the study
of an uninterrupted tune (the same trials, parameters, states and best value); trials run in worker processes report
to the same SQLite study and give the trials of the inline executor."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from helpers import BENCH, TINY, run_bench

from bench.plugins import NO_AUTOLOAD_ENV
from bench.tune_study import INDEX, STUDY_FILE, storage_url

pytestmark = pytest.mark.e2e

TUNE = ("tune", "--learners", "tiny", "--suites", "sinusoid", "--shots", "5", "--trials", "6", "--trial-tasks", "300",
        "--val-every", "60", "--val-episodes", "5", "--workers", "2", "--no-progress")
STUDY = "tiny @ sinusoid K=5"


@pytest.fixture
def site(plugin_dist) -> Path:
    """The ``tiny`` learner, sleeping 20 ms per meta-batch so that a trial lasts long enough to be killed in."""
    return plugin_dist("metabench-tiny", {"tiny_plugin": TINY.replace("SLEEP = 0", "SLEEP = 0.02")},
                       {"tiny": "tiny_plugin"})


def trials_of(folder: Path) -> list[tuple[int, str, float | None, dict]]:
    """The counted trials of the study (index, state, value, params), by index."""
    study = optuna.load_study(study_name=STUDY, storage=storage_url(folder))
    return sorted((trial.user_attrs[INDEX], trial.state.name, trial.value, trial.params)
                  for trial in study.get_trials() if not trial.user_attrs.get("interrupted"))


def tune(site: Path, *flags: str) -> None:
    result = run_bench(*TUNE, *flags, pythonpath=[site])
    assert result.returncode == 0, result.stderr


def in_a_late_trial(folder: Path) -> bool:
    """Whether a trial of the third batch or later has reported a validation point and is still running."""
    try:
        with sqlite3.connect(f"file:{folder / STUDY_FILE}?mode=ro", uri=True) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND t.number >= 4").fetchone()
    except sqlite3.Error:  # not created yet
        return False
    return count > 0


def test_sigkill_mid_trial_then_resume_gives_the_uninterrupted_study(tmp_path, site):
    tune(site, "--out", str(tmp_path / "whole"))
    killed = tmp_path / "killed"
    environment = {**os.environ, "PYTHONPATH": str(site), NO_AUTOLOAD_ENV: "0"}
    process = subprocess.Popen([BENCH, *TUNE, "--out", str(killed)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not in_a_late_trial(killed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (killed / "tuned.toml").exists()

    resumed = run_bench("tune", "--resume", str(killed), pythonpath=[site])
    assert resumed.returncode == 0, resumed.stderr
    assert "interrupted trial(s) run again with the same parameters" in resumed.stderr
    assert trials_of(killed) == trials_of(tmp_path / "whole")  # none lost, none counted twice, the same numbers
    whole = optuna.load_study(study_name=STUDY, storage=storage_url(tmp_path / "whole"))
    assert optuna.load_study(study_name=STUDY, storage=storage_url(killed)).best_value == whole.best_value


def test_trials_in_worker_processes_give_the_trials_of_the_inline_executor(tmp_path, site):
    tune(site, "--out", str(tmp_path / "inline"))
    tune(site, "--executor", "processes", "--out", str(tmp_path / "processes"))
    assert trials_of(tmp_path / "processes") == trials_of(tmp_path / "inline")
    assert any(state == "PRUNED" for _, state, *_ in trials_of(tmp_path / "inline"))  # workers reported their points
