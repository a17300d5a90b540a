"""maml++ (Antoniou et al. 2019): its meta-gradient against a hand-unrolled reference, its schedules, and that it
learns."""
from __future__ import annotations

import math
import types

import pytest
import torch
from bench_plugins.learners.mamlpp import MSL_WEIGHTS, MAMLPlusPlus, cosine_lr, msl_weights, step_key
from bench_plugins.suites.sinusoid import Sinusoid
from torch import nn
from torch.nn import functional as F

from bench.api import Episode, Setting, TaskKind
from bench.config import ConfigError, learner_config
from bench.nn.backbones import EpisodeBatchNorm
from bench.protocol import evaluate
from bench.runner import HostContext

WEIGHTS = ("0.weight", "0.bias", "4.weight", "4.bias")
NORM = ("1.weight", "1.bias")


def tiny_conv_net() -> nn.Sequential:
    """3x3 conv (2 filters), batch norm, ReLU, flatten, linear to 3 classes, on 4x4 single-channel images."""
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), EpisodeBatchNorm(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def hand_forward(weights: list[torch.Tensor], norm: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``tiny_conv_net`` written out, with batch norm on the statistics of ``x`` (biased variance, eps 1e-5)."""
    conv_w, conv_b, linear_w, linear_b = weights
    gamma, beta = norm
    h = F.conv2d(x, conv_w, conv_b, padding=1)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return F.relu(h).flatten(1) @ linear_w.T + linear_b


def unrolled_loss(learner: MAMLPlusPlus, batch: Episode, steps: int, first_order: bool) -> torch.Tensor:
    """MAML++'s outer loss with an explicit per-task loop of torch.autograd.grad: step k with step k's batch-norm
    weights and rates, the query after step k with step k's batch norm, the query losses weighted by the MSL weights."""
    slow = learner.slow
    losses = []
    for task in range(batch.support_x.shape[0]):
        fast = [learner.fast[name] for name in WEIGHTS]
        total = 0.0
        for k in range(steps):
            norm = [slow[step_key(name, k)] for name in NORM]
            support_loss = F.cross_entropy(hand_forward(fast, norm, batch.support_x[task]), batch.support_y[task])
            grads = torch.autograd.grad(support_loss, fast, create_graph=not first_order)
            fast = [w - slow[step_key("lr:" + name, k)] * g for name, w, g in zip(WEIGHTS, fast, grads)]
            query_loss = F.cross_entropy(hand_forward(fast, norm, batch.query_x[task]), batch.query_y[task])
            total = total + slow[MSL_WEIGHTS][k] * query_loss
        losses.append(total)
    return torch.stack(losses).mean()


def built(network: nn.Module, suite, **overrides) -> MAMLPlusPlus:
    learner = MAMLPlusPlus(MAMLPlusPlus.Config(**overrides))
    learner.build(types.SimpleNamespace(backbone=lambda: network, suite=suite, setting=Setting("fixed", 2, 2, 3),
                                        device=torch.device("cpu"), generator=torch.Generator().manual_seed(1)))
    return learner


def conv_learner_and_batch() -> tuple[MAMLPlusPlus, Episode]:
    """maml++ on ``tiny_conv_net`` in float64, 2 inner steps, every per-step tensor (batch norm, rates) drawn apart
    so that a step reading another step's would show; and 3 tasks of 3-way random images."""
    torch.manual_seed(0)
    suite = types.SimpleNamespace(kind=TaskKind.CLASSIFICATION, loss=F.cross_entropy)
    learner = built(tiny_conv_net().double(), suite, inner_steps=2, inner_lr=0.3)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for key, tensor in learner.slow.items():
            if key.startswith("lr:"):
                tensor.uniform_(0.1, 0.5, generator=generator)
            elif key != MSL_WEIGHTS:
                tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.3)
        learner.slow[MSL_WEIGHTS].copy_(torch.tensor([0.3, 0.7]))
    labels = torch.arange(3).repeat(2).expand(3, 6)
    batch = Episode(torch.randn(3, 6, 1, 4, 4, generator=generator, dtype=torch.float64), labels,
                    torch.randn(3, 6, 1, 4, 4, generator=generator, dtype=torch.float64), labels,
                    torch.zeros(3, 0, dtype=torch.long))
    return learner, batch


def flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors)])


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_meta_gradient_matches_hand_unrolled_reference(first_order):
    """Every meta-parameter's gradient (weights, each step's batch-norm weight and bias, each step's rate of each
    weight) equals the unrolled reference's to 1e-8; first order: the reference with its inner gradients detached."""
    learner, batch = conv_learner_and_batch()
    parameters = learner.meta_parameters()
    assert len(parameters) == len(WEIGHTS) + 2 * len(NORM) + 2 * len(WEIGHTS)  # 4 weights, 2 x 2 norms, 2 x 4 rates
    ours = learner.loop.meta_loss(learner.fast, learner.slow, batch, 2, first_order)
    reference = unrolled_loss(learner, batch, 2, first_order)
    assert torch.allclose(ours, reference, atol=1e-12, rtol=0)
    ours_grad, reference_grad = flat_grad(ours, parameters), flat_grad(reference, parameters)
    assert torch.allclose(ours_grad, reference_grad, atol=1e-8, rtol=0), (ours_grad - reference_grad).abs().max()


