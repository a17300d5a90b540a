"""Meta-SGD, ANIL and Reptile: they learn, their gradients and updates match hand-written references."""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from bench_plugins.learners.anil import ANIL
from bench_plugins.learners.metasgd import MetaSGD
from bench_plugins.learners.reptile import SCALE_FREE_REGRESSION, Reptile
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid
from helpers import learn2learn_meta_loss, wide_polynomials
from torch.func import functional_call
from torch.nn import functional as F

from bench.api import Episode
from bench.nn.backbones import mlp
from bench.nn.functional import LR_PREFIX
from bench.protocol import evaluate
from bench.runner import HostContext

K10 = Sinusoid().settings()[1]
CPU = torch.device("cpu")
TOLERANCE = 1e-8


pytestmark = pytest.mark.usefixtures("one_thread")


def context(tasks: int) -> HostContext:
    """Sinusoid K=10 meta-training, seed 0, a budget of ``tasks``."""
    return HostContext(Sinusoid(), K10, 0, tasks, CPU, lambda tasks, loss: None)


def trained(learner_class, tasks: int, **overrides):
    learner = learner_class(learner_class.Config(**overrides))
    learner.meta_train(context(tasks))
    return learner


def mean_curve(learner_class, tasks: int, episodes: int) -> np.ndarray:
    """Meta-train on ``tasks`` tasks (0 = untrained), then the mean test MSE after each of 0..10 steps."""
    metric, _ = evaluate(trained(learner_class, tasks), Sinusoid(), K10, 0, episodes, steps=10, device=CPU)
    return metric.mean(axis=0)


@pytest.mark.parametrize(
    ("learner_class", "tasks", "margin"),
    # Seen here (100 episodes; one-step MSE trained / best of untrained steps 0-1): Meta-SGD 1.70 / 4.68 = 0.36
    # after 20,000 tasks (0.62 after 10,000), ANIL 2.56 / 4.45 = 0.57 after 20,000 (1-7 s each), Reptile 2.03 / 4.68 = 0.43 after 10,000
    # from the sinusoid suite's MAML initialisation (0.98 after 3,000, 0.77 after 6,000, 0.51 after 8,000: its small
    # weights take SGD 0.02 thousands of tasks to leave; the sine script's one task per outer step: about 40 s idle).
    [(MetaSGD, 20_000, 0.7), (ANIL, 20_000, 0.75), (Reptile, 10_000, 0.6)],
)
def test_meta_training_beats_untrained(learner_class, tasks, margin):
    """After a short budget the one-step test MSE is below ``margin`` x the untrained learner's (at step 0
    or 1, whichever is lower: untrained Meta-SGD's random rates overshoot, so its step 1 is worse than step 0)."""
    untrained = mean_curve(learner_class, tasks=0, episodes=100)
    meta_trained = mean_curve(learner_class, tasks=tasks, episodes=100)
    assert meta_trained[1] < margin * untrained[:2].min(), (meta_trained[1], untrained[:2])


@pytest.mark.parametrize("learner_class", [MetaSGD, ANIL, Reptile])
def test_batched_adaptation_gives_the_same_numbers_as_one_at_a_time(learner_class):
    learner = trained(learner_class, 1_000)
    one_at_a_time, _ = evaluate(learner, Sinusoid(), K10, 0, 40, 3, CPU, batched=False)
    batched, _ = evaluate(learner, Sinusoid(), K10, 0, 40, 3, CPU, batched=True)
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, one_at_a_time, rtol=1e-5, atol=1e-7)


def test_reptile_falls_back_to_scale_free_steps_on_a_regression_suite_it_does_not_know():
    """On a third-party regression suite with large targets (cubics on x in [-3, 3], up to about 90) reptile's
    defaults are Adam's steps (``SCALE_FREE_REGRESSION``), not the sine script's SGD: test-time adaptation stays finite
    untrained and trained, and 1,000 tasks more than halve the step-10 MSE of step 0. With the sine script's SGD the
    untrained network's 10 test steps reach NaN (checked), and its meta-training stopped with a NaN training loss
    after 220 tasks (benchmarks/reptile_scale.py)."""
    suite = wide_polynomials(3.0)
    setting = suite.settings()[1]
    defaults = Reptile.suite_defaults(suite, setting)
    assert defaults == SCALE_FREE_REGRESSION and Reptile.suite_defaults(Sinusoid(), K10) == {}
    curves = []
    for tasks in (0, 1_000):
        learner = Reptile(Reptile.Config(**defaults))
        learner.meta_train(HostContext(suite, setting, 0, tasks, CPU, lambda tasks, loss: None))
        metric, _ = evaluate(learner, suite, setting, 0, 50, 10, CPU)
        assert np.isfinite(metric).all(), tasks
        curves.append(metric.mean(0))
    trained = curves[1]
    assert trained[10] < 0.5 * trained[0], curves


