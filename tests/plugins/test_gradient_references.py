"""The gradient learners' reference choices: each learner's inner loss, the outer loop's clamp of the meta-gradient
and step decay of its learning rate, CAVIA's FiLM layer and where it acts, and the defaults that select them."""
from __future__ import annotations

import math

import pytest
import torch
from bench_plugins.learners._gradient import OuterLoopConfig, OuterOptimizer
from bench_plugins.learners.adaptation_layer import IMAGE_DEFAULTS, AdaptationLayer
from bench_plugins.learners.anil import ANIL
from bench_plugins.learners.maml import MAML, FirstOrderMAML
from bench_plugins.learners.metasgd import MetaSGD
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid
from torch.nn import functional as F

from bench.nn.backbones import EpisodeBatchNorm, conv4
from bench.nn.modulation import ContextModulated
from bench.runner import HostContext

CPU = torch.device("cpu")


@pytest.mark.parametrize(("learner", "inner_loss"), [
    (MAML, "class_sum"), (FirstOrderMAML, "class_sum"), (ANIL, "class_sum"), (MetaSGD, "class_sum"),
    (AdaptationLayer, "mean"),
])
def test_each_learner_takes_its_references_inner_loss(learner, inner_loss):
    """cbfinn/maml's utils.xent (and the MAML-based codes of ANIL and Meta-SGD) vs CAVIA's F.cross_entropy."""
    assert learner.Config().inner_loss == inner_loss


def test_maml_clamps_mini_imagenet_meta_gradients_as_its_reference():
    """maml.py's +-10 on mini-ImageNet, in units of our mean query loss (its loss: 5 ways x 15 queries / K)."""
    one_shot, five_shot, _ = MiniImageNet().settings()
    assert MAML.suite_defaults(MiniImageNet(), one_shot)["clip_grad"] == pytest.approx(10 / 75)
    assert MAML.suite_defaults(MiniImageNet(), five_shot)["clip_grad"] == pytest.approx(10 * 5 / 75)
    assert MetaSGD.suite_defaults(MiniImageNet(), five_shot)["clip_grad"] == pytest.approx(10 * 5 / 75)
    assert all("clip_grad" not in MAML.suite_defaults(Omniglot(), setting) for setting in Omniglot().settings())


def test_cavia_image_defaults_decay_the_outer_rate_and_clamp_the_meta_gradient():
    for suite in (Omniglot(), MiniImageNet()):
        for setting in suite.settings():
            defaults = AdaptationLayer.suite_defaults(suite, setting)
            assert {key: defaults[key] for key in ("film", "outer_lr_decay", "outer_lr_decay_every", "clip_grad")} == {
                "film": True, "outer_lr_decay": 0.9, "outer_lr_decay_every": 5000, "clip_grad": 10.0}
    assert AdaptationLayer.suite_defaults(Sinusoid(), Sinusoid().settings()[0]) == {}


def test_cavias_film_layer_is_the_third_blocks_norm_followed_by_relu_and_max_pool():
    """Guards ``IMAGE_DEFAULTS["layer"]`` against a change of the image suites' Conv-4 layout."""
    for suite in (Omniglot(), MiniImageNet()):
        for setting in suite.settings():
            backbone = suite.backbone(setting)
            norms = [index for index, module in enumerate(backbone) if isinstance(module, EpisodeBatchNorm)]
            layer = IMAGE_DEFAULTS["layer"]
            assert norms[2] == layer
            assert isinstance(backbone[layer + 1], torch.nn.ReLU) and isinstance(backbone[layer + 2], torch.nn.MaxPool2d)


# --- the outer loop ---------------------------------------------------------------------------------------------