def test_orders_differ_and_last_step_loss_is_the_msl_with_weights_zero_one():
    """Guards the test above: the two orders differ; after the MSL phase the loss is the last step's query loss, the
    MSL reference with weights (0, 1)."""
    learner, batch = conv_learner_and_batch()
    parameters = learner.meta_parameters()
    second, first = (flat_grad(learner.loop.meta_loss(learner.fast, learner.slow, batch, 2, order), parameters)
                     for order in (False, True))
    assert (second - first).abs().max() > 1e-4
    last_only = learner.loop.__class__(learner.loop.inner, learner.loop.trained_steps, multi_step=False)
    ours = flat_grad(last_only.meta_loss(learner.fast, learner.slow, batch, 2, False), parameters)
    with torch.no_grad():
        learner.slow[MSL_WEIGHTS].copy_(torch.tensor([0.0, 1.0]))
    assert torch.allclose(ours, flat_grad(unrolled_loss(learner, batch, 2, False), parameters), atol=1e-8, rtol=0)


def test_test_time_steps_use_their_own_then_the_last_steps_batch_norm_and_rates():
    """adapt(): the predictor after 0 steps uses step 0's batch norm, after k >= 1 steps step k-1's; a third step
    (beyond the 2 trained) takes step 1's rates and batch norm. Checked against the hand-written forward."""
    learner, batch = conv_learner_and_batch()
    support, query = Episode(*(field[0] for field in batch)).support, batch.query_x[0]
    predictions = [predictor(query) for predictor in learner.adapt(support, 3)]
    fast = [learner.fast[name].detach() for name in WEIGHTS]
    expected = []
    for k in range(4):
        step = min(max(k - 1, 0), 1)
        norm = [learner.slow[step_key(name, step)].detach() for name in NORM]
        expected.append(hand_forward(fast, norm, query))
        if k < 3:
            leaves = [w.requires_grad_() for w in fast]
            rate_step = min(k, 1)
            norm = [learner.slow[step_key(name, rate_step)].detach() for name in NORM]
            grads = torch.autograd.grad(F.cross_entropy(hand_forward(leaves, norm, support.x), support.y), leaves)
            fast = [(w - learner.slow[step_key("lr:" + name, rate_step)] * g).detach()
                    for name, w, g in zip(WEIGHTS, leaves, grads)]
    for ours, reference in zip(predictions, expected, strict=True):
        assert torch.allclose(ours, reference, atol=1e-10)


def test_on_the_sinusoid_mlp_only_rates_are_per_step():
    """The MLP has no batch norm: BNWB adds nothing; every weight adapts (adapted_parameter_count), one rate per
    weight tensor and step."""
    learner = built(Sinusoid().backbone(Sinusoid().settings()[1]), Sinusoid(), inner_steps=3)
    assert not any("@" in key and not key.startswith("lr:") for key in learner.slow)
    assert sum(key.startswith("lr:") for key in learner.slow) == 3 * len(learner.fast) == 18
    assert learner.adapted_parameter_count() == sum(t.numel() for t in learner.fast.values()) == 1761


