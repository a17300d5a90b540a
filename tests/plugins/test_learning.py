"""The learners actually learn: meta-trained beats untrained on held-out episodes, by stated margins."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid

from bench.protocol import evaluate
from bench.runner import HostContext

K10 = Sinusoid().settings()[1]


def mean_curve(registry, learner_name: str, tasks: int, episodes: int, seed: int = 0) -> np.ndarray:
    """Meta-train on ``tasks`` tasks (0 = untrained), then the mean test MSE after each of 0..10 steps."""
    learner_class = registry.learners[learner_name].cls
    learner = learner_class(learner_class.Config())
    learner.meta_train(HostContext(Sinusoid(), K10, seed, tasks, torch.device("cpu"), lambda tasks, loss: None))
    metric, _ = evaluate(learner, Sinusoid(), K10, seed, episodes, steps=10, device=torch.device("cpu"))
    return metric.mean(axis=0)


@pytest.mark.parametrize(
    ("learner_name", "margin"),
    # Seen here (20,000 tasks, 100 episodes): ratios 0.33, 0.45, 0.09 and 0.63.
    [("maml", 0.5), ("fomaml", 0.6), ("adaptation-layer", 0.25), ("finetune", 0.8)],
)
def test_meta_training_beats_untrained(registry, learner_name, margin):
    """After a short budget (20,000 tasks, seconds) the one-step test MSE is below ``margin`` x the untrained one's."""
    untrained = mean_curve(registry, learner_name, tasks=0, episodes=100)
    trained = mean_curve(registry, learner_name, tasks=20_000, episodes=100)
    assert trained[1] < margin * untrained[1], (trained[1], untrained[1])


@pytest.mark.slow
def test_quick_profile_claims(registry):
    """The README's claims for K=10 after the quick budget (100,000 tasks, 600 test episodes)."""
    tasks = 100_000
    maml = mean_curve(registry, "maml", tasks, episodes=600)
    finetune = mean_curve(registry, "finetune", tasks, episodes=600)
    adaptation_layer = mean_curve(registry, "adaptation-layer", tasks, episodes=600)
    print(f"K=10 MSE after 0/1/10 steps: maml {maml[[0, 1, 10]]}, finetune {finetune[[0, 1, 10]]}, "
          f"adaptation-layer {adaptation_layer[[0, 1, 10]]}")
    assert maml[1] <= 0.5 * maml[0]
    assert maml[1] < finetune[1]
    assert adaptation_layer[1] < finetune[1] and adaptation_layer[10] < finetune[10]
