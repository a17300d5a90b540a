"""The gradient learners on Meta-Dataset's variable episodes (``--shots vary``): each episode's own classes among the
head's outputs, the class-balanced inner loss on imbalanced supports, one episode a step, and a run end to end."""
from __future__ import annotations

import math

import pytest
import torch
from bench_plugins.learners._gradient import as_run_on
from bench_plugins.suites.omniglot import Omniglot
from torch.nn import functional as F

from bench.api import VARY, Episode, SeedsApart
from bench.cli import main
from bench.nn.functional import InnerLoop, class_balanced_sum
from bench.runner import HostContext

pytestmark = pytest.mark.usefixtures("private_cache")

HEAD_OUTPUTS, FEATURES = 10, 6
SUPPORT_LABELS = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3])  # 4 of the head's 10 classes, 4 / 1 / 2 / 1 shots
QUERY_LABELS = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])


def vary(suite: Omniglot):
    (setting,) = [setting for setting in suite.settings() if setting.name == VARY]
    return setting


def test_class_balanced_sum_weighs_every_class_the_same():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(SUPPORT_LABELS), HEAD_OUTPUTS, generator=generator, dtype=torch.float64)
    by_hand = sum(F.cross_entropy(logits[SUPPORT_LABELS == label], SUPPORT_LABELS[SUPPORT_LABELS == label])
                  for label in range(4))
    assert torch.allclose(class_balanced_sum(F.cross_entropy, logits, SUPPORT_LABELS), by_hand, rtol=1e-12)
    balanced = torch.tensor([0, 0, 1, 1, 2, 2])  # on N-way K-shot supports: N x the mean, cbfinn/maml's loss
    assert torch.allclose(class_balanced_sum(F.cross_entropy, logits[:6], balanced),
                          3 * F.cross_entropy(logits[:6], balanced), rtol=1e-12)


def sliced_reference(weights: dict[str, torch.Tensor], episode: Episode, steps: int, lr: float,
                     class_balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta-Dataset's ``MAMLLearner`` written out for one episode of a linear model: logits sliced to the episode's
    n ways (``logits[:, 0:data.way]``), ``steps`` second-order SGD steps, then the query loss and logits."""
    ways = int(episode.support_y.max()) + 1

    def logits(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return (x @ params["weight"].T + params["bias"])[:, :ways]

    def support_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        predictions, labels = logits(params, episode.support_x), episode.support_y
        if not class_balanced:
            return F.cross_entropy(predictions, labels)
        return sum(F.cross_entropy(predictions[labels == label], labels[labels == label]) for label in range(ways))

    params = dict(weights)
    for _ in range(steps):
        grads = torch.autograd.grad(support_loss(params), list(params.values()), create_graph=True)
        params = {name: tensor - lr * gradient for (name, tensor), gradient in zip(params.items(), grads)}
    query_logits = logits(params, episode.query_x)
    return F.cross_entropy(query_logits, episode.query_y), query_logits


@pytest.mark.parametrize("class_balanced", [False, True])
def test_meta_gradient_and_predictions_equal_meta_datasets_sliced_logits(class_balanced):
    """Masking the classes an episode lacks is slicing the logits to its ways: the same second-order meta-gradient
    (float64, to 1e-10), the same adapted predictions on its ways, and -inf on the others."""
    generator = torch.Generator().manual_seed(1)
    weights = {"weight": torch.randn(HEAD_OUTPUTS, FEATURES, generator=generator, dtype=torch.float64),
               "bias": torch.randn(HEAD_OUTPUTS, generator=generator, dtype=torch.float64)}
    weights = {name: tensor.requires_grad_() for name, tensor in weights.items()}
    support_x = torch.randn(len(SUPPORT_LABELS), FEATURES, generator=generator, dtype=torch.float64)
    query_x = torch.randn(len(QUERY_LABELS), FEATURES, generator=generator, dtype=torch.float64)
    episode = Episode(support_x, SUPPORT_LABELS, query_x, QUERY_LABELS, torch.arange(4))
    loop = InnerLoop(forward=lambda fast, slow, x: x @ fast["weight"].T + fast["bias"], loss=F.cross_entropy, lr=0.3,
                     episode_classes=True, class_balanced=class_balanced)
    batch = Episode(*(field.unsqueeze(0) for field in episode))
    ours = torch.autograd.grad(loop.meta_loss(weights, {}, batch, 2, first_order=False), list(weights.values()))
    reference_loss, reference_logits = sliced_reference(weights, episode, 2, 0.3, class_balanced)
    reference = torch.autograd.grad(reference_loss, list(weights.values()))
    for mine, theirs in zip(ours, reference, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    *_, adapted = loop.trajectory(weights, {}, episode.support, 2)
    predictions = adapted(episode.query_x)
    assert torch.allclose(predictions[:, :4], reference_logits.detach(), rtol=1e-10)
    assert (predictions[:, 4:] == -math.inf).all()


def test_as_run_on_a_variable_setting_takes_one_episode_a_step(staged, registry):
    """adaptation-layer's 16 tasks a step and rate decay every 5,000 steps become 1 and 80,000 (the same episodes
    between decays), eagerly; fixed settings are untouched."""
    suite = Omniglot(data_dir=staged)
    learner_class = registry.learners["adaptation-layer"].cls
    config = learner_class.Config(**learner_class.suite_defaults(suite, vary(suite)))
    context = HostContext(suite, vary(suite), 0, task_budget=1, device=torch.device("cpu"),
                          progress=lambda tasks, loss: None)
    run = as_run_on(config, context)
    assert (run.meta_batch, run.outer_lr_decay_every, run.compile) == (1, 80_000, "false")
    assert (config.meta_batch, config.outer_lr_decay_every) == (16, 5000)
    assert any("meta-batch 16 -> 1" in note for note in context.notes), context.notes
    fixed = HostContext(suite, suite.settings()[0], 0, task_budget=1, device=torch.device("cpu"),
                        progress=lambda tasks, loss: None)
    assert as_run_on(config, fixed) is config


def test_metasgd_on_a_variable_setting_keeps_its_own_outer_rate_and_takes_no_clamp(registry):
    """Not MAML's Meta-Dataset values (outer rate 1e-4, five steps) and not its mini-ImageNet clamp, which is defined
    for a fixed N and K: one inner step, one episode a step, Meta-SGD's 1e-3."""
    from bench_plugins.suites.miniimagenet import MiniImageNet

    learner_class = registry.learners["metasgd"].cls
    for suite in (Omniglot(), MiniImageNet()):
        config = learner_class.Config(**learner_class.suite_defaults(suite, vary(suite)))
        assert (config.meta_batch, config.inner_steps, config.outer_lr, config.clip_grad) == (1, 1, 1e-3, 0.0)  # 0: off
    assert learner_class.Config(**learner_class.suite_defaults(MiniImageNet(), MiniImageNet().settings()[0])).clip_grad