def test_image_backbones_keep_batch_norm_out_of_the_inner_loop():
    learner = built(tiny_conv_net(), types.SimpleNamespace(kind=TaskKind.CLASSIFICATION, loss=F.cross_entropy),
                    inner_steps=2)
    assert set(learner.fast) == set(WEIGHTS) and learner.adapted_parameter_count() == 2 * 9 + 2 + 3 * 32 + 3
    assert {step_key(name, k) for name in NORM for k in range(2)} <= set(learner.slow)
    shared = built(tiny_conv_net(), types.SimpleNamespace(kind=TaskKind.CLASSIFICATION, loss=F.cross_entropy),
                   inner_steps=2, per_step_bn=False)
    assert set(NORM) <= set(shared.slow) and not any(step_key(name, 0) in shared.slow for name in NORM)



@pytest.mark.slow
def test_compiled_meta_gradient_equals_eager():
    """``compile=true`` (the same torch.func meta-loss, compiled; full chunks compiled, the short last one eager) gives
    the eager meta-gradient (seen: 2.4e-7 largest difference, float32, of entries up to 2.1; 84 s compile here)."""
    suite, setting = Sinusoid(), Sinusoid().settings()[1]
    batch = suite.sample_batch("train", setting, 0, range(5))
    gradients = []
    for compile_ in ("false", "true"):
        torch.manual_seed(0)
        learner = built(suite.backbone(setting), suite, inner_steps=2, chunk_tasks=2, compile=compile_)
        loss = learner.accumulate_meta_gradient(batch)
        gradients.append((loss, torch.cat([p.grad.flatten() for p in learner.meta_parameters()])))
    (eager_loss, eager), (compiled_loss, compiled) = gradients
    assert torch.allclose(eager_loss, compiled_loss, atol=1e-6)
    assert torch.allclose(eager, compiled, atol=1e-5, rtol=1e-4), (eager - compiled).abs().max()

# -- the schedules --------------------------------------------------------------------------------------------------


def test_msl_weights_anneal_as_the_reference():
    """HowToTrainYourMAMLPytorch get_per_step_loss_importance_vector, 5 steps: uniform at the start; halfway the
    non-final weights halve (0.1) and the last takes the rest (0.6); at the end the non-final ones sit at the floor
    0.03 / 5 and the last at 1 - 4 x 0.006. They always sum to one."""
    assert msl_weights(5, 0.0, 0.03) == pytest.approx([0.2] * 5)
    assert msl_weights(5, 0.5, 0.03) == pytest.approx([0.1] * 4 + [0.6])
    assert msl_weights(5, 0.999, 0.03) == pytest.approx([0.006] * 4 + [0.976])
    for progress in (0.0, 0.3, 0.7, 0.99):
        assert sum(msl_weights(5, progress, 0.03)) == pytest.approx(1.0)


class Recording(MAMLPlusPlus):
    """Records, at every outer step, the schedule's point, order, loss form, MSL weights and Adam's rate."""

    def follow_schedule(self, done, optimizer):
        super().follow_schedule(done, optimizer)
        self.seen = [*getattr(self, "seen", []), (done, self._meta_gradient.first_order, self.loop.multi_step,
                                                  self.slow[MSL_WEIGHTS].tolist(), optimizer.adam.param_groups[0]["lr"])]