def test_image_suite_defaults_are_the_papers():
    """Valid configurations for every image setting; spot checks of the values chosen."""
    for suite in (Omniglot(), MiniImageNet()):
        for setting in suite.settings():
            for learner_class in (MetaSGD, ANIL, Reptile):
                learner_class.Config(**learner_class.suite_defaults(suite, setting))
    omniglot_20_way, mini_imagenet_5_shot = Omniglot().settings()[2], MiniImageNet().settings()[1]
    assert MetaSGD.suite_defaults(Omniglot(), omniglot_20_way) == {"meta_batch": 16, "inner_steps": 1}
    assert ANIL.suite_defaults(MiniImageNet(), mini_imagenet_5_shot) == {
        "inner_lr": 0.01, "inner_steps": 5, "meta_batch": 2, "clip_grad": 10 * 5 / 75}
    assert Reptile.suite_defaults(MiniImageNet(), mini_imagenet_5_shot) == {
        "inner_optimizer": "adam", "meta_batch": 5, "outer_lr": 1.0, "inner_lr": 1e-3, "inner_steps": 8,
        "inner_batch": 10, "eval_lr": 1e-3}
    assert (Reptile.Config().meta_batch, Reptile.Config().outer_lr) == (1, 0.1)  # the authors' sine script


# --- Meta-SGD -------------------------------------------------------------------------------------------------


def tiny_batch(tasks: int = 4) -> Episode:
    batch = Sinusoid().sample_batch("train", Sinusoid().settings()[0], seed=3, indices=range(tasks))
    return Episode(*(field.double() if field.is_floating_point() else field for field in batch))


def build(learner_class, **overrides):
    """A learner on a float64 1-8-8-1 MLP, built without meta-training."""
    torch.manual_seed(0)
    network = mlp([1, 8, 8, 1]).double()
    learner = learner_class(learner_class.Config(**overrides))
    learner.build(types.SimpleNamespace(backbone=lambda: network, suite=Sinusoid(), setting=Sinusoid().settings()[0],
                                        device=CPU, generator=torch.Generator().manual_seed(1)))
    return learner, network


def flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors)])


@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_meta_gradient_matches_unrolled_reference(steps):
    """Weights and learned rates: our vectorised meta-gradient vs a per-task loop with autograd.grad(create_graph=True)."""
    learner, network = build(MetaSGD, inner_steps=steps)
    batch = tiny_batch()
    names, weights = zip(*network.named_parameters())
    rates = [learner.slow[LR_PREFIX + name] for name in names]
    losses = []
    for task in range(batch.support_x.shape[0]):
        fast = list(weights)
        for _ in range(steps):
            prediction = functional_call(network, dict(zip(names, fast)), (batch.support_x[task],))
            grads = torch.autograd.grad(F.mse_loss(prediction, batch.support_y[task]), fast, create_graph=True)
            fast = [w - alpha * g for w, alpha, g in zip(fast, rates, grads)]
        prediction = functional_call(network, dict(zip(names, fast)), (batch.query_x[task],))
        losses.append(F.mse_loss(prediction, batch.query_y[task]))
    parameters = [*weights, *rates]
    reference = flat_grad(torch.stack(losses).mean(), parameters)
    ours = flat_grad(learner.meta_loss(batch), parameters)
    assert torch.allclose(ours, reference, atol=TOLERANCE, rtol=0), (ours - reference).abs().max()


def test_metasgd_meta_gradient_matches_learn2learn():
    l2l = pytest.importorskip("learn2learn")
    learner, network = build(MetaSGD, inner_steps=2)
    batch = tiny_batch()
    names, weights = zip(*network.named_parameters())
    rates = [learner.slow[LR_PREFIX + name] for name in names]
    reference_metasgd = l2l.algorithms.MetaSGD(network, lrs=list(rates))
    parameters = [*weights, *rates]
    reference = flat_grad(learn2learn_meta_loss(reference_metasgd, batch, steps=2), parameters)
    ours = flat_grad(learner.meta_loss(batch), parameters)
    assert torch.allclose(ours, reference, atol=TOLERANCE, rtol=0), (ours - reference).abs().max()