def test_meta_training_clamps_the_meta_gradient_and_decays_the_outer_rate():
    """maml's meta_train equals a hand-written loop: meta-gradient clamped to +-clip_grad, then Adam, its rate halved
    after every step (and differs from the run without either)."""
    overrides = {"clip_grad": 0.05, "outer_lr_decay": 0.5, "outer_lr_decay_every": 1, "outer_lr": 0.01,
                 "compile": "false"}

    def context() -> HostContext:
        return HostContext(Sinusoid(), Sinusoid().settings()[0], 0, 75, CPU, lambda tasks, loss: None)

    learner = MAML(MAML.Config(**overrides))
    learner.meta_train(context())

    reference, ctx = MAML(MAML.Config(**overrides)), context()
    reference.build(ctx)
    weights = reference.meta_parameters()
    adam = torch.optim.Adam(weights, lr=0.01)
    clamped = False
    for batch in ctx.batches(25):
        grads = torch.autograd.grad(reference.meta_loss(batch), weights)
        clamped |= any(bool((grad.abs() > 0.05).any()) for grad in grads)
        for weight, grad in zip(weights, grads):
            weight.grad = grad.clamp(-0.05, 0.05)
        adam.step()
        adam.param_groups[0]["lr"] *= 0.5
    assert clamped
    for ours, theirs in zip(learner.meta_parameters(), weights, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)

    plain = MAML(MAML.Config(outer_lr=0.01, compile="false"))
    plain.meta_train(context())
    assert max(float((a - b).detach().abs().max()) for a, b in zip(plain.meta_parameters(), weights)) > 1e-4


def test_the_outer_learning_rate_schedule_resumes_from_a_checkpoint():
    config = OuterLoopConfig(outer_lr=1.0, outer_lr_decay=0.5, outer_lr_decay_every=2)
    weight = torch.zeros(3, requires_grad=True)
    optimizer = OuterOptimizer([weight], config)
    rates = []
    for _ in range(3):
        weight.grad = torch.ones(3)
        optimizer.step()
        rates.append(optimizer.adam.param_groups[0]["lr"])
    assert rates == [1.0, 0.5, 0.5]
    resumed = OuterOptimizer([weight], config)
    resumed.load_state_dict(optimizer.state_dict())
    weight.grad = torch.ones(3)
    resumed.step()
    assert resumed.adam.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("fields", [{"clip_grad": -1.0}, {"outer_lr_decay": 0.0}, {"outer_lr_decay_every": -5}])
def test_outer_loop_options_are_checked(fields):
    with pytest.raises(ValueError, match="clip_grad >= 0"):
        MAML.Config(**fields)


# --- CAVIA's FiLM -----------------------------------------------------------------------------------------------


def film_network(context_dim: int = 6, filters: int = 4) -> tuple[torch.nn.Sequential, ContextModulated]:
    torch.manual_seed(0)
    backbone = conv4(in_channels=1, filters=filters, ways=3, image_size=16).double()
    network = ContextModulated(backbone, context_dim, IMAGE_DEFAULTS["layer"], True, torch.Generator().manual_seed(1))
    return backbone, network.double()


def test_film_is_a_linear_map_with_bias_acting_after_the_pool_and_before_the_relu():
    """CAVIA's block: conv, batch norm, max-pool, then h -> gamma * h + beta with (gamma, beta) = W phi + b, then ReLU.
    Modulating before the pool instead gives other outputs (gamma takes both signs)."""
    backbone, network = film_network()
    assert network.context_map.weight.shape == (8, 6) and network.context_map.bias.shape == (8,)
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    context = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gamma, beta = (network.context_map.weight @ context + network.context_map.bias).view(2, 4, 1, 1)
    assert (gamma < 0).any() and (gamma > 0).any()

    def through(modulate_after_pool: bool) -> torch.Tensor:
        hidden = backbone[:10](x)  # blocks 1-2, then block 3's conv and norm
        if modulate_after_pool:
            hidden = torch.relu(gamma * F.max_pool2d(hidden, 2) + beta)
        else:
            hidden = F.max_pool2d(torch.relu(gamma * hidden + beta), 2)
        return backbone[12:](hidden)

    ours = network(x, context)
    torch.testing.assert_close(ours, through(modulate_after_pool=True), atol=1e-12, rtol=0)
    assert (ours - through(modulate_after_pool=False)).abs().max() > 1e-3
    torch.testing.assert_close(network.tail(network.head(x)), backbone(x))  # the swap leaves the backbone as is


def test_film_is_initialised_as_cavias():
    """W Kaiming-uniform for a linear layer, +-sqrt(3 / 100); b PyTorch's default for a Linear, +-1 / sqrt(100)."""
    _, network = film_network(context_dim=100, filters=32)
    weight, bias = network.context_map.weight, network.context_map.bias
    assert math.sqrt(3 / 100) * 0.95 < weight.abs().max() <= math.sqrt(3 / 100)
    assert 0.1 * 0.95 < bias.abs().max() <= 0.1
