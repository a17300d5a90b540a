"""Meta-Dataset's episode sampler as the ``vary`` setting of the image suites: its distribution rules, purity and
disjoint splits, selection with ``--shots vary``, the refusal to stack its episodes, and a run end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bench_plugins.suites.omniglot import Omniglot

from bench.api import VARY, VariableEpisodes
from bench.cli import main
from bench.config import ConfigError, build_run_config
from bench.errors import DataError
from bench.protocol import episodes_fingerprint
from bench.runner import HostContext
from bench.testing import assert_suite_conforms

pytestmark = pytest.mark.usefixtures("private_cache")


def vary(suite: Omniglot):
    (setting,) = [setting for setting in suite.settings() if setting.name == VARY]
    return setting


def reference_shots(sizes: list[int], beta: float, alphas: list[float]) -> tuple[list[int], int]:
    """Meta-Dataset's rules written out by hand (sampling.py's compute_num_query, sample_support_set_size,
    sample_num_support_per_class) for given draws of beta and the log-weights alpha."""
    query = min(10, min(sizes) // 2)
    remaining = [size - query for size in sizes]
    support = min(sum(math.floor(beta * min(100, left)) + 1 for left in remaining), 500)
    weights = [size * math.exp(alpha) for size, alpha in zip(sizes, alphas)]
    shares = [weight / sum(weights) for weight in weights]
    return [min(math.floor(share * (support - len(sizes))) + 1, left)
            for share, left in zip(shares, remaining)], query


@pytest.mark.parametrize("sizes", [[20, 20, 20, 20, 20], [7, 30, 600, 45, 12, 1000], [1300] * 50])
def test_shots_and_queries_match_a_hand_written_reference(sizes):
    sampler, sizes = VariableEpisodes(), np.array(sizes)
    for seed in range(20):
        shots, query = sampler.shots(np.random.default_rng(seed), sizes)
        draws = np.random.default_rng(seed)  # the same stream: beta first, then one log-weight per class
        beta = draws.uniform()
        alphas = draws.uniform(math.log(0.5), math.log(2), size=len(sizes)).tolist()
        assert (shots.tolist(), query) == reference_shots(sizes.tolist(), beta, alphas)
        assert shots.sum() <= 500 and shots.min() >= 1 and (shots <= sizes - query).all()


def test_episodes_follow_meta_datasets_rules(staged):
    """Omniglot: 20 drawings a character, so 10 queries a class and 1..10 support shots; ways 5..min(50, characters of
    the split) (the staged split has 110 / 10 / 42 characters), labels 0..n-1, distinct characters."""
    suite = Omniglot(data_dir=staged)
    setting = vary(suite)
    ways_seen: dict[str, set[int]] = {}
    imbalanced = 0
    for split, characters in (("train", 110), ("val", 10), ("test", 42)):
        for index in range(40):
            episode = suite.sample_episode(split, setting, 0, index)
            shots = torch.bincount(episode.support_y)
            ways = len(shots)
            assert 5 <= ways <= min(50, characters)
            assert torch.equal(episode.support_y, torch.arange(ways).repeat_interleave(shots))
            assert torch.equal(episode.query_y, torch.arange(ways).repeat_interleave(10))
            assert shots.min() >= 1 and shots.max() <= 20 - 10 and shots.sum() <= 500
            assert episode.support_x.shape == (int(shots.sum()), 1, 28, 28)
            assert len(set((episode.classes // 4).tolist())) == ways  # distinct characters
            ways_seen.setdefault(split, set()).add(ways)
            imbalanced += len(set(shots.tolist())) > 1
    assert max(ways_seen["train"]) > 20 and max(ways_seen["val"]) == 10  # seen: 49 and 10 (capped by the split)
    assert imbalanced > 100  # of 120 episodes (seen: 115): supports are class-imbalanced


def test_episodes_are_pure_and_the_splits_disjoint(staged):
    suite = Omniglot(data_dir=staged)
    suite.WAYS_SHOTS = ((5, 1),)  # the kit checks every setting; vary is the one under test
    assert_suite_conforms(suite)  # pure in (split, setting, seed, index), disjoint splits, the vary shape rules
    setting = vary(suite)
    first = suite.sample_episode("test", setting, 3, 7)
    again = Omniglot(data_dir=staged).sample_episode("test", setting, 3, 7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert episodes_fingerprint(suite, setting, 3, 4) == episodes_fingerprint(Omniglot(data_dir=staged), setting, 3, 4)
    assert episodes_fingerprint(suite, setting, 3, 4) != episodes_fingerprint(suite, setting, 4, 4)


def test_variable_episodes_do_not_stack_and_train_one_a_step(staged):
    suite = Omniglot(data_dir=staged)
    setting = vary(suite)
    with pytest.raises(ValueError, match="setting 'vary' of suite 'omniglot' draws episodes of varying ways and "
                                         "shots, which cannot be stacked"):
        suite.sample_batch("train", setting, 0, range(2))
    assert suite.sample_batch("train", setting, 0, range(1)).support_x.shape[0] == 1
    context = HostContext(suite, setting, 0, task_budget=3, device=torch.device("cpu"),
                          progress=lambda tasks, loss: None)
    sizes = [batch.support_x.shape[0] for batch in context.batches(25)]
    assert sizes == [1, 1, 1] and context.tasks_seen == 3
    assert context.notes == [("meta-batch 25 -> 1: the episodes of 'vary' vary in ways and shots and cannot be "
                              "stacked; one episode a step, as Meta-Dataset trains")]


def test_protomaml_heads_cover_an_episodes_own_ways_only(staged, registry):
    """ProtoMAML's head has the setting's 50 rows; the classes a 5..49-way episode lacks get bias -inf: they never
    win, and the loss stays finite through an adaptation step."""
    suite = Omniglot(data_dir=staged)
    setting = vary(suite)
    learner_class = registry.learners["protomaml"].cls
    learner = learner_class(learner_class.Config())
    learner.build(HostContext(suite, setting, 0, task_budget=1, device=torch.device("cpu"),
                              progress=lambda tasks, loss: None))
    episode = suite.sample_episode("test", setting, 0, 9)  # a small one: 8 ways, 1 shot each, 80 queries
    ways = len(episode.classes)
    assert ways == 8
    for predictor in learner.adapt(episode.support, 1):
        logits = predictor(episode.query_x)
        assert logits.shape == (episode.query_x.shape[0], 50)
        assert torch.isfinite(logits[:, :ways]).all() and (logits[:, ways:] == -math.inf).all()
        assert torch.isfinite(suite.loss(logits, episode.query_y))


def test_too_few_classes_is_a_clear_error(staged, monkeypatch):
    suite = Omniglot(data_dir=staged)
    monkeypatch.setattr(Omniglot, "VARIABLE", VariableEpisodes(min_ways=11))
    with pytest.raises(DataError, match="split 'val' has 10 classes, fewer than the 11 that every episode of vary"):
        suite.sample_episode("val", vary(suite), 0, 0)


def test_shots_vary_selects_the_setting_and_a_bad_value_is_refused(staged, capsys):
    common = ["run", "--learners", "protonet", "--data-dir", str(staged), "--dry-run"]
    assert main([*common, "--suites", "omniglot", "--shots", VARY]) == 0
    planned = capsys.readouterr().out
    assert "vary" in planned and "5-way 1-shot" not in planned
    assert main([*common, "--suites", "omniglot", "--shots", "1"]) == 0
    assert "vary" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([*common, "--suites", "omniglot", "--shots", "varies"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == "bench run: error: argument --shots: expected an integer or 'vary', got 'varies'"
    assert main([*common, "--suites", "sinusoid", "--shots", VARY]) == 2  # a regression suite offers none
    error = capsys.readouterr().err
    assert "suite 'sinusoid' has no setting with shots ['vary']; it offers: K=5, K=10, K=20" in error


def test_a_config_file_takes_vary_beside_numbers_and_refuses_other_words():
    assert build_run_config({"shots": "vary,1"}, origin="config file x.toml").shots == [VARY, 1]
    assert build_run_config({"shots": [5, VARY]}, origin="config file x.toml").shots == [5, VARY]
    with pytest.raises(ConfigError, match=r"^config file x.toml: shots: expected positive integers or 'vary' \(variable "
                                          r"ways and shots\), got 'often'$"):
        build_run_config({"shots": ["often"]}, origin="config file x.toml")


def test_run_end_to_end_with_protonet_and_a_refused_learner(staged, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["run", "--learners", "protonet,metaoptnet", "--suites", "omniglot", "--shots", VARY,
                 "--data-dir", str(staged), "--profile", "smoke", "--tasks", "4", "--episodes", "3",
                 "--val-episodes", "0", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert ("n/a    metaoptnet | omniglot vary | seed 0: MetaOptNet does not handle episodes of varying ways and "
            "shots (setting 'vary': Meta-Dataset's sampler); run it on a fixed setting") in stderr
    assert "ok     protonet | omniglot vary | seed 0" in stderr
    rows = [line for line in stdout.splitlines() if line.startswith("omniglot  vary")]
    assert any("protonet" in row and "accuracy ↑ 0." in row for row in rows), rows
    assert any("metaoptnet" in row and "n/a: MetaOptNet does not handle" in row for row in rows), rows
    assert "protonet" in (out / "report.md").read_text()


def test_the_refusal_is_the_same_line_in_dry_run_and_describe(staged, capsys):
    reason = ("n/a: MetaOptNet does not handle episodes of varying ways and shots (setting 'vary': Meta-Dataset's "
              "sampler); run it on a fixed setting")
    assert main(["run", "--learners", "metaoptnet", "--suites", "omniglot", "--shots", VARY, "--data-dir", str(staged),
                 "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("omniglot  vary")]
    assert rows and all(row.endswith(reason) for row in rows), rows
    assert main(["describe", "metaoptnet"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " vary " in line]
    assert len(rows) >= 6 and all(row.endswith(reason) for row in rows), rows

