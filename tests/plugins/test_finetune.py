"""The fine-tuning baseline follows Chen et al. 2019 (github.com/wyharveychen/CloserLookFewShot): its optimiser, its
100 epochs of batch-4 steps, Baseline++'s head, running batch-norm statistics as an option, and it learns."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from bench_plugins.learners._heads import SGD, cosine_scale, initial_head, shuffled_batches
from bench_plugins.learners._running_norm import RunningBatchNorm, with_running_statistics
from bench_plugins.learners.finetune import HEAD_SEED, Finetune, FinetuneConfig
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from torch import nn

from bench.api import Setting
from bench.config import RunConfig
from bench.nn.backbones import EpisodeBatchNorm, conv4
from bench.protocol import curve_steps, evaluate
from bench.runner import HostContext
from bench.testing import TinyBlobs

CPU = torch.device("cpu")
FIVE_WAY_ONE_SHOT = Omniglot().settings()[0]


def test_one_head_step_is_sgd_with_momentum_dampening_and_weight_decay_by_hand():
    """Two steps on p = 1 with gradients 2 then 3 (lr 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3):
    d1 = 2 + 0.001 = 2.001, the buffer d1 (no dampening at the first step), p1 = 1 - 0.02001 = 0.97999;
    d2 = 3 + 0.00097999, buffer 0.9 * 2.001 + 0.1 * d2 = 2.100998..., p2 = p1 - 0.02100998..."""
    sgd = SGD(lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    p1, buffers = sgd.step({"p": torch.tensor(1.0, dtype=torch.float64)}, {"p": torch.tensor(2.0, dtype=torch.float64)},
                           None)
    assert p1["p"].item() == pytest.approx(0.97999, abs=1e-15) and buffers["p"].item() == pytest.approx(2.001)
    p2, buffers = sgd.step(p1, {"p": torch.tensor(3.0, dtype=torch.float64)}, buffers)
    buffer = 0.9 * 2.001 + 0.1 * (3 + 0.001 * 0.97999)
    assert buffers["p"].item() == pytest.approx(buffer, abs=1e-15)
    assert p2["p"].item() == pytest.approx(0.97999 - 0.01 * buffer, abs=1e-15)


def test_the_head_sgd_is_torch_optim_sgd():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(6)]
    reference = nn.Parameter(weight.clone())
    optimizer = torch.optim.SGD([reference], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    sgd, params, buffers = SGD(0.01, 0.9, 0.9, 1e-3), {"w": weight}, None
    for grad in grads:
        reference.grad = grad.clone()
        optimizer.step()
        params, buffers = sgd.step(params, {"w": grad}, buffers)
    assert torch.allclose(params["w"], reference.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize(("ways", "shots", "steps"), [(5, 1, 200), (5, 5, 700), (20, 1, 500), (20, 5, 2500)])
def test_chen_takes_100_epochs_of_batch_4_steps_whatever_the_protocols_steps(ways, shots, steps):
    setting = Setting(f"{ways}-way {shots}-shot", shots=shots, query=15, ways=ways)
    assert Finetune(FinetuneConfig()).adaptation_steps(setting, 10) == steps == 100 * math.ceil(ways * shots / 4)
    assert Finetune(FinetuneConfig(protocol="cheap")).adaptation_steps(setting, 10) == 10
    assert Finetune(FinetuneConfig()).adaptation_steps(Setting("K=10", shots=10, query=100), 10) == 10  # regression


def test_the_paper_budget_is_chens_pre_training_epochs_in_tasks_of_as_many_images():
    """5 epochs of Omniglot's 88,000 training images in 5-way 1-shot tasks of 10 images; 400 of mini-ImageNet's
    38,400 in tasks of 5 x (1 + 15)."""
    assert RunConfig(profile="paper").budget_for(Omniglot, FIVE_WAY_ONE_SHOT, Finetune).meta_train_tasks == 44_000
    mini = MiniImageNet().settings()[0]
    assert Finetune.paper_budget(MiniImageNet, mini) == {"meta_train_tasks": 400 * 38_400 // (5 * 16)}
    assert RunConfig(profile="quick").budget_for(Omniglot, FIVE_WAY_ONE_SHOT, Finetune).meta_train_tasks == 3_200


def pretrained(suite, setting, tasks: int, **config) -> Finetune:
    learner = Finetune(FinetuneConfig(**config))
    learner.meta_train(HostContext(suite, setting, 0, tasks, CPU, lambda tasks, loss: None))
    return learner


def chens_loop(features: torch.Tensor, labels: torch.Tensor, head: str, ways: int) -> torch.Tensor:
    """methods/baselinefinetune.py's set_forward_adaptation on one episode's support features, as written there
    (nn.Linear / distLinear, torch.optim.SGD, nn.CrossEntropyLoss, 100 epochs of permuted batches of 4), with the
    learner's initial head and batch order (drawn from its fixed seed); the trained classifier, as a function."""
    generator = torch.Generator().manual_seed(HEAD_SEED)
    initial = initial_head(head, ways, features.shape[-1], generator)
    if head == "linear":
        classifier = nn.Linear(features.shape[-1], ways)
        classifier.weight.data, classifier.bias.data = initial["weight"].clone(), initial["bias"].clone()
        forward = classifier
    else:  # distLinear: Linear without bias, WeightNorm(dim=0), scale 2 for at most 200 classes
        classifier = torch.nn.utils.weight_norm(nn.Linear(features.shape[-1], ways, bias=False), dim=0)
        classifier.weight_g.data = initial["norm"].clone().unsqueeze(1)
        classifier.weight_v.data = initial["direction"].clone()

        def forward(x: torch.Tensor) -> torch.Tensor:
            return 2 * classifier(x.div(torch.norm(x, p=2, dim=1).unsqueeze(1).expand_as(x) + 0.00001))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    loss_function = nn.CrossEntropyLoss()
    support_size, batches = len(labels), shuffled_batches(len(labels), 4, generator)
    for _epoch in range(100):
        for _ in range(0, support_size, 4):
            optimizer.zero_grad()
            selected = next(batches)
            loss = loss_function(forward(features[selected]), labels[selected])
            loss.backward()
            optimizer.step()
    return forward


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")  # Chen's WeightNorm
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_adaptation_is_chens_loop_step_for_step(head, one_thread):
    suite = TinyBlobs()
    setting = suite.settings()[1]  # 5-way 5-shot: 25 support examples, 7 batches an epoch (the last of 1)
    learner = pretrained(suite, setting, 100, head=head)
    episode = suite.sample_episode("test", setting, 0, 0)
    predictors = list(learner.adapt(episode.support, learner.adaptation_steps(setting, 10)))
    assert len(predictors) == 701
    features, query = learner.features(episode.support_x), learner.features(episode.query_x)  # frozen
    classifier = chens_loop(features, episode.support_y, head, setting.ways)
    with torch.no_grad():
        assert torch.allclose(predictors[-1](episode.query_x), classifier(query), atol=1e-5)
        assert not torch.allclose(predictors[350](episode.query_x), classifier(query), atol=1e-3)


