"""The image suites' selectable backbones (``--backbone``): Conv-4 variants, MAML's strided Conv-4 and ResNet-12, each
as its reference builds it, and every built-in learner on ResNet-12."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from torch import nn
from torch.nn import functional as F

from bench.nn import backbones
from bench.nn.backbones import EpisodeBatchNorm, conv4, conv4_strided, resnet12
from bench.nn.modulation import ContextModulated
from bench.protocol import evaluate
from bench.runner import HostContext

CPU = torch.device("cpu")
FIVE_WAY_ONE_SHOT = Omniglot().settings()[0]
SMALL = (4, 8, 8, 8)
"""ResNet-12 widths for the tests (the standard 64-160-320-640 is too slow for a unit test on a CPU)."""


def images(suite: Omniglot | MiniImageNet, count: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, suite.CHANNELS, suite.IMAGE_SIZE, suite.IMAGE_SIZE, generator=generator)


# --- the suites' choice -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite_class", [Omniglot, MiniImageNet])
def test_the_default_backbone_is_the_suites_standard_conv4_unchanged(suite_class):
    """No ``--backbone``: the Conv-4 the suite built before backbones were selectable, weight for weight (the same
    draws from the same seed), so earlier results and tests stand."""
    suite, setting = suite_class(), suite_class().settings()[0]
    assert suite.chosen_backbone() == "conv4" == suite.backbone_names[0]
    torch.manual_seed(0)
    chosen = suite.backbone(setting).state_dict()
    torch.manual_seed(0)
    standard = conv4(suite.CHANNELS, suite.FILTERS, setting.ways, suite.IMAGE_SIZE).state_dict()
    assert chosen.keys() == standard.keys() and all(torch.equal(chosen[key], standard[key]) for key in chosen)


@pytest.mark.parametrize("suite_class", [Omniglot, MiniImageNet])
def test_every_offered_backbone_classifies_the_suites_images_and_splits_off_its_head(suite_class, monkeypatch):
    monkeypatch.setattr(backbones, "resnet12", lambda *args, **options: resnet12(*args, channels=SMALL, **options))
    widths = {"conv4": None, "conv4-32": 32, "conv4-64": 64, "conv4-strided": suite_class.FILTERS,
              "resnet12": SMALL[-1], "resnet12-dropblock": SMALL[-1]}
    assert set(suite_class.backbone_names) == set(widths)
    for name, width in widths.items():
        suite = suite_class()
        suite.backbone_name = name
        network = suite.backbone(suite.settings()[0])
        assert isinstance(network, nn.Sequential) and isinstance(network[-1], nn.Linear), name
        assert network(images(suite)).shape == (6, 5), name
        if name.startswith("conv4-") and name != "conv4-strided":
            assert network[0].out_channels == width, name
        elif width is not None:  # the strided Conv-4 and ResNet-12 pool over pixels: the head reads one per channel
            assert network[-1].in_features == width, name


def test_an_unknown_backbone_is_refused_naming_the_offered_ones():
    suite = Omniglot()
    suite.backbone_name = "resnet18"
    with pytest.raises(ValueError, match="^suite 'omniglot' has no backbone 'resnet18'; it offers conv4, conv4-32, "
                                         "conv4-64, conv4-strided, resnet12, resnet12-dropblock$"):
        suite.backbone(FIVE_WAY_ONE_SHOT)


# --- MAML's strided Conv-4 ----------------------------------------------------------------------------------------

TF_SAME_PADS = [(0, 1), (0, 1), (1, 1), (0, 1)]
"""TensorFlow's 'SAME' padding of a 3x3 stride-2 convolution on 28, 14, 7 and 4 pixels: ceil(n / 2) outputs need
(ceil(n / 2) - 1) * 2 + 3 - n padding pixels, 1, 1, 2, 1, the odd one after."""


def test_strided_conv4_is_mamls_omniglot_network_by_hand():
    """cbfinn/maml utils.conv_block with --max_pool=False, utils.normalize (batch norm: shift, no scale, eps 1e-3;
    ReLU), maml.py forward_conv's mean over the 2x2 pixels left of 28x28, the head; written out with F's operations."""
    torch.manual_seed(0)
    network = conv4_strided(in_channels=1, filters=8, ways=5).double()
    with torch.no_grad():  # shifts away from zero, so that a misplaced one shows
        for module in network:
            if isinstance(module, EpisodeBatchNorm):
                module.bias.normal_()
    x = torch.rand(7, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hidden, sizes = x, []
    for block, (before, after) in enumerate(TF_SAME_PADS):
        conv, norm = network[4 * block], network[4 * block + 1]
        hidden = F.conv2d(F.pad(hidden, (before, after, before, after)), conv.weight, conv.bias, stride=2)
        hidden = F.batch_norm(hidden, None, None, None, norm.bias, training=True, eps=1e-3)
        hidden = torch.relu(hidden)
        sizes.append(hidden.shape[-1])
    reference = hidden.mean(dim=(2, 3)) @ network[-1].weight.T + network[-1].bias
    assert sizes == [14, 7, 4, 2]
    assert torch.allclose(network(x), reference, atol=1e-12, rtol=0)


def test_strided_conv4_is_initialised_and_sized_as_mamls():
    """maml.py construct_conv_weights: Xavier-uniform convolutions, zero biases, head N(0, 1); batch norm learns a shift
    only. On Omniglot 5-way: 4 x 64 filters (1 x 9 x 64 + 3 x 64 x 9 x 64 weights, 4 x 64 biases), 4 x 64 shifts,
    a 64 x 5 head and its 5 biases: 112,005 parameters."""
    suite = Omniglot()
    suite.backbone_name = "conv4-strided"
    torch.manual_seed(0)
    network = suite.backbone(FIVE_WAY_ONE_SHOT)
    assert sum(parameter.numel() for parameter in network.parameters()) == 112_005
    norms = [module for module in network if isinstance(module, EpisodeBatchNorm)]
    assert len(norms) == 4 and not any(isinstance(norm.weight, nn.Parameter) for norm in norms)  # a fixed scale
    convs = [module for module in network if isinstance(module, nn.Conv2d)]
    for conv in convs:
        bound = (6 / (9 * (conv.in_channels + conv.out_channels))) ** 0.5
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert not conv.bias.any()
    assert network[-1].weight.std().item() == pytest.approx(1.0, abs=0.12) and not network[-1].bias.any()  # 320 draws


# --- ResNet-12 ----------------------------------------------------------------------------------------------------


def test_a_resnet12_block_is_metaoptnets_by_hand():
    """MetaOptNet's BasicBlock (models/ResNet12_embedding.py): conv-bn-leaky ReLU twice, conv-bn, plus the 1x1
    conv-bn shortcut, leaky ReLU (0.1), 2x2 max-pool; batch norm with the batch's statistics, written with F."""
    torch.manual_seed(0)
    block = resnet12(in_channels=3, ways=5, image_size=16, channels=(6, 8, 8, 8)).double()[0]
    norms = [module for module in block.modules() if isinstance(module, EpisodeBatchNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.normal_()
            norm.bias.normal_()
    convs = [module for module in block.modules() if isinstance(module, nn.Conv2d)]
    assert [conv.kernel_size for conv in convs] == [(3, 3)] * 3 + [(1, 1)] and not any(conv.bias for conv in convs)

    def conv_norm(h: torch.Tensor, index: int) -> torch.Tensor:
        norm = norms[index]
        return F.batch_norm(F.conv2d(h, convs[index].weight, padding=convs[index].padding), None, None, norm.weight,
                            norm.bias, training=True)

    x = torch.randn(5, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hidden = F.leaky_relu(conv_norm(x, 0), 0.1)
    hidden = F.leaky_relu(conv_norm(hidden, 1), 0.1)
    reference = F.max_pool2d(F.leaky_relu(conv_norm(hidden, 2) + conv_norm(x, 3), 0.1), 2)
    assert torch.allclose(block(x), reference, atol=1e-12, rtol=0)


def test_resnet12_has_the_references_widths_sizes_and_initialisation():
    """64-160-320-640 (MetaOptNet, FEAT); 84 pixels end at 5x5 before the mean over pixels (FEAT's AvgPool2d(5)), 28 at
    1x1. Parameters on mini-ImageNet 5-way: per block 9 x in x out + 2 x 9 x out^2 (3x3 convolutions, no bias),
    in x out (shortcut), 4 x 2 x out (batch norms): 76,160 + 564,480 + 2,357,760 + 9,425,920, and a 640 x 5 head
    with its biases: 12,427,525 (the 12.4M usually quoted for ResNet-12, without a head)."""
    suite = MiniImageNet()
    suite.backbone_name = "resnet12"
    torch.manual_seed(0)
    network = suite.backbone(suite.settings()[0])
    assert [block.out_channels for block in network[:4]] == [64, 160, 320, 640]
    assert sum(parameter.numel() for parameter in network.parameters()) == 12_427_525
    widest = network[3].body[6].weight  # 640 x 640 x 3 x 3: Kaiming-normal, fan_out, gain sqrt(2)
    assert widest.std().item() == pytest.approx((2 / (640 * 9)) ** 0.5, rel=0.01)
    with torch.no_grad():
        assert network[:4](images(suite, 2)).shape == (2, 640, 5, 5)
        small = resnet12(in_channels=1, ways=5, image_size=28, channels=SMALL)
        assert small[:4](images(Omniglot(), 2)).shape == (2, 8, 1, 1)


def test_resnet12_refuses_images_too_small_and_wrong_widths():
    with pytest.raises(ValueError, match="needs at least 16x16 pixels, got 12"):
        resnet12(in_channels=1, ways=5, image_size=12)
    with pytest.raises(ValueError, match=r"channels must give four widths, got \(64, 160, 320\)"):
        resnet12(in_channels=1, ways=5, image_size=28, channels=(64, 160, 320))


# --- the adaptation layer's FiLM on each network ------------------------------------------------------------------


def test_film_placement_on_each_network():
    """adaptation-layer's image default (module 9, CAVIA's "after the third block's batch norm") is the third block's
    norm on both Conv-4s; ResNet-12 has 6 modules, so the default is refused, and ``layer=2`` modulates the third
    residual block's output (after its activation and max-pool)."""
    generator = torch.Generator().manual_seed(0)
    for network in (conv4(1, 8, 5, 28), conv4_strided(1, 8, 5)):
        film = ContextModulated(network, 4, 9, True, generator)
        assert isinstance(network[9], EpisodeBatchNorm) and film.head[9] is network[9]
        assert isinstance(film.tail[0], nn.ReLU)  # FiLM acts before the block's ReLU (on Conv-4 after its max-pool)
    network = resnet12(1, 5, 28, channels=SMALL)
    with pytest.raises(ValueError, match="layer 9 is out of range for a backbone of 6 modules"):
        ContextModulated(network, 4, 9, True, generator)
    film = ContextModulated(network, 4, 2, True, generator)
    assert list(film.head) == list(network[:3]) and film.context_map.out_features == 2 * SMALL[2]


def test_adaptation_layer_default_film_layer_follows_the_chosen_backbone(registry, staged):
    """Its image default, module 9, on the Conv-4s; module 2 (the third residual block) on ResNet-12, chosen through
    the host's plan with ``--backbone``."""
    from bench.config import RunConfig
    from bench.grid import plan

    def layer(backbone: str | None) -> int:
        config = RunConfig(learners=["adaptation-layer"], suites=["omniglot"], data_dir=str(staged), profile="smoke",
                           backbone=backbone, shots=[1], ways=[5])
        (cell,) = plan(config, registry)
        return cell.hyperparameters.layer

    assert (layer(None), layer("conv4-strided"), layer("resnet12")) == (9, 9, 2)


# --- every built-in learner on ResNet-12 --------------------------------------------------------------------------


@pytest.fixture
def small_resnet12(monkeypatch) -> list[tuple]:
    """The suites' ``resnet12`` at ``SMALL`` widths; returns the arguments of every network built."""
    built: list[tuple] = []
    standard = backbones.resnet12

    def small(*args, **options):
        built.append(args)
        return standard(*args, channels=SMALL, **options)

    monkeypatch.setattr(backbones, "resnet12", small)
    return built


GRADIENT = {"meta_batch": 4, "inner_steps": 1}


@pytest.mark.usefixtures("private_cache", "one_thread")
@pytest.mark.parametrize(("learner_name", "overrides"), [
    ("maml", GRADIENT), ("fomaml", GRADIENT), ("anil", GRADIENT), ("metasgd", GRADIENT),
    ("adaptation-layer", GRADIENT),  # its suite default on ResNet-12: layer 2 (test_adaptation_layer_default...)
    ("reptile", {"meta_batch": 4, "inner_steps": 2}),
    ("reptile", {"meta_batch": 4, "inner_steps": 2, "adam_per_task": True}),  # its vmapped meta-batch
    ("protonet", {"meta_batch": 4, "train_ways": 0, "train_query": 0}),
    ("finetune", {"batch_tasks": 4, "epochs": 2}),
    ("finetune", {"batch_tasks": 4, "epochs": 2, "batch_norm": "running"}),
])
def test_every_learner_meta_trains_and_adapts_on_resnet12(registry, staged, small_resnet12, learner_name, overrides):
    """Each learner meta-trains on 8 Omniglot tasks with the suite's ResNet-12 (its vectorised inner loop where it has
    one) and adapts to test episodes, batched where it can be (one ``vmap`` over episodes): finite accuracies."""
    suite = Omniglot(data_dir=staged)
    suite.backbone_name = "resnet12"
    learner_class = registry.learners[learner_name].cls
    learner = learner_class(learner_class.Config(**{**learner_class.suite_defaults(suite, FIVE_WAY_ONE_SHOT),
                                                     **overrides}))
    context = HostContext(suite, FIVE_WAY_ONE_SHOT, 0, 8, CPU, lambda tasks, loss: None)
    learner.meta_train(context)
    assert context.tasks_seen == 8 and small_resnet12 == [(1, 5, 28)]
    accuracy, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, episodes=4, steps=1, device=CPU,
                           batched=learner_class.batched)
    assert np.isfinite(accuracy).all() and ((0 <= accuracy) & (accuracy <= 1)).all()


@pytest.mark.usefixtures("private_cache", "one_thread")
def test_protonet_learns_on_resnet12(registry, staged, small_resnet12):
    """Through the residual blocks the embedding learns: 160 tasks (meta-batch 8, 5 queries per class, Adam 1e-2) lift
    5-way 1-shot accuracy on held-out characters by at least 0.15 over the untrained network (seen: 0.35 untrained,
    0.60 trained, 20 episodes of 75 queries)."""
    suite = Omniglot(data_dir=staged)
    suite.backbone_name = "resnet12"
    learner_class = registry.learners["protonet"].cls
    accuracies = []
    for tasks in (0, 160):
        learner = learner_class(learner_class.Config(lr=1e-2, meta_batch=8, train_query=5))
        learner.meta_train(HostContext(suite, FIVE_WAY_ONE_SHOT, 0, tasks, CPU, lambda tasks, loss: None))
        accuracy, _ = evaluate(learner, suite, FIVE_WAY_ONE_SHOT, 0, episodes=20, steps=0, device=CPU)
        accuracies.append(accuracy.mean())
    untrained, trained = accuracies
    assert trained >= untrained + 0.15, accuracies


# --- ResNet-12 with MetaOptNet's dropout and DropBlock ------------------------------------------------------------


def dropblock_by_hand(x: torch.Tensor, seeds: torch.Tensor, block: int) -> torch.Tensor:
    """MetaOptNet's DropBlock._compute_block_mask written as loops: each seed at (i, j) zeroes the ``block`` square
    starting there; the rest is scaled by elements / elements kept."""
    kept = torch.ones_like(x)
    for index in seeds.nonzero().tolist():
        *lead, i, j = index
        kept[(*lead, slice(i, i + block), slice(j, j + block))] = 0
    return x * kept * (kept.numel() / kept.sum())


def test_dropblock_drops_whole_squares_as_metaoptnets_mask_once_switched_on():
    drop = backbones.DropBlock(block_size=3)
    x = torch.randn(2, 4, 10, 10)
    assert drop(x) is x  # off until a learner switches it on
    assert backbones.regularise(drop, True) == 1
    drop.passes.fill_(backbones.DROPBLOCK_RAMP_FORWARDS)  # past the ramp: the full rate
    torch.manual_seed(1)
    out = drop(x)
    torch.manual_seed(1)  # the same draw, by hand: gamma = rate / 3^2 * 10^2 / 8^2
    seeds = torch.bernoulli(torch.full((2, 4, 8, 8), backbones.DROP_RATE / 9 * 100 / 64))
    assert seeds.sum() > 0
    torch.testing.assert_close(out, dropblock_by_hand(x, seeds, 3))


def test_dropblock_rate_ramps_over_metaoptnets_passes_and_is_saved():
    drop = backbones.DropBlock(block_size=2)
    backbones.regularise(drop, True)
    drop(torch.ones(1, 1, 4, 4))
    assert drop.rate() == backbones.DROP_RATE / backbones.DROPBLOCK_RAMP_FORWARDS  # the pass just made
    drop.passes.fill_(3 * backbones.DROPBLOCK_RAMP_FORWARDS)
    assert drop.rate() == backbones.DROP_RATE  # capped
    assert "3.drop.passes" in backbones.resnet12(1, 5, 28, channels=SMALL, dropblock=True).state_dict()


def test_dropout_zeroes_at_its_rate_and_scales_the_rest():
    drop = backbones.Dropout()
    backbones.regularise(drop, True)
    out = drop(torch.ones(200_000))
    assert abs((out == 0).float().mean() - backbones.DROP_RATE) < 0.005
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - backbones.DROP_RATE)))


