"""learn2learn's reference learners (``l2l-maml``, ``l2l-metasgd``) beside the built-ins: the same meta-gradients
in float64, the same per-episode metric on the same seeded run, learning, and clean listing without learn2learn."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pickle
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import bench_plugins.learners
import pandas as pd
import pytest
import torch
from bench_plugins.learners.l2l import LearnToLearnMAML, LearnToLearnMetaSGD
from bench_plugins.learners.maml import MAML
from bench_plugins.learners.metasgd import MetaSGD
from bench_plugins.suites.sinusoid import Sinusoid
from test_learning import K10
from torch.nn import functional as F

from bench.api import Episode, Setting, TaskKind
from bench.cli import main
from bench.nn.backbones import conv4
from bench.perf import _Float64Context

GRADIENT_TOLERANCE = 1e-10
"""Relative (max |difference| / max |gradient|), float64; measured here: at most ~1e-15."""
METRIC_RTOL = 2e-5
"""Per-episode metric relative to the built-in's, float32 end to end (20 Adam steps, then 10 test steps, in other
summation orders): measured here at most 2.3e-7 for maml (1.9e-6 absolute) and 1.2e-6 for metasgd (7.6e-5
absolute); the tolerance allows 16x the larger."""


@pytest.fixture
def l2l():
    return pytest.importorskip("learn2learn", reason="learn2learn is not installed (make setup builds it)")


def sinusoid_case() -> tuple[Callable[[], Any], Episode]:
    """The suite's own float64 context (seeded 1-40-40-1 MLP, as ``bench perf`` checks) and 25 training tasks."""
    batch = Sinusoid().sample_batch("train", K10, 0, range(25))
    return (lambda: _Float64Context(Sinusoid(), K10, 0, 0, torch.device("cpu"), lambda tasks, loss: None),
            Episode(*(field.double() if field.is_floating_point() else field for field in batch)))


def conv4_case() -> tuple[Callable[[], Any], Episode]:
    """A small seeded Conv-4 (8 filters, batch norm, 3-way, 16x16) and 4 random 3-way tasks, float64; a
    classification suite, so both sides take the built-ins' default inner loss (``inner_loss=class_sum``)."""
    def context() -> types.SimpleNamespace:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = conv4(in_channels=1, filters=8, ways=3, image_size=16).double()
        suite = types.SimpleNamespace(loss=F.cross_entropy, kind=TaskKind.CLASSIFICATION)
        return types.SimpleNamespace(backbone=lambda: network, suite=suite, setting=Setting("3-way", 2, 3, ways=3),
                                     device=torch.device("cpu"), generator=torch.Generator().manual_seed(1))

    generator = torch.Generator().manual_seed(2)
    support_x, query_x = (torch.randn(4, count, 1, 16, 16, generator=generator, dtype=torch.float64) for count in (6, 9))
    support_y, query_y = (torch.randint(0, 3, (4, count), generator=generator) for count in (6, 9))
    return context, Episode(support_x, support_y, query_x, query_y, torch.zeros(4, 0, dtype=torch.long))


