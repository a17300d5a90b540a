"""r2d2, metaoptnet, matchingnet and protomaml: each head against a small hand-written reference, learning on the
kit's tiny classification suite, the papers' per-suite defaults and the errors a user sees. (The conformance kit runs
them too: tests/plugins/test_conformance.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bench_plugins.learners.matchingnet import MatchingNet, MatchingNetConfig
from bench_plugins.learners.metaoptnet import MetaOptNet, MetaOptNetConfig
from bench_plugins.learners.protomaml import ProtoMAML, ProtoMAMLConfig
from bench_plugins.learners.r2d2 import R2D2, R2D2Config, ridge_weights
from bench_plugins.suites.cifarfs import CIFARFS
from bench_plugins.suites.cub import CUB
from bench_plugins.suites.fc100 import FC100
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid
from bench_plugins.suites.tieredimagenet import TieredImageNet
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from bench.api import Support
from bench.config import ConfigError, learner_config
from bench.protocol import evaluate
from bench.runner import HostContext
from bench.testing import TinyBlobs

CPU = torch.device("cpu")
BLOBS = TinyBlobs()
ONE_SHOT, FIVE_SHOT = BLOBS.settings()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the kit's tiny networks gain nothing from a second, and a busy CPU makes it slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def context(tasks: int, setting=FIVE_SHOT, suite=BLOBS) -> HostContext:
    return HostContext(suite, setting, 0, tasks, CPU, lambda tasks, loss: None)


def with_identity_embedding(learner, ways: int):
    """``learner`` meta-trained for no task, its embedding then replaced by the identity (the heads on raw inputs)."""
    learner.meta_train(context(0))
    learner.embedding, learner.ways = nn.Identity(), ways
    return learner


# -- r2d2 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("examples", "width"), [(3, 5), (6, 2)], ids=["woodbury", "primal"])
def test_ridge_weights_solve_the_normal_equations(examples, width):
    """Both forms (N x N Woodbury when N <= D, else D x D) give W = (X^T X + lambda I)^-1 X^T Y."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(examples, width, generator=generator, dtype=torch.float64)
    y = torch.randn(examples, 2, generator=generator, dtype=torch.float64)
    penalty = torch.tensor(0.7, dtype=torch.float64)
    expected = torch.linalg.inv(x.T @ x + 0.7 * torch.eye(width, dtype=torch.float64)) @ x.T @ y
    torch.testing.assert_close(ridge_weights(x, y, penalty), expected)
    x.requires_grad_(), penalty.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, penalty: ridge_weights(x, y, penalty), (x, penalty))


def test_r2d2_logits_match_a_hand_computed_ridge_head():
    """Support (0, 0), (2, 0) of class 0 and (0, 2) of class 1; lambda 1 on features and one-hot targets divided by
    sqrt(3) (the reference's scaling): the ridge solution of the unscaled ones with penalty 3, bias feature included."""
    learner = with_identity_embedding(R2D2(R2D2Config(init_lambda=1.0, init_scale=2.0, init_bias=0.5)), ways=2)
    support = Support(torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.tensor([0, 1, 0]))
    query = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    weights = torch.linalg.inv(x.T @ x + 3.0 * torch.eye(3, dtype=torch.float64)) @ x.T @ y
    expected = 2.0 * torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 1.0]], dtype=torch.float64) @ weights + 0.5
    (predict,) = learner.adapt(support, steps=3)
    torch.testing.assert_close(predict(query), expected.float())


def test_r2d2_meta_learns_lambda_alpha_and_beta_through_the_solve():
    learner = R2D2(R2D2Config())
    learner.meta_train(context(20))
    assert [float(p) for p in (learner.head.penalty, learner.head.scale, learner.head.bias)] != [50.0, 1e-4, 0.0]
    fixed = R2D2(R2D2Config(learn_lambda=False))
    fixed.meta_train(context(20))
    assert float(fixed.head.penalty) == 50.0 and float(fixed.head.scale) != 1e-4