def test_resnet12_dropblock_is_resnet12_while_off_and_refuses_vmap_while_on_naming_itself():
    torch.manual_seed(0)
    plain = resnet12(3, 5, 84, channels=SMALL)
    torch.manual_seed(0)
    dropping = resnet12(3, 5, 84, channels=SMALL, dropblock=True)
    x = torch.randn(4, 3, 84, 84)
    torch.testing.assert_close(dropping(x), plain(x))  # same weights, nothing dropped
    assert [type(block.drop).__name__ for block in dropping[:4]] == ["Dropout", "Dropout", "DropBlock", "DropBlock"]
    assert dropping[2].drop.block_size == 5 and resnet12(3, 5, 32, dropblock=True)[2].drop.block_size == 2
    assert backbones.regularise(dropping, True) == 4
    assert not torch.equal(dropping(x), plain(x))
    params = dict(dropping.named_parameters())
    with pytest.raises(RuntimeError, match="resnet12-dropblock draws random masks .* use --backbone resnet12"):
        torch.func.vmap(lambda p, x: torch.func.functional_call(dropping, p, (x,)), in_dims=(None, 0))(
            params, x.unsqueeze(0).expand(2, *x.shape))


@pytest.mark.usefixtures("private_cache", "one_thread")
def test_a_learner_that_does_not_switch_them_on_trains_without_them_and_the_cell_says_so(staged, small_resnet12):
    """maml never switches the regularisers on: it meta-trains as on resnet12, and its cell's notes say so."""
    from bench_plugins.learners.maml import MAML

    suite = Omniglot(data_dir=staged)
    suite.backbone_name = "resnet12-dropblock"
    assert "resnet12-dropblock" in suite.backbone_names
    learner = MAML(MAML.Config(**{**MAML.suite_defaults(suite, FIVE_WAY_ONE_SHOT), **GRADIENT}))
    context = HostContext(suite, FIVE_WAY_ONE_SHOT, 0, 4, CPU, lambda tasks, loss: None)
    learner.meta_train(context)
    context.switch_off_regularisers()
    assert context.notes == ["the network's dropout and DropBlock stayed off: this learner does not switch them on "
                             "(bench.nn.backbones.regularise), so it meta-trained without them"]