def start_and_meta_gradient(learner_class: type, config: Any, context: Callable[[], Any],
                            batch: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial meta-parameters (weights, then any learned rates) and the meta-gradient of ``batch``, flat."""
    learner = learner_class(config)
    learner.build(context())
    start = torch.cat([p.detach().flatten() for p in learner.meta_parameters()])
    learner.accumulate_meta_gradient(batch)
    return start, torch.cat([p.grad.flatten() for p in learner.meta_parameters()])


@pytest.mark.parametrize("case", [sinusoid_case, conv4_case])
@pytest.mark.parametrize(("builtin", "reference", "overrides"), [
    (MAML, LearnToLearnMAML, {"inner_lr": 0.4, "inner_steps": 2}),
    (MetaSGD, LearnToLearnMetaSGD, {"inner_steps": 2}),
], ids=["maml", "metasgd"])
def test_meta_gradient_matches_the_builtin_in_float64(l2l, builtin, reference, overrides, case):
    """Same seeded weights (and, for Meta-SGD, the same drawn rates), two inner steps, second order."""
    context, batch = case()
    config = builtin.Config(**overrides)
    (start, ours), (reference_start, theirs) = (
        start_and_meta_gradient(learner_class, config, context, batch) for learner_class in (builtin, reference))
    assert torch.equal(start, reference_start)
    difference = float((ours - theirs).abs().max() / theirs.abs().max())
    assert difference < GRADIENT_TOLERANCE, difference


def test_builtins_and_their_l2l_references_score_the_same_on_the_same_seeded_run(l2l, tmp_path, capsys):
    """Meta-trained and tested by the host on the same seeds, each reference scores what its built-in scores, so it
    learns as the built-in does (the built-ins' learning tests: tests/plugins/test_learning.py,
    test_more_learners.py)."""
    out = tmp_path / "run"
    status = main(["run", "--learners", "maml,l2l-maml,metasgd,l2l-metasgd", "--suites", "sinusoid", "--shots", "10",
                   "--profile", "smoke", "--seeds", "1", "--no-progress", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    fingerprints = {json.loads(path.read_text())["test_episodes_sha256"] for path in (out / "cells").glob("*.json")}
    assert len(fingerprints) == 1  # the protocol's guarantee: the same test episodes
    metric = pd.read_csv(out / "records.csv").pivot_table(index=["episode", "step"], columns="learner", values="metric")
    assert len(metric) == 25 * 11
    for builtin in ("maml", "metasgd"):
        relative = ((metric[builtin] - metric[f"l2l-{builtin}"]).abs() / metric[builtin].abs()).max()
        assert relative < METRIC_RTOL, (builtin, relative)


@pytest.mark.parametrize(("builtin", "reference"), [(MAML, LearnToLearnMAML), (MetaSGD, LearnToLearnMetaSGD)],
                         ids=["maml", "metasgd"])
def test_reference_configs_are_the_builtins_without_the_vectorisation_options(builtin, reference):
    """Derived from the built-in's Config: the same names, types, defaults and checks, less chunk_tasks and compile."""
    fields = {field.name: field for field in dataclasses.fields(builtin.Config)}
    derived = {field.name: field for field in dataclasses.fields(reference.Config)}
    assert list(derived) == [name for name in fields if name not in ("chunk_tasks", "compile")]
    assert all(derived[name].default == fields[name].default for name in derived)
    assert typing.get_type_hints(reference.Config) == {name: typing.get_type_hints(builtin.Config)[name] for name in derived}
    assert pickle.loads(pickle.dumps(reference.Config(inner_steps=3))) == reference.Config(inner_steps=3)


def test_l2l_metasgd_config_keeps_the_builtins_check():
    with pytest.raises(ValueError, match="need 0 <= alpha_low <= alpha_high, got 0.2 and 0.1"):
        LearnToLearnMetaSGD.Config(alpha_low=0.2, alpha_high=0.1)


@pytest.fixture
def without_l2l(monkeypatch) -> None:
    """learn2learn hidden in this process, as if it were not installed: ``sys.modules['learn2learn'] = None``
    (``find_spec`` returns None, an import fails). The l2l plugin module is imported afresh while it is hidden,
    as in a process without learn2learn; all of it is restored after the test."""
    monkeypatch.setitem(sys.modules, "learn2learn", None)
    for name in [name for name in sys.modules if name.startswith("learn2learn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "bench_plugins.learners.l2l")
    monkeypatch.setattr(bench_plugins.learners, "l2l", bench_plugins.learners.l2l)  # rebound by the fresh import


def test_hiding_learn2learn_makes_it_missing(without_l2l):
    assert importlib.util.find_spec("learn2learn") is None
    with pytest.raises(ImportError):
        import learn2learn  # noqa: F401


def test_without_learn2learn_the_plugins_are_listed_unavailable_with_the_reason(without_l2l, capsys):
    assert main(["plugins", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["plugins"]}
    for name in ("l2l-maml", "l2l-metasgd"):
        assert entries[name]["unavailable"] == f"needs learn2learn, which is not installed ({LearnToLearnMAML.install_hint})"
    assert entries["maml"]["unavailable"] is None
    assert main(["plugins"]) == 0
    assert sum("unavailable: needs learn2learn" in line for line in capsys.readouterr().out.splitlines()) == 2


def test_without_learn2learn_all_skips_them_and_naming_one_is_a_usage_error(without_l2l, tmp_path, capsys):
    assert main(["run", "--learners", "all", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--tasks", "50",
                 "--episodes", "3", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    stderr = capsys.readouterr().err
    for name in ("l2l-maml", "l2l-metasgd"):
        assert f"note: skipping learner '{name}': needs learn2learn" in stderr
    assert set(pd.read_csv(tmp_path / "run" / "records.csv")["learner"]).isdisjoint({"l2l-maml", "l2l-metasgd"})
    assert main(["run", "--learners", "l2l-maml", "--profile", "smoke", "--out", str(tmp_path / "other")]) == 2
    reason = f"needs learn2learn, which is not installed ({LearnToLearnMAML.install_hint})"
    assert capsys.readouterr().err.strip().splitlines() == [f"bench run: error: learner 'l2l-maml' is unavailable: {reason}"]
