"""``compile=true`` where the graph does not compile: one warning, then the same meta-training, eagerly."""
from __future__ import annotations

import os

import pytest
import torch
from bench_plugins.learners.maml import MAML
from bench_plugins.suites.sinusoid import Sinusoid

from bench.cache import INDUCTOR_CACHE_ENV
from bench.runner import HostContext


def meta_trained_weights(compile: bool) -> list[torch.Tensor]:
    suite = Sinusoid()
    learner = MAML(MAML.Config(compile=compile, meta_batch=5))
    learner.meta_train(HostContext(suite, suite.settings()[0], 0, 40, torch.device("cpu"), lambda tasks, loss: None))
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
    with pytest.warns(RuntimeWarning, match=r"MAML: compile=true failed \(RuntimeError: InductorError: no working C\+\+ "
                                            r"compiler found\); meta-training goes on eagerly") as warned:
        fallen_back = meta_trained_weights(compile=True)
    assert len(warned) == 1 and len(compiled) == 1  # tried once, not at every step
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "inductor")  # kernels are kept in metabench's cache
    for got, expected in zip(fallen_back, meta_trained_weights(compile=False), strict=True):
        assert torch.equal(got, expected)