@pytest.mark.usefixtures("private_cache", "one_thread")
def test_the_head_learners_meta_train_with_dropblock_reproducibly(registry, staged, small_resnet12):
    """protonet switches the regularisers on for each update (a mask per episode under its vmap, drawn from the cell's
    seed: two runs end with equal weights, and differ from a run without them), and they are off for the test."""
    suite = Omniglot(data_dir=staged)
    learner_class = registry.learners["protonet"].cls

    def trained(backbone: str):
        suite.backbone_name = backbone
        learner = learner_class(learner_class.Config(meta_batch=4, train_ways=0, train_query=0))
        context = HostContext(suite, FIVE_WAY_ONE_SHOT, 0, 8, CPU, lambda tasks, loss: None)
        learner.meta_train(context)
        context.switch_off_regularisers()
        return learner, context

    first, context = trained("resnet12-dropblock")
    again, _ = trained("resnet12-dropblock")
    plain, _ = trained("resnet12")
    # two updates, each embedding the support and the query sets (two passes, as MetaOptNet counts them), through
    # the four regularisers
    assert backbones.regularised_passes(first.embedding) == 2 * 2 * 4
    assert context.notes == [] and not any(module.on for module in first.embedding.modules()
                                           if isinstance(module, backbones.Switched))
    weights = [dict(learner.embedding.named_parameters()) for learner in (first, again, plain)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not all(torch.equal(weights[0][name], weights[2][name]) for name in weights[0])
    accuracy, _ = evaluate(first, suite, FIVE_WAY_ONE_SHOT, 0, episodes=4, steps=0, device=CPU)
    assert np.isfinite(accuracy).all()
