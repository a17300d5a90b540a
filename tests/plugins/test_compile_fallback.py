"""``compile=auto`` (the default) decides from the eager speed and the budget, and says so in the cell's notes;
``compile=true`` where the graph does not compile: one warning, then the same meta-training, eagerly."""
from __future__ import annotations

import os
import re

import pytest
import torch
from bench_plugins.learners import _gradient
from bench_plugins.learners.maml import MAML
from bench_plugins.suites.sinusoid import Sinusoid

from bench.cache import INDUCTOR_CACHE_ENV
from bench.runner import HostContext


def meta_trained_weights(compile: str, notes: list[str] | None = None) -> list[torch.Tensor]:
    suite = Sinusoid()
    learner = MAML(MAML.Config(compile=compile, meta_batch=5))
    context = HostContext(suite, suite.settings()[0], 0, 40, torch.device("cpu"), lambda tasks, loss: None)
    learner.meta_train(context)
    if notes is not None:
        notes.extend(context.notes)
    return [tensor.detach().clone() for tensor in learner.meta_parameters()]


def test_a_failing_compile_warns_once_and_meta_trains_eagerly(monkeypatch, tmp_path):
    monkeypatch.setenv("METABENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    compiled = []

    def no_compiler(function):
        def fails(*args):
            compiled.append(function)
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"compile failed \(RuntimeError: InductorError: no working C\+\+ "
                                            r"compiler found\); meta-training goes on eagerly") as warned:
        fallen_back = meta_trained_weights(compile="true")
    assert len(warned) == 1 and len(compiled) == 1  # tried once, not at every step
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "inductor")  # kernels are kept in metabench's cache
    for got, expected in zip(fallen_back, meta_trained_weights(compile="false"), strict=True):
        assert torch.equal(got, expected)


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """A fresh metabench cache: nothing compiled on this "machine" yet."""
    monkeypatch.setenv("METABENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    return tmp_path


def test_auto_stays_eager_when_the_budget_is_short(empty_cache):
    """40 tasks at 5 per step: 8 steps, a few milliseconds each: far under the 30 s a compile needs to pay back."""
    notes = []
    weights = meta_trained_weights("auto", notes)
    assert len(notes) == 1 and re.fullmatch(r"compile=auto: eager: the 2 steps left would take ~0 s eagerly "
                                            r"\(< 30 s, when a first compile pays back\)", notes[0]), notes
    for got, expected in zip(weights, meta_trained_weights("false"), strict=True):
        assert torch.equal(got, expected)


def test_auto_compiles_when_the_budget_pays_for_it_and_knows_the_graph_next_time(monkeypatch, empty_cache):
    """With the threshold at 0 s, auto compiles after its timed eager steps (torch.compile stubbed by the plain
    torch.func graph, which the compiled code equals: tests/plugins/test_gradients.py); same weights. The next cell
    with the same graph weighs a cached compile instead."""
    monkeypatch.setattr(_gradient, "COMPILE_PAYS_AFTER_S", 0.0)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function: compiled.append(function) or function)
    notes = []
    weights = meta_trained_weights("auto", notes)
    assert len(compiled) == 1 and notes[0].startswith("compile=auto: compiled: the 2 steps left would take ~0 s"), notes
    assert "when a first compile pays back" in notes[0]
    for got, expected in zip(weights, meta_trained_weights("false"), strict=True):
        assert torch.allclose(got, expected, atol=1e-6)
    monkeypatch.setattr(_gradient, "COMPILE_PAYS_AFTER_S", 1e9)
    again = []
    meta_trained_weights("auto", again)
    assert again[0].startswith("compile=auto: eager: the 2 steps left would take ~0 s eagerly (< 10 s, when a cached "
                               "compile pays back)"), again


def test_auto_without_a_compiler_stays_eager_and_says_why(monkeypatch, empty_cache):
    monkeypatch.setattr(_gradient, "COMPILE_PAYS_AFTER_S", 0.0)
    monkeypatch.setattr(_gradient, "compiler_found", lambda device: None)
    notes = []
    meta_trained_weights("auto", notes)
    assert notes[0].startswith("compile=auto: eager: the 2 steps left would take") and notes[0].endswith(
        "but no C++ compiler was found to compile with"), notes


def test_a_bad_compile_value_is_refused_with_the_valid_ones(capsys):
    from bench import cli

    assert cli.main(["run", "--learners", "maml", "--set", "maml.compile=yes", "--profile", "smoke"]) == 2
    assert "compile: expected one of auto, true, false, got 'yes'" in capsys.readouterr().err
