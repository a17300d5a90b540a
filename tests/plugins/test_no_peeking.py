"""No built-in learner, and not the host, reads a test episode before a cell's final evaluation, and meta-val
episodes are read only by the host's validation points, during meta-training: a watched suite inside a real run of
every built-in learner records each split it is asked for."""
from __future__ import annotations

import sys

from bench.cli import main

WATCHED_SUITE = '''
from bench import hookimpl
from bench_plugins.suites.sinusoid import Sinusoid

SAMPLED = []
"""One list per suite instance (the runner makes one per cell): the split of every episode or batch asked for."""


class WatchedSinusoid(Sinusoid):
    """The sinusoid suite, recording every split it is asked for."""

    name = "watched-sinusoid"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampled = []
        SAMPLED.append(self.sampled)

    def sample_episode(self, split, setting, seed, index):
        self.sampled.append(split)
        return super().sample_episode(split, setting, seed, index)

    def sample_batch(self, split, setting, seed, indices):
        self.sampled.append(split)
        return super().sample_batch(split, setting, seed, indices)


@hookimpl
def register_suites(register):
    register("watched-sinusoid", WatchedSinusoid)
'''


def test_no_learner_or_host_samples_a_test_episode_before_the_final_evaluation(registry, install, tmp_path, capsys):
    install("metabench-watched", {"watched_plugin": WATCHED_SUITE}, {"watched": "watched_plugin"})
    learners = sorted(name for name, registration in registry.learners.items() if not registration.unavailable_reason)
    status = main(["run", "--learners", ",".join(learners), "--suites", "watched-sinusoid", "--shots", "5",
                   "--profile", "smoke", "--tasks", "100", "--episodes", "4", "--steps", "2", "--val-every", "40",
                   "--val-episodes", "3", "--no-progress",
                   "--out", str(tmp_path / "run")])
    assert status == 0, capsys.readouterr().err
    cells = [sampled for sampled in sys.modules["watched_plugin"].SAMPLED if sampled]
    regression_learners = [name for name in learners if name != "protonet"]  # protonet declines regression: n/a
    assert len(cells) == len(regression_learners)
    for sampled in cells:
        assert sampled[0] == "train" and "test" in sampled
        first_test = sampled.index("test")
        assert "train" not in sampled[first_test:], sampled  # meta-training is over when the test split is read
        assert "val" not in sampled[first_test:], sampled  # and so is meta-validation
        assert "val" in sampled[:first_test], sampled  # points at 40, 80 and the end (100)