def test_meta_training_follows_the_schedules():
    """10 outer steps of 4 tasks: first order for the first 30% of the budget, the MSL for the first 50% (its
    weights annealing), then the last step's loss; Adam's rate on the cosine from 1e-2 to 1e-4."""
    suite, setting = Sinusoid(), Sinusoid().settings()[1]
    learner = Recording(learner_config("mamlpp", MAMLPlusPlus.Config, {
        "inner_steps": 2, "meta_batch": 4, "outer_lr": 1e-2, "min_outer_lr": 1e-4, "msl_fraction": 0.5,
        "first_order_fraction": 0.3, "compile": "false"}))
    learner.meta_train(HostContext(suite, setting, 0, 40, torch.device("cpu"), lambda tasks, loss: None))
    done, first_order, multi_step, weights, rates = zip(*learner.seen)
    assert done == pytest.approx([step / 10 for step in range(10)])
    assert first_order == (True,) * 3 + (False,) * 7
    assert multi_step == (True,) * 5 + (False,) * 5
    assert [row[1] for row in weights] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9] + [1.0] * 5)  # progress done / 0.5
    assert [row[0] for row in weights] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1] + [0.0] * 5)
    assert rates == pytest.approx([1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * step / 10)) / 2
                                   for step in range(10)])
    assert cosine_lr(1e-3, 1e-5, 1.0) == pytest.approx(1e-5) and cosine_lr(1e-3, 1e-5, 0.5) == pytest.approx(5.05e-4)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"msl_fraction": 1.5}, "--set mamlpp: msl_fraction, msl_min_share and first_order_fraction must lie in [0, 1], "
                            "got 1.5, 0.03 and 0.3333333333333333"),
    ({"min_outer_lr": 0.1}, "--set mamlpp: need inner_steps >= 1 and 0 <= min_outer_lr <= outer_lr, got 1, 0.1 and "
                            "0.001"),
    ({"outer_lr_decay_every": 100}, "--set mamlpp: maml++ anneals the outer rate by a cosine (min_outer_lr): "
                                    "outer_lr_decay_every must be 0, got 100"),
])
def test_bad_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as raised:
        learner_config("mamlpp", MAMLPlusPlus.Config, overrides)
    assert str(raised.value) == message


def test_the_schedules_resume_from_a_checkpoint(tmp_path):
    """Interrupted after 24 of 40 tasks and resumed from the checkpoint, meta-training goes on at 60% of the budget
    (order, MSL and rate there) and ends with the uninterrupted run's weights."""
    from bench.runner import Checkpoints

    suite, setting = Sinusoid(), Sinusoid().settings()[1]
    config = {"inner_steps": 2, "meta_batch": 4, "outer_lr": 1e-2, "msl_fraction": 0.5, "compile": "false"}
    plan = Checkpoints(tmp_path / "checkpoint.pt", 24)
    whole = Recording(MAMLPlusPlus.Config(**config))
    whole.meta_train(HostContext(suite, setting, 0, 40, torch.device("cpu"), lambda tasks, loss: None, plan))
    resumed = Recording(MAMLPlusPlus.Config(**config))
    resumed.meta_train(HostContext(suite, setting, 0, 40, torch.device("cpu"), lambda tasks, loss: None, plan))
    assert resumed.seen == whole.seen[6:]
    assert all(torch.equal(a, b) for a, b in zip(whole.meta_parameters(), resumed.meta_parameters(), strict=True))


# -- it learns ------------------------------------------------------------------------------------------------------


def test_meta_training_beats_untrained_on_sinusoid():
    """K=10 sinusoid, 2 inner steps (so that the MSL and per-step rates act), 2,000 tasks at a 10x outer rate (the
    sinusoid MLP's MAML initialisation, std 0.01, needs tens of thousands of tasks at 1e-3, as maml's test says): the
    test MSE after the 2 trained steps, over 50 held-out episodes, falls below 0.85 x the untrained one's (seen: 3.60 /
    4.52 = 0.79; 5-10 s on a busy machine)."""
    suite, setting = Sinusoid(), Sinusoid().settings()[1]
    errors = []
    for tasks in (0, 2000):
        learner = MAMLPlusPlus(MAMLPlusPlus.Config(inner_steps=2, outer_lr=1e-2, min_outer_lr=1e-4, compile="false"))
        learner.meta_train(HostContext(suite, setting, 0, tasks, torch.device("cpu"), lambda tasks, loss: None))
        metric, _ = evaluate(learner, suite, setting, 0, 50, steps=2, device=torch.device("cpu"))
        errors.append(float(metric[:, 2].mean()))
    untrained, trained = errors
    assert trained < 0.85 * untrained, errors
