"""What adapts, counted: ``Learner.adapted_parameter_count`` of each built-in, against the network's own sizes."""
from __future__ import annotations

import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid

from bench.runner import HostContext

K10 = Sinusoid().settings()[1]
MLP_WEIGHTS = (1 * 40 + 40) + (40 * 40 + 40) + (40 * 1 + 1)  # the sinusoid MLP 1-40-40-1


@pytest.mark.parametrize(("name", "count"), [
    ("maml", MLP_WEIGHTS), ("fomaml", MLP_WEIGHTS), ("metasgd", MLP_WEIGHTS), ("reptile", MLP_WEIGHTS),
    ("finetune", MLP_WEIGHTS), ("l2l-maml", MLP_WEIGHTS),
    ("anil", 40 * 1 + 1),  # the head only
    ("adaptation-layer", 5),  # the context vector (context_dim)
])
def test_each_learner_counts_what_it_adapts(registry, name, count):
    learner_class = registry.learners[name].cls
    learner = learner_class(learner_class.Config())
    learner.meta_train(HostContext(Sinusoid(), K10, 0, 0, torch.device("cpu"), lambda tasks, loss: None))
    assert learner.adapted_parameter_count() == count


@pytest.mark.parametrize(("name", "count"), [
    ("protonet", 0), ("matchingnet", 0),  # prototypes, attention: nothing is fitted
    ("r2d2", 5 * (32 + 1)), ("metaoptnet", 5 * 32),  # a fitted linear head on the 32 features (ridge: a bias feature)
    ("anil", 5 * 32 + 5), ("finetune", 5 * (32 + 1)),  # the head: weights and biases
    ("maml", None),  # every weight: counted against the network below
])
def test_classifiers_count_what_they_adapt(registry, name, count):
    from bench.testing import TinyBlobs

    suite = TinyBlobs()
    setting = suite.settings()[0]
    assert setting.ways == 5
    learner_class = registry.learners[name].cls
    learner = learner_class(learner_class.Config(**learner_class.suite_defaults(suite, setting)))
    learner.meta_train(HostContext(suite, setting, 0, 0, torch.device("cpu"), lambda tasks, loss: None))
    network = suite.backbone(setting)
    assert network[-1].in_features == 32
    expected = sum(weight.numel() for weight in network.parameters()) if count is None else count
    assert learner.adapted_parameter_count() == expected