def test_seeds_of_a_variable_setting_train_apart(staged, registry):
    suite = Omniglot(data_dir=staged)
    learner_class = registry.learners["maml"].cls
    learners = [learner_class(learner_class.Config(**learner_class.suite_defaults(suite, vary(suite))))
                for _ in range(2)]
    contexts = [HostContext(suite, vary(suite), seed, task_budget=2, device=torch.device("cpu"),
                            progress=lambda tasks, loss: None) for seed in range(2)]
    with pytest.raises(SeedsApart, match="the episodes of 'vary' vary in shape"):
        learner_class.meta_train_seeds(learners, contexts)


@pytest.mark.slow
def test_fomaml_learns_on_variable_episodes_of_real_omniglot(staged, registry):
    """After 100 variable episodes (5 to 49 ways, 1 to 10 shots a class), the meta-val accuracy after 3 steps beats
    the untrained network's by 0.08. A test configuration, not a default: one inner step at 0.4 on the mean loss and
    an outer rate of 1e-3 (Meta-Dataset's 5 steps at 0.01 and 1e-4 are set for 10^5 updates), the head from zero as
    Meta-Dataset's. Seen: 0.233 untrained, 0.451 after 100 episodes (about 90 s on 2 threads): slow, so in the
    ``-m slow`` job."""
    from bench.protocol import evaluate

    suite = Omniglot(data_dir=staged)
    learner_class = registry.learners["fomaml"].cls
    config = learner_class.Config(**{**learner_class.suite_defaults(suite, vary(suite)),
                                     "inner_steps": 1, "inner_lr": 0.4, "outer_lr": 1e-3})
    scores = []
    for tasks in (0, 100):
        learner = learner_class(config)
        context = HostContext(suite, vary(suite), 0, tasks, torch.device("cpu"), lambda done, loss: None)
        learner.meta_train(context) if tasks else learner.build(context)
        accuracy, _ = evaluate(learner, suite, vary(suite), 0, episodes=12, steps=3, device=torch.device("cpu"),
                               split="val")
        scores.append(accuracy.mean(axis=0))
    untrained, trained = scores
    assert trained[-1] >= untrained[-1] + 0.08, (untrained, trained)


def test_run_end_to_end_with_every_gradient_learner(staged, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    learners = "maml,fomaml,anil,metasgd,adaptation-layer,mamlpp,l2l-maml"
    assert main(["run", "--learners", learners, "--suites", "omniglot", "--shots", VARY, "--data-dir", str(staged),
                 "--profile", "smoke", "--tasks", "2", "--episodes", "2", "--steps", "1", "--val-episodes", "0",
                 "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    stderr = capsys.readouterr().err
    for name in learners.split(",")[:-1]:
        assert f"ok     {name} | omniglot vary | seed 0" in stderr, stderr
    assert "n/a    l2l-maml | omniglot vary | seed 0" in stderr


@pytest.mark.parametrize("learner_name", ["maml", "anil"])
def test_the_head_starts_at_zero_on_a_variable_setting_as_meta_datasets_maml(staged, registry, learner_name):
    """``zero_head`` (Meta-Dataset's ``zero_fc_layer``): on ``vary`` every class's logit is equal before adaptation
    (the head's weights and bias are zero); on a fixed setting the head keeps the backbone's initialisation."""
    suite = Omniglot(data_dir=staged)
    learner_class = registry.learners[learner_name].cls
    for setting, zeroed in ((vary(suite), True), (suite.settings()[0], False)):
        learner = learner_class(learner_class.Config(**learner_class.suite_defaults(suite, setting)))
        learner.build(HostContext(suite, setting, 0, task_budget=1, device=torch.device("cpu"),
                                  progress=lambda tasks, loss: None))
        weights = {**learner.fast, **learner.slow}
        last = max(int(name.split(".")[0]) for name in weights)  # the backbone's last module: its Linear head
        head = {name: tensor for name, tensor in weights.items() if name.startswith(f"{last}.")}
        assert set(head) == {f"{last}.weight", f"{last}.bias"}
        assert all(bool((tensor == 0).all()) == zeroed for tensor in head.values()), (setting.name, head)
