"""The meta-gradients of the gradient-based learners against references computed other ways (float64)."""
from __future__ import annotations

import types

import pytest
import torch
from bench_plugins.learners.adaptation_layer import AdaptationLayer
from bench_plugins.learners.maml import MAML, FirstOrderMAML
from bench_plugins.suites.sinusoid import Sinusoid
from helpers import learn2learn_meta_loss
from torch.nn import functional as F

from bench.api import Episode, Setting
from bench.nn.backbones import conv4, conv4_strided, mlp, resnet12

TOLERANCE = 1e-8


def tiny_batch(tasks: int = 4, shots: int = 5) -> Episode:
    suite = Sinusoid()
    setting = suite.settings()[0]
    batch = suite.sample_batch("train", setting, seed=3, indices=range(tasks))
    return batch._replace(support_x=batch.support_x.double(), support_y=batch.support_y.double(),
                          query_x=batch.query_x.double(), query_y=batch.query_y.double())


def build(learner_class, **overrides):
    torch.manual_seed(0)
    network = mlp([1, 8, 8, 1]).double()
    learner = learner_class(learner_class.Config(**overrides))
    context = types.SimpleNamespace(backbone=lambda: network, suite=Sinusoid(), setting=Sinusoid().settings()[0],
                                    device=torch.device("cpu"), generator=torch.Generator().manual_seed(1))
    learner.build(context)
    if learner_class is AdaptationLayer:
        learner.slow = {name: tensor.detach().double().requires_grad_() for name, tensor in learner.slow.items()}
        learner.fast = {name: tensor.double() for name, tensor in learner.fast.items()}
    return learner, network


def manual_mlp(weights: list[torch.Tensor], x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """The 1-8-8-1 ReLU network written out by hand; ``shift`` is added to the first pre-activation."""
    w1, b1, w2, b2, w3, b3 = weights
    hidden = x @ w1.T + b1 + (0 if shift is None else shift)
    hidden = torch.relu(hidden) @ w2.T + b2
    return torch.relu(hidden) @ w3.T + b3


def unrolled_maml_loss(weights, batch: Episode, lr: float, steps: int, first_order: bool) -> torch.Tensor:
    """MAML's meta-loss with an explicit per-task loop and torch.autograd.grad(create_graph=True)."""
    losses = []
    for task in range(batch.support_x.shape[0]):
        fast = list(weights)
        for _ in range(steps):
            support_loss = F.mse_loss(manual_mlp(fast, batch.support_x[task]), batch.support_y[task])
            grads = torch.autograd.grad(support_loss, fast, create_graph=not first_order)
            fast = [w - lr * g for w, g in zip(fast, grads)]
        losses.append(F.mse_loss(manual_mlp(fast, batch.query_x[task]), batch.query_y[task]))
    return torch.stack(losses).mean()


def flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors)])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("learner_class", [MAML, FirstOrderMAML])
def test_maml_meta_gradient_matches_unrolled_reference(learner_class, steps):
    learner, network = build(learner_class, inner_lr=0.05, inner_steps=steps)
    batch = tiny_batch()
    weights = list(network.parameters())
    ours = flat_grad(learner.meta_loss(batch), weights)
    reference = flat_grad(unrolled_maml_loss(weights, batch, 0.05, steps, learner_class.first_order), weights)
    assert torch.allclose(ours, reference, atol=TOLERANCE, rtol=0), (ours - reference).abs().max()


def test_second_order_differs_from_first_order():
    """Guards the reference test above: the two orders must not coincide by construction."""
    maml, network = build(MAML, inner_lr=0.05, inner_steps=2)
    batch = tiny_batch()
    weights = list(network.parameters())
    second = flat_grad(maml.meta_loss(batch), weights)
    first = flat_grad(unrolled_maml_loss(weights, batch, 0.05, 2, first_order=True), weights)
    assert (second - first).abs().max() > 1e-4