# -- metaoptnet -------------------------------------------------------------------------------------------


def svm_dual_by_scipy(support: np.ndarray, labels: np.ndarray, ways: int, c_reg: float) -> np.ndarray:
    """The reference's Crammer-Singer dual, written out and solved by SLSQP: min 1/2 z^T (K (x) I + I) z - y^T z,
    z_i^m <= C y_i^m, sum_m z_i^m = 0; z row by row (example i, class m)."""
    from scipy.optimize import minimize

    examples = len(labels)
    one_hot = np.eye(ways)[labels].ravel()
    quadratic = np.kron(support @ support.T, np.eye(ways)) + np.eye(examples * ways)
    sums = np.kron(np.eye(examples), np.ones((1, ways)))
    result = minimize(lambda z: 0.5 * z @ quadratic @ z - one_hot @ z, np.zeros(examples * ways),
                      jac=lambda z: quadratic @ z - one_hot, method="SLSQP",
                      bounds=[(None, c_reg * bound) for bound in one_hot],
                      constraints=[{"type": "eq", "fun": lambda z: sums @ z, "jac": lambda z: sums}],
                      options={"ftol": 1e-14, "maxiter": 1000})
    assert result.success, result.message
    return result.x.reshape(examples, ways)


@pytest.mark.parametrize("c_reg", [0.1, 10.0], ids=["bounds-active", "bounds-loose"])
def test_metaoptnet_svm_matches_the_dual_solved_by_scipy(c_reg):
    """3-way, 2-shot, 4 features, in float64: qpth's solution (15 iterations) against SLSQP's, through the logits."""
    pytest.importorskip("qpth")
    learner = with_identity_embedding(MetaOptNet(MetaOptNetConfig(c_reg=c_reg)), ways=3)
    generator = torch.Generator().manual_seed(1)
    support = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    query = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    alpha = svm_dual_by_scipy(support.numpy(), labels.numpy(), 3, c_reg)
    assert np.allclose(alpha.sum(axis=1), 0, atol=1e-8)
    expected = query.numpy() @ support.numpy().T @ alpha  # class m: <q, sum_i alpha_i^m x_i>, scale 1
    logits = learner.classifier(support[None], labels[None], 3, training=True)(query[None])[0]
    np.testing.assert_allclose(logits.detach().numpy(), expected, atol=1e-4)


def test_metaoptnet_learning_rate_follows_the_reference_epochs():
    """train.py's lambda_epoch over epochs of 8,000 episodes: x1 to epoch 19, 0.06 to 39, 0.012 to 49, 0.0024 after."""
    config = MetaOptNetConfig()
    rates = [config.learning_rate(8000 * epoch) for epoch in (0, 18, 19, 38, 39, 48, 49, 59)]
    assert rates == pytest.approx([0.1, 0.1, 0.006, 0.006, 0.0012, 0.0012, 0.00024, 0.00024])
    assert MetaOptNetConfig(lr_epoch_episodes=0).learning_rate(10**7) == 0.1


def test_metaoptnet_label_smoothing_is_the_references():
    """train.py: targets 1 - eps on the label and eps / (ways - 1) elsewhere, cross-entropy on log-softmax."""
    learner = MetaOptNet(MetaOptNetConfig(label_smoothing=0.1))
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    log_p = logits[0, 0].log_softmax(dim=0)
    expected = -(0.9 * log_p[0] + 0.05 * log_p[1] + 0.05 * log_p[2])
    torch.testing.assert_close(learner.query_loss(None, logits, torch.tensor([[0]])), expected)


# -- matchingnet ------------------------------------------------------------------------------------------