def test_metasgd_pure_torch_func_meta_loss_has_the_eager_gradient():
    """The all-``torch.func`` meta-loss that ``compile=true`` compiles uses the learned rates too."""
    learner, _ = build(MetaSGD, inner_steps=2)
    batch = tiny_batch(tasks=3)
    parameters = learner.meta_parameters()
    eager = learner.meta_loss(batch)
    pure = learner.loop.pure_meta_loss(learner.fast, learner.slow, batch, 2, first_order=False)
    assert torch.allclose(eager, pure, atol=1e-12)
    assert torch.allclose(flat_grad(eager, parameters), flat_grad(pure, parameters), atol=1e-12, rtol=1e-10)


@pytest.mark.slow
def test_metasgd_compiled_meta_gradient_equals_eager():
    """``compile=true``: the learned rates get their meta-gradient through the compiled graph too."""
    gradients = []
    for compile_ in ("false", "true"):
        learner, _ = build(MetaSGD, inner_steps=2, chunk_tasks=2, compile=compile_)
        loss = learner.accumulate_meta_gradient(tiny_batch(tasks=5))
        gradients.append((loss, torch.cat([p.grad.flatten() for p in learner.meta_parameters()])))
    (eager_loss, eager), (compiled_loss, compiled) = gradients
    assert torch.allclose(eager_loss, compiled_loss, atol=1e-10)
    assert torch.allclose(eager, compiled, atol=1e-10, rtol=1e-8), (eager - compiled).abs().max()


def test_metasgd_rates_are_seeded_in_range_and_meta_trained():
    rates = [trained(MetaSGD, 0).slow, trained(MetaSGD, 0).slow]
    assert rates[0].keys() == rates[1].keys() and all(torch.equal(rates[0][k], rates[1][k]) for k in rates[0])
    values = torch.cat([rate.flatten() for rate in rates[0].values()])
    assert 0.005 <= values.min() and values.max() <= 0.1 and values.std() > 0.02
    learner = trained(MetaSGD, 50)  # two meta-steps of 25 tasks
    assert {id(rate) for rate in learner.slow.values()} <= {id(tensor) for tensor in learner.meta_parameters()}
    moved = torch.cat([(learner.slow[k] - rates[0][k]).flatten() for k in rates[0]]).abs()
    # Adam moves a rate by at most about outer_lr a step (2 x outer_lr here). Under the suite's MAML initialisation
    # (std 0.01) the first layers' rate gradients are products of tiny weights, often below Adam's epsilon, so many
    # move far less (seen: 73% moved at all, the largest by 2.0e-3).
    outer_lr = learner.config.outer_lr
    assert (moved > 0).float().mean() > 0.5 and 1.5 * outer_lr < moved.max() <= 2.1 * outer_lr, moved.max()


# --- ANIL -----------------------------------------------------------------------------------------------------


def test_anil_adapts_only_the_head():
    """Test-time adaptation equals hand-written SGD on the head over the untouched meta-learned body's features."""
    learner = trained(ANIL, 500)
    assert set(learner.fast) == {"4.weight", "4.bias"}
    assert set(learner.slow) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    before = {name: tensor.detach().clone() for name, tensor in {**learner.fast, **learner.slow}.items()}
    episode = Sinusoid().sample_episode("test", K10, 0, 0)
    body = mlp([1, 40, 40, 1])[:-1]
    body.load_state_dict({name: before[name] for name in learner.slow})
    support_features, query_features = body(episode.support_x).detach(), body(episode.query_x).detach()
    weight, bias = before["4.weight"], before["4.bias"]
    for step, predictor in enumerate(learner.adapt(episode.support, steps=3)):
        expected = query_features @ weight.T + bias
        assert torch.allclose(predictor(episode.query_x), expected, atol=1e-5), step
        head = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
        loss = F.mse_loss(support_features @ head[0].T + head[1], episode.support_y)
        grad_weight, grad_bias = torch.autograd.grad(loss, head)
        weight, bias = weight - learner.config.inner_lr * grad_weight, bias - learner.config.inner_lr * grad_bias
    assert all(torch.equal(tensor, before[name]) for name, tensor in {**learner.fast, **learner.slow}.items())