def test_first_order_gradient_is_query_gradient_at_adapted_weights():
    learner, network = build(FirstOrderMAML, inner_lr=0.05, inner_steps=2)
    batch = tiny_batch(tasks=1)
    weights = list(network.parameters())
    ours = flat_grad(learner.meta_loss(batch), weights)
    fast = [w.detach().clone() for w in weights]
    for _ in range(2):
        fast = [w.requires_grad_() for w in fast]
        grads = torch.autograd.grad(F.mse_loss(manual_mlp(fast, batch.support_x[0]), batch.support_y[0]), fast)
        fast = [(w - 0.05 * g).detach() for w, g in zip(fast, grads)]
    fast = [w.requires_grad_() for w in fast]
    query_gradient = flat_grad(F.mse_loss(manual_mlp(fast, batch.query_x[0]), batch.query_y[0]), fast)
    assert torch.allclose(ours, query_gradient, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("learner_class", [MAML, FirstOrderMAML, AdaptationLayer])
def test_vmapped_meta_batch_equals_mean_of_single_tasks(learner_class):
    learner, _ = build(learner_class, inner_steps=2)
    batch = tiny_batch(tasks=5)
    parameters = learner.meta_parameters()
    batched = flat_grad(learner.meta_loss(batch), parameters)
    singles = torch.stack([
        flat_grad(learner.meta_loss(Episode(*(field[task : task + 1] for field in batch))), parameters)
        for task in range(5)
    ])
    assert torch.allclose(batched, singles.mean(0), atol=TOLERANCE, rtol=0)


def test_adaptation_layer_meta_gradient_matches_unrolled_reference():
    learner, _ = build(AdaptationLayer, inner_lr=1.0, inner_steps=2, context_dim=3)
    batch = tiny_batch()
    *weights, context_map = learner.slow.values()  # the backbone's weights, then the shift map
    parameters = [*weights, context_map]
    losses = []
    for task in range(batch.support_x.shape[0]):
        context = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        for _ in range(2):
            loss = F.mse_loss(manual_mlp(weights, batch.support_x[task], context_map @ context), batch.support_y[task])
            (grad,) = torch.autograd.grad(loss, context, create_graph=True)
            context = context - 1.0 * grad
        losses.append(F.mse_loss(manual_mlp(weights, batch.query_x[task], context_map @ context), batch.query_y[task]))
    reference = flat_grad(torch.stack(losses).mean(), parameters)
    ours = flat_grad(learner.meta_loss(batch), parameters)
    assert torch.allclose(ours, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_learn2learn(first_order):
    l2l = pytest.importorskip("learn2learn")
    learner_class = FirstOrderMAML if first_order else MAML
    learner, network = build(learner_class, inner_lr=0.05, inner_steps=2)
    batch = tiny_batch()
    weights = list(network.parameters())
    ours = flat_grad(learner.meta_loss(batch), weights)

    reference_maml = l2l.algorithms.MAML(network, lr=0.05, first_order=first_order)
    reference = flat_grad(learn2learn_meta_loss(reference_maml, batch, steps=2), weights)
    assert torch.allclose(ours, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("make_network", [
    lambda: conv4(in_channels=1, filters=8, ways=3, image_size=16),
    lambda: conv4_strided(in_channels=1, filters=8, ways=3),
    lambda: resnet12(in_channels=1, ways=3, image_size=16, channels=(4, 8, 8, 8)),
], ids=["conv4", "conv4-strided", "resnet12"])
def test_batch_norm_second_order_meta_gradient_under_vmap_matches_unbatched_reference(make_network):
    """The torch.func + vmap batch-norm pitfall (ENVIRONMENT.md): vmapped vs per-task unrolled autograd, float64, on
    each image backbone (ResNet-12: its batch norms inside residual blocks)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    network = make_network().double()
    learner = MAML(MAML.Config(inner_lr=0.4, inner_steps=2, inner_loss="mean"))
    context = types.SimpleNamespace(backbone=lambda: network, suite=types.SimpleNamespace(loss=F.cross_entropy),
                                    setting=Setting("3-way 2-shot", 2, 2, 3), device=torch.device("cpu"),
                                    generator=torch.Generator().manual_seed(1))
    learner.build(context)
    generator = torch.Generator().manual_seed(2)
    tasks = 4
    batch = Episode(
        torch.randn(tasks, 6, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (tasks, 6), generator=generator),
        torch.randn(tasks, 9, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (tasks, 9), generator=generator),
        torch.zeros(tasks, 0, dtype=torch.long),
    )
    names, weights = zip(*network.named_parameters())
    ours = flat_grad(learner.meta_loss(batch), list(weights))

    def forward(fast, x):
        return functional_call(network, dict(zip(names, fast)), (x,))

    losses = []
    for task in range(tasks):
        fast = list(weights)
        for _ in range(2):
            support_loss = F.cross_entropy(forward(fast, batch.support_x[task]), batch.support_y[task])
            grads = torch.autograd.grad(support_loss, fast, create_graph=True)
            fast = [w - 0.4 * g for w, g in zip(fast, grads)]
        losses.append(F.cross_entropy(forward(fast, batch.query_x[task]), batch.query_y[task]))
    reference = flat_grad(torch.stack(losses).mean(), list(weights))
    assert torch.allclose(ours, reference, atol=1e-10, rtol=1e-8), (ours - reference).abs().max()


@pytest.mark.parametrize("learner_class", [MAML, AdaptationLayer])
def test_chunked_meta_batch_gives_the_same_gradient(learner_class):
    batch = tiny_batch(tasks=5)
    gradients = []
    for chunk in (0, 2):
        learner, _ = build(learner_class, inner_steps=2, chunk_tasks=chunk)
        loss = learner.accumulate_meta_gradient(batch)
        gradients.append((loss, torch.cat([p.grad.flatten() for p in learner.meta_parameters()])))
    (full_loss, full), (chunked_loss, chunked) = gradients
    assert torch.allclose(full_loss, chunked_loss, atol=1e-12) and torch.allclose(full, chunked, atol=1e-12, rtol=0)


@pytest.mark.parametrize("learner_class", [MAML, FirstOrderMAML, AdaptationLayer])
def test_pure_torch_func_meta_loss_has_the_eager_gradient(learner_class):
    """The all-``torch.func`` meta-loss that ``compile=true`` compiles equals the eager one, gradient included."""
    learner, _ = build(learner_class, inner_steps=2)
    batch = tiny_batch(tasks=3)
    weights = learner.meta_parameters()
    eager = learner.meta_loss(batch)
    pure = learner.loop.pure_meta_loss(learner.fast, learner.slow, batch, 2, learner.first_order)
    assert torch.allclose(eager, pure, atol=1e-12)
    assert torch.allclose(flat_grad(eager, weights), flat_grad(pure, weights), atol=1e-12, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("learner_class", [MAML, FirstOrderMAML, AdaptationLayer])
def test_compiled_meta_gradient_equals_eager(learner_class):
    """``compile=true``: the torch.compile-d meta-gradient (full chunks) plus the eager short last chunk."""
    batch = tiny_batch(tasks=5)
    gradients = []
    for compile_ in ("false", "true"):
        learner, _ = build(learner_class, inner_steps=2, chunk_tasks=2, compile=compile_)
        loss = learner.accumulate_meta_gradient(batch)
        gradients.append((loss, torch.cat([p.grad.flatten() for p in learner.meta_parameters()])))
    (eager_loss, eager), (compiled_loss, compiled) = gradients
    assert not compiled.requires_grad
    assert torch.allclose(eager_loss, compiled_loss, atol=1e-10)
    assert torch.allclose(eager, compiled, atol=1e-10, rtol=1e-8), (eager - compiled).abs().max()


# --- the inner loss on classification (cbfinn/maml utils.xent) ----------------------------------------------------


def reference_inner_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cbfinn/maml's classification loss as its inner step sees it: the sum over the classes of each class's mean
    cross-entropy (utils.xent divides each example's by K; tf.gradients sums them)."""
    per_example = F.cross_entropy(logits, labels, reduction="none")
    return sum(per_example[labels == label].mean() for label in labels.unique())


def three_way(**overrides) -> tuple[MAML, torch.nn.Module, Episode]:
    """MAML on a float64 4-8-3 MLP for a 3-way 2-shot setting, and 2 tasks of random inputs (balanced support)."""
    from bench.api import TaskKind

    torch.manual_seed(0)
    network = mlp([4, 8, 3]).double()
    learner = MAML(MAML.Config(**overrides))
    suite = types.SimpleNamespace(kind=TaskKind.CLASSIFICATION, loss=F.cross_entropy)
    learner.build(types.SimpleNamespace(backbone=lambda: network, suite=suite, setting=Setting("3-way 2-shot", 2, 2, 3),
                                        device=torch.device("cpu"), generator=torch.Generator().manual_seed(1)))
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(3).repeat_interleave(2).expand(2, 6)
    batch = Episode(torch.randn(2, 6, 4, generator=generator, dtype=torch.float64), labels,
                    torch.randn(2, 6, 4, generator=generator, dtype=torch.float64), labels,
                    torch.zeros(2, 0, dtype=torch.long))
    return learner, network, batch


def test_maml_inner_step_on_classification_is_the_references():
    """One test-time step at alpha 0.4 equals a hand-computed step on the sum over classes of per-class mean
    cross-entropies: 3x the step on the mean (which the default would take without ``inner_loss=class_sum``)."""
    from torch.func import functional_call

    from bench.api import Support

    learner, network, batch = three_way(inner_lr=0.4)
    support = Support(batch.support_x[0], batch.support_y[0])
    names, weights = zip(*network.named_parameters())
    *_, adapted = learner.adapt(support, steps=1)

    def stepped(loss) -> torch.Tensor:
        grads = torch.autograd.grad(loss(functional_call(network, dict(zip(names, weights)), (support.x,)), support.y),
                                    weights)
        fast = {name: weight - 0.4 * grad for name, weight, grad in zip(names, weights, grads)}
        return functional_call(network, fast, (batch.query_x[0],))

    ours = adapted(batch.query_x[0])
    assert torch.allclose(ours, stepped(reference_inner_loss), atol=1e-12, rtol=0)
    assert (ours - stepped(F.cross_entropy)).abs().max() > 1e-3


def test_maml_meta_gradient_on_classification_takes_the_references_inner_loss():
    """Second order, two inner steps on the reference's inner loss; the outer loss stays the mean query loss."""
    learner, network, batch = three_way(inner_lr=0.4, inner_steps=2)
    weights = list(network.parameters())
    losses = []
    for task in range(2):
        fast = list(weights)
        for _ in range(2):
            logits = torch.func.functional_call(network, dict(zip(dict(network.named_parameters()), fast)),
                                                (batch.support_x[task],))
            grads = torch.autograd.grad(reference_inner_loss(logits, batch.support_y[task]), fast, create_graph=True)
            fast = [w - 0.4 * g for w, g in zip(fast, grads)]
        query = torch.func.functional_call(network, dict(zip(dict(network.named_parameters()), fast)),
                                           (batch.query_x[task],))
        losses.append(F.cross_entropy(query, batch.query_y[task]))
    reference = flat_grad(torch.stack(losses).mean(), weights)
    assert torch.allclose(flat_grad(learner.meta_loss(batch), weights), reference, atol=TOLERANCE, rtol=0)
    with_mean, same_weights, _ = three_way(inner_lr=0.4, inner_steps=2, inner_loss="mean")
    assert (flat_grad(with_mean.meta_loss(batch), list(same_weights.parameters())) - reference).abs().max() > 1e-4