def test_matchingnet_attends_by_cosine_and_sums_the_labels():
    """Support (1, 0) and (1, 1) of class 0, (0, 1) of class 1; query (1, 0): cosines 1, 1/sqrt(2), 0."""
    learner = with_identity_embedding(MatchingNet(MatchingNetConfig()), ways=2)
    support = Support(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 0]))
    (predict,) = learner.adapt(support, steps=2)
    weights = [math.e, 1.0, math.exp(1 / math.sqrt(2))]
    expected = torch.tensor([[weights[0] + weights[2], weights[1]]]) / sum(weights)
    torch.testing.assert_close(predict(torch.tensor([[1.0, 0.0]])).exp(), expected)


def lstm_cell(lstm: nn.LSTM, suffix: str) -> nn.LSTMCell:
    """One direction of a one-layer LSTM as a cell."""
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size)
    cell.load_state_dict({name: getattr(lstm, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                               "bias_hh")})
    return cell


def full_context_by_hand(head: nn.Module, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                         ways: int, steps: int) -> torch.Tensor:
    """Vinyals et al.'s appendix A, one example at a time: g(x_i) = g'(x_i) + h_i(forward) + h_i(backward);
    for each query, h = f'(x), c = 0, then K times r = sum_i softmax(h . g_i) g_i, (h^, c) = LSTM([f'(x), r], (h, c)),
    h = h^ + f'(x); then log of the cosine attention over g applied to the one-hot labels."""
    forward, backward = lstm_cell(head.support, ""), lstm_cell(head.support, "_reverse")
    states = {}
    for cell, order in ((forward, range(len(support))), (backward, reversed(range(len(support))))):
        h = c = torch.zeros(1, support.shape[1])
        for index in order:
            h, c = cell(support[index:index + 1], (h, c))
            states[cell, index] = h[0]
    context = torch.stack([support[i] + states[forward, i] + states[backward, i] for i in range(len(support))])
    rows = []
    for x in query:
        h, c = x, torch.zeros_like(x)
        for _ in range(steps):
            readout = torch.softmax(context @ h, dim=0) @ context
            hidden, c = head.query(torch.cat([x, readout])[None], (h[None], c[None]))
            h, c = hidden[0] + x, c[0]
        cosine = torch.stack([F.cosine_similarity(h, g, dim=0) for g in context])
        rows.append((torch.softmax(cosine, dim=0) @ F.one_hot(labels, ways).float()).log())
    return torch.stack(rows)


@pytest.mark.parametrize("steps", [0, 2], ids=["K=support", "K=2"])
def test_matchingnet_full_context_embeddings_match_the_papers_equations(steps):
    learner = MatchingNet(MatchingNetConfig(fce=True, fce_steps=steps))
    learner.meta_train(context(0))
    learner.embedding = nn.Identity()
    generator = torch.Generator().manual_seed(2)
    width = learner.head.support.input_size
    support = Support(torch.randn(6, width, generator=generator), torch.tensor([0, 0, 1, 1, 2, 2]))
    query = torch.randn(4, width, generator=generator)
    learner.ways = 3
    (predict,) = learner.adapt(support, steps=0)
    expected = full_context_by_hand(learner.head, *support, query, 3, steps or 6)
    torch.testing.assert_close(predict(query), expected)
    (batched,) = learner.adapt(Support(support.x[None], support.y[None]), steps=0, batched=True)
    torch.testing.assert_close(batched(query[None])[0], expected)


# -- protomaml --------------------------------------------------------------------------------------------


def protomaml(**overrides) -> ProtoMAML:
    learner = ProtoMAML(ProtoMAMLConfig(**overrides))
    learner.build(context(0))
    return learner


def test_protomaml_starts_each_task_from_the_prototype_classifier():
    """Step 0: W_k = 2 c_k, b_k = -|c_k|^2, i.e. protonet's -|z - c_k|^2 plus |z|^2 (the same for every class)."""
    learner = protomaml()
    episode = BLOBS.sample_episode("test", FIVE_SHOT, 0, 0)
    body = BLOBS.backbone(FIVE_SHOT)[:-1]
    weights = {name: tensor for name, tensor in learner.fast.items() if not name.startswith("4.")}
    embed = lambda x: functional_call(body, weights, (x,))  # noqa: E731
    support = embed(episode.support_x)
    prototypes = torch.stack([support[episode.support_y == k].mean(dim=0) for k in range(5)])
    query = embed(episode.query_x)
    expected = -torch.cdist(query, prototypes).square() + query.square().sum(dim=1, keepdim=True)
    first, *_ = learner.adapt(episode.support, steps=2)
    torch.testing.assert_close(first(episode.query_x), expected, rtol=1e-4, atol=1e-4)