def test_the_curve_has_the_declared_length_and_is_scored_at_its_recorded_steps(one_thread):
    suite = TinyBlobs()
    setting = suite.settings()[0]
    learner = pretrained(suite, setting, 100)
    assert curve_steps(learner, setting, 10) == [*range(11), 20, 50, 100, 200]
    assert curve_steps(learner, setting, 3) == [0, 1, 2, 3, 5, 10, 20, 50, 100, 200]
    metric, _ = evaluate(learner, suite, setting, 0, 6, 3, CPU)
    assert metric.shape == (6, 10)
    batched, _ = evaluate(learner, suite, setting, 0, 6, 3, CPU, batched=True)
    assert np.array_equal(batched, metric)  # the same features, one episode at a time, and a head per episode


def test_baseline_plus_plus_scales_as_distlinear():
    """2 for at most 200 classes, 10 above: 10 for pre-training over Omniglot's 4,400 training classes, 2 for a 5-way
    test head (the learnable norms are checked step for step against distLinear above)."""
    assert (cosine_scale(5), cosine_scale(200), cosine_scale(201), cosine_scale(4400)) == (2, 2, 10, 10)
    assert Finetune(FinetuneConfig(head="cosine", cosine_scale=4.0))._scale(4400) == 4.0


def test_running_statistics_normalise_test_features_with_pre_training_averages():
    model = conv4(1, 8, 5, 28)
    with_running_statistics(model)
    norms = [module for module in model.modules() if isinstance(module, RunningBatchNorm)]
    assert len(norms) == 4 and not any(isinstance(module, EpisodeBatchNorm) for module in model.modules())
    images = torch.rand(12, 1, 28, 28)
    model.train()
    model(images)
    assert not torch.equal(norms[0].running_mean, torch.zeros(8))  # averages kept in training
    model.eval()
    with torch.no_grad():  # an image's features no longer depend on the batch it comes in
        assert torch.allclose(model(images[:1]), model(images)[:1], atol=1e-6)


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("batch_norm", ["episode", "running"])
def test_test_features_use_running_averages_only_when_asked(staged, one_thread, batch_norm):
    """The shared rule (episode): a query's logits depend on the query set it comes in (its batch statistics);
    Chen's running averages (running): they do not."""
    learner = pretrained(Omniglot(data_dir=staged), FIVE_WAY_ONE_SHOT, 32, batch_norm=batch_norm)
    episode = Omniglot(data_dir=staged).sample_episode("test", FIVE_WAY_ONE_SHOT, 0, 0)
    predictor = list(learner.adapt(episode.support, 3))[-1]
    with torch.no_grad():
        alone, together = predictor(episode.query_x[:5]), predictor(episode.query_x)[:5]
    assert torch.allclose(alone, together, atol=1e-5) == (batch_norm == "running")
    buffers = {name for name, _ in learner.network.named_buffers()}
    assert bool(buffers) == (batch_norm == "running")


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_strong_baseline_learns_and_beats_the_cheap_one_on_staged_omniglot(staged, one_thread, head):
    """After 320 meta-training tasks (3,200 images, 200 Adam steps of 16), on 20 test episodes of 5-way 1-shot, Chen's
    200 steps beat the head at step 0 by at least 0.3 and the cheap variant's 10 steps (same pre-trained network) by at
    least 0.05. Seen: linear 0.18 -> 0.62 (cheap 0.48), cosine 0.15 -> 0.68 (cheap 0.22)."""
    suite = Omniglot(data_dir=staged)
    learner = pretrained(suite, FIVE_WAY_ONE_SHOT, 320, head=head)
    chen, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, 20, 10, CPU)
    chen = chen.mean(axis=0)
    learner.config = dataclasses.replace(learner.config, protocol="cheap")
    cheap, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, 20, 10, CPU)
    cheap = cheap.mean(axis=0)
    assert chen[-1] >= chen[0] + 0.3, chen
    assert chen[-1] >= cheap[-1] + 0.05, (chen, cheap)
