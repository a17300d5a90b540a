"""The ``bench`` console script as a user runs it: a smoke run, the same command again in a new process (it
resumes), then ``bench report``. Every other command test calls ``bench.cli.main`` in-process
(tests/unit/test_cli.py)."""
from __future__ import annotations

import json

import pytest
from helpers import run_bench

pytestmark = pytest.mark.e2e

RUN = ("run", "--learners", "maml,finetune", "--profile", "smoke", "--tasks", "50", "--episodes", "3", "--steps", "2",
       "--shots", "5", "--no-progress")


def test_console_script_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "run"
    result = run_bench(*RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"Results: {out} (report.md, report.html)" in result.stdout
    assert "maml" in result.stdout and "finetune" in result.stdout
    assert "metabench: 2 cells (0 already finished)" in result.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"

    again = run_bench(*RUN, "--out", str(out))
    assert again.returncode == 0 and "2 cells (2 already finished)" in again.stderr, again.stderr

    report = run_bench("report", str(out))
    assert report.returncode == 0, report.stderr
    assert f"Report: {out / 'report.md'}, {out / 'report.html'}" in report.stdout and "finetune" in report.stdout
