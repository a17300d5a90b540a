"""benchmarks/reproduction.py: our number at the paper's step beside the published one, verdicts, refusals."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "reproduction.py"


@pytest.fixture(scope="module")
def reproduction():
    spec = importlib.util.spec_from_file_location("reproduction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduction"] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["reproduction"]


def make_run(folder: Path, profile: str = "paper") -> Path:
    """A run folder with two seeds of one learner: MSE 0.5 / 0.7 at step 1 and 0.30 / 0.34 at step 10."""
    folder.mkdir()
    records = pd.DataFrame([
        {"suite": "sinusoid", "setting": "K=10", "learner": "maml", "seed": seed, "episode": episode, "step": step,
         "metric": value + 0.01 * (episode - 1)}
        for seed, at in enumerate(({1: 0.5, 10: 0.30}, {1: 0.7, 10: 0.34}))
        for step, value in at.items() for episode in range(3)])
    records.to_csv(folder / "records.csv", index=False)
    pd.DataFrame([{"suite": "sinusoid", "setting": "K=10", "learner": "maml", "step": 10, "selected_mean": 0.32,
                   "seed_ci95": 0.25, "selected_steps": "[10]"}]).to_csv(folder / "summary.csv", index=False)
    (folder / "run.json").write_text(json.dumps({
        "config": {"profile": profile, "budgets": {"maml @ sinusoid K=10": {"meta_train_tasks": 1_750_000}}},
        "environment": {"command": [".venv/bin/bench", "run", "--profile", profile]}}))
    return folder


def row(reproduction, **fields):
    base = {"suite": "sinusoid", "setting": "K=10", "learner": "maml", "paper": "P", "where": "W", "source": "S"}
    return reproduction.Published(**{**base, **fields})


def test_verdicts_compare_at_the_papers_step(reproduction, tmp_path):
    ours = reproduction.read_runs([make_run(tmp_path / "run")])[("sinusoid", "K=10", "maml")]
    assert ours.tasks == 1_750_000 and ours.seeds == 2
    assert ours.at_step[1][0] == pytest.approx(0.6) and ours.at_step[10][0] == pytest.approx(0.32)
    assert reproduction.verdict(row(reproduction, value=0.33, interval=0.02, step=10), ours, 1) == \
        "within the published interval"
    # at step 1 ours is 0.6, 0.23 above the interval [0.33, 0.37]: the step the paper reports decides
    outside = reproduction.verdict(row(reproduction, value=0.35, interval=0.02, step=1, differs="trained at K=10"),
                                   ours, 1)
    assert outside == "outside the published interval by 0.23 (trained at K=10)"
    assert reproduction.verdict(row(reproduction), ours, 1) == "no published number to compare"
    assert reproduction.verdict(row(reproduction, value=0.35), None, 1) == "not run"


def test_table_marks_rows_without_a_run(reproduction, tmp_path):
    runs = reproduction.read_runs([make_run(tmp_path / "run")])
    text = reproduction.table([row(reproduction, value=0.33, interval=0.02, step=10),
                               row(reproduction, suite="omniglot", setting="5-way 1-shot", value=98.7, unit="%")],
                              runs)
    lines = text.splitlines()
    assert "| 1,750,000 tasks, 2 seeds | 0.320 ± 0.250 (step 10) | 0.320 ± " in lines[2]
    assert lines[3].startswith("| omniglot | 5-way 1-shot | maml | not run | not run | not run |")


def test_a_run_below_the_paper_budget_is_refused(reproduction, tmp_path):
    with pytest.raises(SystemExit, match="profile 'quick', not 'paper'"):
        reproduction.read_runs([make_run(tmp_path / "run", profile="quick")])
