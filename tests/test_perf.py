"""`bench perf` on the sinusoid configuration: the table, the JSON, and the learn2learn gradient check."""
from __future__ import annotations

import json

import pytest

from helpers import run_bench


def test_perf_times_learners_beside_learn2learn_and_checks_gradients(tmp_path):
    pytest.importorskip("learn2learn")
    out = tmp_path / "perf.json"
    result = run_bench("perf", "--suites", "sinusoid", "--learners", "maml,fomaml,finetune", "--iterations", "4",
                       "--warmup", "1", "--eval-episodes", "20", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "speedup_vs_reference" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    implementations = [(row["learner"], row["implementation"]) for row in rows]
    assert implementations == [("maml", "metabench"), ("maml", "learn2learn"), ("fomaml", "metabench"),
                               ("fomaml", "learn2learn"), ("finetune", "metabench")]
    for row in rows:
        assert row["setting"] == "K=10" and row["meta_batch"] == 25
        assert row["train_tasks_per_s"] > 0 and row["eval_episodes_per_s"] > 0
    for row in rows[0], rows[2]:
        assert row["gradient_rel_diff"] < 1e-5 and row["speedup_vs_reference"] > 0


def test_perf_skips_a_suite_without_data_with_a_warning(tmp_path):
    result = run_bench("perf", "--suites", "omniglot", "--learners", "maml", env={"METABENCH_DATA_DIR": ""})
    assert result.returncode == 0
    assert "warning: skipping suite 'omniglot': suite 'omniglot' needs its data" in result.stderr
