"""No built-in learner, and not the host, reads a test episode before a cell's final evaluation, and meta-val
episodes are read only by the host's validation points, during meta-training: a watched suite inside a real run of
every built-in learner records each split it is asked for."""
from __future__ import annotations

import sys

from bench_plugins.suites.sinusoid import Sinusoid
from helpers import TINY

from bench.cli import main


def test_no_learner_or_host_samples_a_test_episode_before_the_final_evaluation(registry, install, tmp_path, capsys):
    install("metabench-tiny", {"tiny_plugin": TINY}, {"tiny": "tiny_plugin"})  # its suite watched-sinusoid
    learners = sorted(name for name, registration in registry.learners.items() if not registration.unavailable_reason)
    status = main(["run", "--learners", ",".join(learners), "--suites", "watched-sinusoid", "--shots", "5",
                   "--profile", "smoke", "--tasks", "100", "--episodes", "4", "--steps", "2", "--val-every", "40",
                   "--val-episodes", "3", "--no-progress",
                   "--out", str(tmp_path / "run")])
    assert status == 0, capsys.readouterr().err
    cells = [sampled for sampled in sys.modules["tiny_plugin"].SAMPLED if sampled]
    regression_learners = [name for name in learners  # the classifiers (protonet, ...) decline regression: n/a
                           if not registry.learners[name].cls.unsupported_reason(Sinusoid())]
    assert len(cells) == len(regression_learners)
    for sampled in cells:
        assert sampled[0] == "train" and "test" in sampled
        first_test = sampled.index("test")
        assert "train" not in sampled[first_test:], sampled  # meta-training is over when the test split is read
        assert "val" not in sampled[first_test:], sampled  # and so is meta-validation
        assert "val" in sampled[:first_test], sampled  # points at 40, 80 and the end (100)