def test_anil_meta_trains_the_body_through_the_head_update():
    """The body's meta-gradient is second order: it differs from the one with the head update's gradient detached."""
    learner, network = build(ANIL, inner_lr=0.05)
    batch = tiny_batch()
    body = list(learner.slow.values())
    second = flat_grad(learner.meta_loss(batch), body)
    first = flat_grad(learner.loop.meta_loss(learner.fast, learner.slow, batch, 1, first_order=True), body)
    assert second.abs().max() > 0 and (second - first).abs().max() > 1e-6


# --- Reptile --------------------------------------------------------------------------------------------------


class TensorFlowAdam(torch.optim.Optimizer):
    """tf.train.AdamOptimizer(beta1=0), the reference's inner optimiser (openai/supervised-reptile models.py), written
    out: v <- beta2 v + (1 - beta2) g^2, w <- w - lr sqrt(1 - beta2^t) g / (sqrt(v) + 1e-8), t counting every step."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for weight in group["params"]:
                state = self.state[weight]
                state["t"] = state.get("t", 0) + 1
                state["v"] = 0.999 * state.get("v", torch.zeros_like(weight)) + 0.001 * weight.grad.square()
                weight -= group["lr"] * (1 - 0.999 ** state["t"]) ** 0.5 * weight.grad / (state["v"].sqrt() + 1e-8)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adam-per-task"])
def test_reptile_outer_update_matches_hand_written_reference(optimizer):
    """Two meta-steps of 3 tasks (budget 6): per task, optimiser steps on all its pooled examples, then
    theta + epsilon * mean(phi - theta) with epsilon = outer_lr, then outer_lr / 2 (linear annealing). Adam, as the
    reference (openai/supervised-reptile reptile.py's train_step): one optimiser for every task, whose state goes
    on from task to task while each task starts from theta; the test's steps go on from the state training ended
    with. ``adam-per-task``: a fresh optimiser per task, and at test time."""
    lr = 0.02 if optimizer == "sgd" else 1e-3
    learner = trained(Reptile, 6, meta_batch=3, inner_steps=3, inner_batch=0, inner_optimizer=optimizer[:4],
                      adam_per_task=optimizer == "adam-per-task", inner_lr=lr, outer_lr=0.8, eval_lr=lr)
    reference = context(6)
    model = reference.backbone()
    make = (lambda: torch.optim.SGD(model.parameters(), lr=lr)) if optimizer == "sgd" else \
        (lambda: TensorFlowAdam(model.parameters(), lr=lr))
    shared = make()

    def descend(inner, x, y, steps):
        for _ in range(steps):
            inner.zero_grad()
            F.mse_loss(model(x), y).backward()
            inner.step()

    for epsilon, batch in zip([0.8, 0.4], reference.batches(3)):
        theta = copy.deepcopy(model.state_dict())
        adapted = []
        for task in range(3):
            model.load_state_dict(theta)
            x = torch.cat([batch.support_x[task], batch.query_x[task]])
            y = torch.cat([batch.support_y[task], batch.query_y[task]])
            descend(shared if optimizer == "adam" else make(), x, y, 3)
            adapted.append(copy.deepcopy(model.state_dict()))
        model.load_state_dict({name: theta[name] + epsilon * (sum(phi[name] for phi in adapted) / 3 - theta[name])
                               for name in theta})
    for name, expected in model.state_dict().items():
        assert torch.allclose(learner.weights[name], expected, atol=1e-6, rtol=1e-5), name

    task = Sinusoid().sample_episode("test", K10, 0, 0)
    predictions = [predict(task.query_x) for predict in learner.adapt(task.support, 2)]
    descend(shared if optimizer == "adam" else make(), task.support_x, task.support_y, 2)
    torch.testing.assert_close(predictions[-1], model(task.query_x).detach(), atol=1e-6, rtol=1e-5)


def test_reptile_minibatches_run_through_permutations_of_each_task():
    learner = Reptile(Reptile.Config(inner_steps=5, inner_batch=4))
    x = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1)
    minibatches = list(learner._minibatches(x, -x, torch.Generator().manual_seed(0)))
    assert len(minibatches) == 5 and all(mx.shape == (3, 4, 1) and torch.equal(my, -mx) for mx, my in minibatches)
    drawn = torch.cat([mx for mx, _ in minibatches], dim=1)[..., 0]  # 20 draws per task: 3 passes over 6, cut
    for task in range(3):
        for start in (0, 6, 12):
            assert sorted(drawn[task, start : start + 6].tolist()) == x[task, :, 0].tolist()