def protomaml_meta_loss_by_hand(weights: dict, batch, steps: int, lr: float, through_prototypes: bool = True):
    """First-order ProtoMAML, one task at a time, written out: the head from the prototypes of the unadapted body,
    inner gradients at detached weights (the head a variable of its own), the query loss at the adapted weights."""
    model = BLOBS.backbone(FIVE_SHOT)
    losses = []
    for support_x, support_y, query_x, query_y, _ in zip(*batch):
        body = {name: tensor for name, tensor in weights.items() if not name.startswith("4.")}
        support = functional_call(model[:-1], body, (support_x,))
        prototypes = torch.stack([support[support_y == k].mean(dim=0) for k in range(5)])
        if not through_prototypes:
            prototypes = prototypes.detach()
        adapted = {**body, "4.weight": 2 * prototypes, "4.bias": -(prototypes * prototypes).sum(dim=1)}
        for _ in range(steps):
            leaves = {name: tensor.detach().requires_grad_() for name, tensor in adapted.items()}
            loss = F.cross_entropy(functional_call(model, leaves, (support_x,)), support_y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            adapted = {name: tensor - lr * grad for (name, tensor), grad in zip(adapted.items(), grads)}
        losses.append(F.cross_entropy(functional_call(model, adapted, (query_x,)), query_y))
    return torch.stack(losses).mean()


def test_protomaml_meta_gradient_matches_a_hand_written_first_order_reference():
    learner = protomaml(inner_lr=0.5, inner_steps=2, compile="false")
    batch = BLOBS.sample_batch("train", FIVE_SHOT, 0, range(3))
    loss = learner.accumulate_meta_gradient(batch)
    parameters = {name: tensor for name, tensor in learner.fast.items() if tensor.requires_grad}
    assert set(learner.fast) - set(parameters) == {"4.weight", "4.bias"}  # the backbone's head: replaced per task
    weights = {name: tensor.detach().clone().requires_grad_() for name, tensor in learner.fast.items()}
    expected = protomaml_meta_loss_by_hand(weights, batch, 2, 0.5)
    torch.testing.assert_close(loss, expected.detach())
    expected.backward()
    for name, tensor in parameters.items():
        torch.testing.assert_close(tensor.grad, weights[name].grad, rtol=1e-4, atol=1e-6)
    # The torch.func form that compile=true compiles: the same gradient.
    pure = torch.func.grad(lambda fast: learner.loop.pure_meta_loss(fast, learner.slow, batch, 2, True))(
        {name: tensor.detach() for name, tensor in learner.fast.items()})
    for name, tensor in parameters.items():
        torch.testing.assert_close(pure[name], weights[name].grad, rtol=1e-4, atol=1e-6)
    # The path through the prototypes matters: without it the body's gradient is another.
    without = {name: tensor.detach().clone().requires_grad_() for name, tensor in learner.fast.items()}
    protomaml_meta_loss_by_hand(without, batch, 2, 0.5, through_prototypes=False).backward()
    assert not torch.allclose(without["0.weight"].grad, weights["0.weight"].grad, rtol=1e-2, atol=1e-4)


# -- learning ---------------------------------------------------------------------------------------------

LEARNS = [
    # (learner, config, meta-training tasks, margin). Seen on 40 held-out 5-way 1-shot tiny-blobs episodes, untrained
    # -> after 200 tasks: r2d2 0.27 -> 0.95, metaoptnet 0.28 -> 0.65 (25 steps of its 8-episode batches), matchingnet
    # 0.30 -> 0.83, matchingnet with fce 0.28 -> 0.85, protomaml 0.29 -> 0.60 after 5 steps (its paper's outer rate,
    # 1e-4 on one episode a step, needs far more tasks than a test can give: here 1e-3 on batches of 4).
    pytest.param(R2D2, {}, 200, 0.3, id="r2d2"),
    pytest.param(MetaOptNet, {}, 200, 0.25, id="metaoptnet", marks=pytest.mark.skipif(
        MetaOptNet.unavailable_reason() is not None, reason="needs qpth")),
    pytest.param(MatchingNet, {}, 200, 0.3, id="matchingnet"),
    pytest.param(MatchingNet, {"fce": True}, 200, 0.3, id="matchingnet-fce"),
    pytest.param(ProtoMAML, {"meta_batch": 4, "outer_lr": 1e-3}, 200, 0.2, id="protomaml"),
]


@pytest.mark.parametrize(("learner_class", "overrides", "tasks", "margin"), LEARNS)
def test_meta_training_beats_the_untrained_learner(learner_class, overrides, tasks, margin):
    scores = []
    for budget in (0, tasks):
        learner = learner_class(learner_class.Config(**overrides))
        learner.meta_train(context(budget, ONE_SHOT))
        metric, _ = evaluate(learner, BLOBS, ONE_SHOT, 0, episodes=40, steps=5, device=CPU)
        scores.append(metric[:, -1].mean())
    untrained, trained = scores
    assert trained >= untrained + margin, (untrained, trained)


# -- defaults and errors ----------------------------------------------------------------------------------


def test_the_papers_defaults_per_suite_and_setting():
    omniglot_five_shot, mini_one_shot = Omniglot().settings()[1], MiniImageNet().settings()[0]
    assert R2D2.suite_defaults(Omniglot(), omniglot_five_shot) == {"train_ways": 60, "train_query": 5,
                                                                   "init_scale": 10.0}
    assert R2D2.suite_defaults(MiniImageNet(), mini_one_shot) == {"train_ways": 16, "train_query": 14,
                                                                  "init_scale": 1e-4}
    assert MetaOptNet.suite_defaults(MiniImageNet(), mini_one_shot) == {"train_shots": 15, "label_smoothing": 0.1}
    cifar_one_shot = CIFARFS().settings()[0]
    assert R2D2.suite_defaults(CIFARFS(), cifar_one_shot) == {"train_ways": 20, "train_query": 11, "init_scale": 10.0}
    for suite, shots in ((TieredImageNet(), 10), (CIFARFS(), 5), (FC100(), 15)):
        assert MetaOptNet.suite_defaults(suite, suite.settings()[0]) == {"train_shots": shots}
    for suite in (TieredImageNet(), FC100(), CUB()):  # not in r2d2's experiments.sh
        assert R2D2.suite_defaults(suite, suite.settings()[0]) == {}
    assert MatchingNet.suite_defaults(MiniImageNet(), mini_one_shot) == {"fce": True}
    for learner_class in (MetaOptNet, MatchingNet, ProtoMAML):  # the papers' Omniglot defaults are the Configs'
        assert learner_class.suite_defaults(Omniglot(), omniglot_five_shot) == {}
    for learner_class in (R2D2, MetaOptNet, MatchingNet, ProtoMAML):
        assert learner_class.suite_defaults(BLOBS, FIVE_SHOT) == {}


def test_metaoptnet_trains_on_the_papers_shots_and_queries_and_says_so():
    pytest.importorskip("qpth")
    learner = MetaOptNet(MetaOptNetConfig(train_shots=3))
    ctx = context(8)
    learner.meta_train(ctx)
    assert ctx.notes == ["metaoptnet meta-trains on 5-way 3-shot episodes with 6 queries per class (tests at 5-way "
                         "5-shot)"]


@pytest.mark.parametrize(("name", "config_class", "overrides", "message"), [
    ("metaoptnet", MetaOptNetConfig, {"c_reg": 0.0}, "--set metaoptnet: need c_reg > 0, max_iter and test_max_iter "
                                                     ">= 1 and 0 <= label_smoothing < 1, got 0.0, 15, 3 and 0.0"),
    ("metaoptnet", MetaOptNetConfig, {"train_shots": -1}, "--set metaoptnet: train_ways, train_shots and train_query "
                                                          "must be 0 (the setting's) or positive, got 0, -1 and 6"),
    ("matchingnet", MatchingNetConfig, {"fce_steps": -2}, "--set matchingnet: fce_steps must be 0 (the support set's "
                                                          "size) or positive, got -2"),
    ("r2d2", R2D2Config, {"train_query": -5}, "--set r2d2: train_ways and train_query must be 0 (the setting's) or "
                                              "positive, got 0 and -5"),
])
def test_bad_configs_are_one_line_errors(name, config_class, overrides, message):
    with pytest.raises(ConfigError) as raised:
        learner_config(name, config_class, overrides)
    assert str(raised.value) == message


@pytest.mark.parametrize("learner_class", [R2D2, MetaOptNet, MatchingNet, ProtoMAML])
def test_regression_suites_are_declined(learner_class):
    reason = learner_class.unsupported_reason(Sinusoid())
    assert reason.startswith(f"{learner_class.__name__.lower()} ") and reason.endswith(
        "; 'sinusoid' is a regression suite")


def test_an_inner_loop_with_a_per_task_init_refuses_second_order():
    learner = protomaml()
    batch = BLOBS.sample_batch("train", FIVE_SHOT, 0, range(2))
    with pytest.raises(ValueError, match="an InnerLoop with init takes first-order meta-gradients only"):
        learner.loop.meta_loss(learner.fast, learner.slow, batch, 1, first_order=False)


OMNIGLOT_FIVE_WAY_ONE_SHOT = Omniglot().settings()[0]


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize(("learner_class", "overrides"), [
    # 5-way training episodes (the papers' 60-way ones cost 12x more here); faster rates than the papers' where their
    # schedules are made for 10^4-10^5 episodes.
    (R2D2, {"train_ways": 5, "train_query": 5}),
    (MetaOptNet, {"train_ways": 5, "train_query": 5, "max_iter": 3}),
    (MatchingNet, {"train_ways": 5, "train_query": 5}),
    (ProtoMAML, {"outer_lr": 1e-3, "inner_steps": 1}),
])
def test_each_learns_on_real_omniglot(staged, learner_class, overrides):
    """On the six staged Omniglot alphabets (real drawings; held-out characters), 5-way 1-shot accuracy over 20 test
    episodes after 100 meta-training tasks beats the untrained network's by at least 0.08 (seen: r2d2 0.45 -> 0.80,
    metaoptnet 0.61 -> 0.83, matchingnet 0.60 -> 0.80, protomaml 0.61 -> 0.75; 60 s for the four, busy machine)."""
    suite = Omniglot(data_dir=staged)
    accuracies = []
    for tasks in (0, 100):
        learner = learner_class(learner_class.Config(**{**learner_class.suite_defaults(suite, OMNIGLOT_FIVE_WAY_ONE_SHOT),
                                                        **overrides}))
        learner.meta_train(HostContext(suite, OMNIGLOT_FIVE_WAY_ONE_SHOT, 0, tasks, torch.device("cpu"),
                                       lambda tasks, loss: None))
        accuracy, _ = evaluate(learner, suite, OMNIGLOT_FIVE_WAY_ONE_SHOT, 0, episodes=20, steps=1,
                               device=torch.device("cpu"))
        accuracies.append(float(accuracy[:, -1].mean()))
    untrained, trained = accuracies
    print(f"{learner_class.__name__}: {untrained:.3f} -> {trained:.3f}")
    assert trained >= untrained + 0.08, accuracies
