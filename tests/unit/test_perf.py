"""`bench perf` on the sinusoid configuration: the table, the JSON, the learn2learn gradient check, third-party learners."""
from __future__ import annotations

import json

import pytest

from bench.cli import main


def test_perf_times_learners_beside_learn2learn_and_checks_gradients(tmp_path, capsys):
    pytest.importorskip("learn2learn")
    out = tmp_path / "perf.json"
    status = main(["perf", "--suites", "sinusoid", "--learners", "maml,fomaml,finetune", "--iterations", "4",
                   "--warmup", "1", "--eval-episodes", "20", "--json", str(out)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    assert "speedup_vs_reference" in stdout
    rows = json.loads(out.read_text())["rows"]
    implementations = [(row["learner"], row["implementation"]) for row in rows]
    assert implementations == [("maml", "metabench"), ("maml", "learn2learn"), ("fomaml", "metabench"),
                               ("fomaml", "learn2learn"), ("finetune", "metabench")]
    for row in rows:
        assert row["setting"] == "K=10" and row["meta_batch"] == 25
        assert row["train_tasks_per_s"] > 0 and row["eval_episodes_per_s"] > 0
    for row in rows[0], rows[2]:
        assert row["gradient_rel_diff"] < 1e-5 and row["speedup_vs_reference"] > 0
        assert row["gradient_check"] == "checked"
    assert rows[4]["gradient_check"] is None  # finetune has no reference
    peak = float(stderr.split("matrix-product peak of this device: ")[1].split(" GFLOP/s")[0].replace(",", ""))
    for ours, theirs in (rows[0], rows[1]), (rows[2], rows[3]):
        # The same algorithm does the same dense work, however it is implemented (vmap here, a loop in learn2learn).
        assert ours["mflop_per_task"] == pytest.approx(theirs["mflop_per_task"]) and ours["mflop_per_task"] > 0.1
        for row in ours, theirs:
            assert row["achieved_gflops"] == pytest.approx(row["mflop_per_task"] * row["train_tasks_per_s"] / 1e3)
            assert row["fraction_of_matmul_peak"] == pytest.approx(row["achieved_gflops"] / peak, rel=1e-3)
            assert 0 < row["fraction_of_matmul_peak"] < 1
    assert rows[2]["mflop_per_task"] < rows[0]["mflop_per_task"]  # first order skips the second-order backward
    assert rows[4]["mflop_per_task"] is None  # finetune computes no meta-gradient


def test_perf_skips_a_suite_without_data_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("METABENCH_DATA_DIR", "")
    assert main(["perf", "--suites", "omniglot", "--learners", "maml"]) == 0
    assert "warning: skipping suite 'omniglot': suite 'omniglot' needs its data" in capsys.readouterr().err


def test_perf_skips_a_learner_that_does_not_apply_with_a_note(capsys):
    assert main(["perf", "--suites", "sinusoid", "--shots", "10", "--learners", "protonet", "--iterations", "1",
                 "--warmup", "0", "--eval-episodes", "1"]) == 0
    assert ("note: skipping protonet on sinusoid K=10: protonet classifies by nearest class prototype; 'sinusoid' is "
            "a regression suite") in capsys.readouterr().err


@pytest.mark.usefixtures("private_cache")
def test_perf_on_vary_times_the_learner_without_its_reference_which_does_not_apply_there(staged, tmp_path, capsys):
    """learn2learn's MAML is "n/a" on Meta-Dataset's episodes (no episode-class mask): not timed beside fomaml there,
    and no gradient check that would compare two different objectives."""
    out = tmp_path / "perf.json"
    assert main(["perf", "--suites", "omniglot", "--shots", "vary", "--learners", "fomaml", "--data-dir", str(staged),
                 "--iterations", "2", "--warmup", "0", "--eval-episodes", "1", "--json", str(out)]) == 0, \
        capsys.readouterr().err
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["setting"], row["implementation"], row["gradient_check"]) == ("vary", "metabench", None)
    assert row["train_tasks_per_s"] > 0 and "compile=auto -> false on 'vary'" in row["notes"]


THIRD_PARTY_LEARNER = '''
"""A third-party learner that declares a reference; neither implements bench.api.MetaGradient."""
import dataclasses

from bench import hookimpl
from bench.api import Learner


@dataclasses.dataclass
class MeanConfig:
    meta_batch: int = 4


class MeanReference(Learner):
    """Predicts the mean meta-training target (the reference implementation)."""

    Config = MeanConfig

    def meta_train(self, ctx):
        import torch

        targets = [batch.query_y.mean() for batch in ctx.batches(self.config.meta_batch)]
        self.mean = float(torch.stack(targets).mean())
        ctx.log(torch.tensor(0.0))

    def adapt(self, support, steps):
        import torch

        for _ in range(steps + 1):
            yield lambda x: torch.full((x.shape[0], 1), self.mean)


class Mean(MeanReference):
    """Predicts the mean meta-training target."""

    @classmethod
    def reference(cls):
        return MeanReference


@hookimpl
def register_learners(register):
    register("mean", Mean)
'''


def test_perf_times_a_third_party_learner_and_its_reference_without_a_meta_gradient(tmp_path, install, capsys):
    install("metabench-mean", {"metabench_mean": THIRD_PARTY_LEARNER}, {"mean": "metabench_mean"})
    out = tmp_path / "perf.json"
    status = main(["perf", "--suites", "sinusoid", "--learners", "mean", "--iterations", "2", "--warmup", "1",
                   "--eval-episodes", "5", "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "not checked (no MetaGradient: Mean, MeanReference)" in capsys.readouterr().out
    ours, theirs = json.loads(out.read_text())["rows"]
    assert (ours["implementation"], theirs["implementation"]) == ("metabench-mean", "metabench_mean.MeanReference")
    assert ours["meta_batch"] == theirs["meta_batch"] == 4
    for row in ours, theirs:
        assert row["train_tasks_per_s"] > 0 and row["eval_episodes_per_s"] > 0
    assert ours["speedup_vs_reference"] > 0 and ours["gradient_rel_diff"] is None
    assert ours["gradient_check"] == "not checked (no MetaGradient: Mean, MeanReference)"


LAZY_LEARNER = '''
import dataclasses

from bench import hookimpl
from bench.api import Learner


@dataclasses.dataclass
class LazyConfig:
    pass


class Lazy(Learner):
    """Learns nothing from the meta-training tasks."""

    Config = LazyConfig

    def meta_train(self, ctx):
        pass

    def adapt(self, support, steps):
        raise NotImplementedError


@hookimpl
def register_learners(register):
    register("lazy", Lazy)
'''


def test_perf_refuses_a_learner_that_asks_for_no_tasks_in_one_line(install, capsys):
    install("metabench-lazy", {"metabench_lazy": LAZY_LEARNER}, {"lazy": "metabench_lazy"})
    status = main(["perf", "--suites", "sinusoid", "--learners", "lazy", "--iterations", "2", "--warmup", "1"])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "bench perf: error: Lazy meta-trains without asking ctx.batches for tasks: nothing to time")
