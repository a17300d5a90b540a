"""MAML (Finn et al. 2017), second order, and its first-order approximation."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from bench_plugins.learners._gradient import OUTER_LR_RANGE, GradientConfig, GradientMetaLearner, inner_loop_options

from bench.api import FloatRange, IntRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite


@dataclasses.dataclass
class MAMLConfig(GradientConfig):
    """Where each default comes from: Finn et al. 2017 ("Model-agnostic meta-learning", ICML) and its reference
    code, github.com/cbfinn/maml main.py (read; the paper's text is cited from memory, not re-checked here).

    Regression: main.py's defaults, which its sinusoid usage line keeps: meta_batch 25 (--meta_batch_size),
    outer_lr 1e-3 with Adam (--meta_lr; maml.py's AdamOptimizer), inner_steps 1 (--num_updates); and
    inner_lr 0.01 (the paper's sinusoid step size, section 5.1; the usage line leaves --update_lr at its 1e-3
    default, so the code and the paper differ: we follow the paper).

    Classification (``PAPER_DEFAULTS``): inner_lr, inner_steps and meta_batch from main.py's usage lines,
    Omniglot 5-way (0.4, 1, 32), Omniglot 20-way (0.1, 5, 16), mini-ImageNet (0.01, 5, 4), except a meta-batch of
    2 for mini-ImageNet 5-shot (the paper's appendix A.1; the usage line shows 4); outer_lr 1e-3 (--meta_lr).
    A classification suite the paper did not run gets the Omniglot 5-way values: its nearest setting (N-way
    few-shot images, a small network); not tuned.

    inner_loss ``class_sum``: the reference's classification loss (utils.xent divides each example's softmax
    cross-entropy by --update_batch_size K, and tf.gradients sums over the N x K support examples), for which its
    step sizes were chosen: alpha = 0.4 on 5-way Omniglot is a step of 2.0 on the mean cross-entropy. Regression is
    unchanged (utils.mse is a mean). clip_grad on mini-ImageNet: maml.py clamps the meta-gradient to +-10
    (``tf.clip_by_value``, datasource miniimagenet only) of its outer loss, the sum over tasks and query examples of
    cross-entropy / K over the meta-batch: N x 15 / K times our mean query loss (15 queries per class,
    main.py's update_batch_size+15), so the same clamp on ours is 10 K / (15 N) (``reference_clip``).

    A ``variable`` setting (``--shots vary``, Meta-Dataset's episodes; the paper has none): Meta-Dataset's own MAML
    baseline, ``META_DATASET_MAML``.
    """

    inner_loss: Literal["mean", "class_sum"] = "class_sum"
    zero_head: bool = False
    """Start the head (the backbone's last layer, a Linear) at zero: every class's logit equal before adaptation
    (Meta-Dataset's ``MAMLLearner.zero_fc_layer``, its MAML's default: on by default on a variable setting only)."""


def reference_clip(ways: int, shots: int) -> float:
    """cbfinn/maml's mini-ImageNet clamp of the meta-gradient, 10, in units of our mean query loss (its loss is
    ways x 15 / shots times ours: 15 queries per class, cross-entropy / shots per example)."""
    return 10.0 * shots / (15 * ways)


META_DATASET_MAML = {
    # Triantafillou et al. 2020's MAML on its variable-way, variable-shot episodes, from google-research/meta-dataset
    # (read): learn/gin/learners/maml_config.gin (MAMLLearner.alpha 0.01, num_update_steps 5; first_order True there:
    # fomaml is that baseline, maml its second-order form) and learner_config.gin (Trainer.learning_rate 1e-4,
    # decay_every 5,000, decay_rate 0.5, decay_learning_rate True in maml_config.gin); one episode an update; the mean
    # support cross-entropy (tf.losses.softmax_cross_entropy); the head initialised at zero (zero_fc_layer True).
    "inner_lr": 0.01, "inner_steps": 5, "meta_batch": 1, "inner_loss": "mean", "outer_lr": 1e-4,
    "outer_lr_decay": 0.5, "outer_lr_decay_every": 5000, "zero_head": True,
}

PAPER_DEFAULTS = {
    # cbfinn/maml main.py's usage lines and the paper's appendix A.1: (suite, ways[, shots]) -> inner lr, inner
    # steps, meta-batch; maml.py's mini-ImageNet clamp of the meta-gradient.
    ("omniglot", 5): {"inner_lr": 0.4, "inner_steps": 1, "meta_batch": 32},
    ("omniglot", 20): {"inner_lr": 0.1, "inner_steps": 5, "meta_batch": 16},
    ("miniimagenet", 5, 1): {"inner_lr": 0.01, "inner_steps": 5, "meta_batch": 4,
                             "clip_grad": reference_clip(5, 1)},
    ("miniimagenet", 5, 5): {"inner_lr": 0.01, "inner_steps": 5, "meta_batch": 2,
                             "clip_grad": reference_clip(5, 5)},
}


def zero_head(model: "torch.nn.Module") -> None:
    """Set the weights and bias of ``model``'s head, its last module, to zero (``MAMLConfig.zero_head``); a
    ValueError where that is not a Linear layer."""
    import torch

    head = model[-1] if isinstance(model, torch.nn.Sequential) else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"zero_head needs a backbone whose last module is a Linear head, got {type(head).__name__}")
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


class MAML(GradientMetaLearner):
    """MAML, second order: meta-learns an initialisation; every weight adapts by SGD on the support set.

    The inner loop is a pure function of the weights (``torch.func.grad``), the meta-batch is one
    ``vmap``, and the meta-gradient differentiates through the inner SGD steps.
    """

    Config = MAMLConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """The paper's settings for Omniglot and mini-ImageNet, its Omniglot 5-way ones for other classification
        suites, the sinusoid ones for regression; Meta-Dataset's MAML on a variable setting."""
        if setting.variable is not None:
            return dict(META_DATASET_MAML)
        fallback = PAPER_DEFAULTS[("omniglot", 5)] if suite.kind is TaskKind.CLASSIFICATION else {}
        return dict(PAPER_DEFAULTS.get((suite.name, setting.ways, setting.shots))
                    or PAPER_DEFAULTS.get((suite.name, setting.ways), fallback))

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """inner_lr: 0.5-2x the paper's values, the range learn2learn found good ones in when reproducing MAML
        (learn2learn docs/examples/vision.md: "good values usually lie in a 0.5-2x range of the original value"):
        regression around 0.01; classification from 0.5 x 0.01 (mini-ImageNet) to 2 x 0.4 (Omniglot 5-way).
        outer_lr: ``OUTER_LR_RANGE``. inner_steps: 1 to 5, the paper's values."""
        inner_lr = FloatRange(0.005, 0.02, log=True) if kind is TaskKind.REGRESSION else FloatRange(0.005, 0.8, log=True)
        return {"inner_lr": inner_lr, "outer_lr": OUTER_LR_RANGE, "inner_steps": IntRange(1, 5)}

    @classmethod
    def reference(cls) -> type | None:
        """learn2learn's MAML (``l2l-maml``), for ``bench perf``'s side-by-side check."""
        from bench_plugins.learners.l2l import LearnToLearnMAML

        return LearnToLearnMAML

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop

        model = ctx.backbone()
        if self.config.zero_head:
            zero_head(model)
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
            **inner_loop_options(self.config, ctx),
        )
        self.fast = dict(model.named_parameters())
        self.slow = {}


class FirstOrderMAML(MAML):
    """First-order MAML: as maml, but the meta-gradient ignores second derivatives (the query gradient at the adapted weights).

    Defaults and search space: maml's (``MAMLConfig`` says where each comes from).
    """

    first_order = True

    @classmethod
    def reference(cls) -> type | None:
        from bench_plugins.learners.l2l import LearnToLearnFirstOrderMAML

        return LearnToLearnFirstOrderMAML
