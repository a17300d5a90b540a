"""R2-D2 (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers", ICLR): a ridge-regression
head solved in closed form on a meta-learned embedding."""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from bench_plugins.learners._metric import Classifier, EpisodeSchedule, HeadLearner

from bench.api import FloatRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass
class R2D2Config(EpisodeSchedule):
    """Where each default comes from (classification only: r2d2 declines regression suites): Bertinetto et al. 2019
    and its reference code, github.com/bertinetto/r2d2 (read): scripts/train/conf/fewshots.yaml and
    scripts/train/experiments.sh, fewshots/models/r2d2.py and adjust.py.

    ``lr`` 5e-3 with Adam (train.learning_rate, train.optim_method), halved (train.lr_decay 0.5, a StepLR stepped as
    each epoch starts) every train.decay_every 20 epochs of data.train_episodes 100 (``lr_halve_every`` 2,000
    episodes), one episode a step (``meta_batch`` 1). ``init_lambda`` 50 (base_learner.init_lambda), meta-learned as
    the paper describes it (cited from memory of the paper, not re-checked here; ``learn_lambda``): the released
    configuration leaves it fixed (base_learner.learn_lambda False), ``learn_lambda=false`` here.
    ``init_scale`` and ``init_bias``: the paper's alpha and beta, the AdjustLayer's scale (experiments.sh
    --base_learner.init_adj_scale: 10 on Omniglot and CIFAR-FS, 1e-4 on mini-ImageNet, which is also the yaml default
    and used on suites the reference did not run) and bias (0), both meta-learned. Per suite (``suite_defaults``), the
    scale and the training episodes: experiments.sh trains with more ways than it tests, 60 on Omniglot (--data.way
    60, 600 images an episode: 10 per class), 16 on mini-ImageNet (240 images: 15 per class) and 20 on CIFAR-FS (240
    images: 12 per class); the rest of each class's images after the shots are queries. Other suites (tieredImageNet,
    FC100, CUB: not in experiments.sh): the setting's ways and the suite's meta-training queries. The reference's
    dropout (--model.drop: 0.1 mini-ImageNet, 0.4 CIFAR-FS) is not applied. Not tuned.
    """

    lr: float = 5e-3
    lr_halve_every: int = 2000
    """Halve the learning rate every this many meta-training episodes; 0 keeps it constant."""
    meta_batch: int = 1
    init_lambda: float = 50.0
    """The ridge penalty's initial value (``learn_lambda``) or fixed value."""
    learn_lambda: bool = True
    init_scale: float = 1e-4
    """The logits' meta-learned scale (alpha), initially."""
    init_bias: float = 0.0
    """The logits' meta-learned bias (beta), initially."""
    train_ways: int = 0
    """Classes per meta-training episode; 0: the setting's."""
    train_query: int = 0
    """Query examples per class of a meta-training episode; 0: the suite's for the setting."""


REFERENCE_IMAGES_PER_CLASS = {"omniglot": (60, 10), "miniimagenet": (16, 15), "cifarfs": (20, 12)}
"""scripts/train/experiments.sh, per suite: training ways and images per class of an episode (--data.batch_size /
--data.way; the batch size 240 of conf/fewshots.yaml where the line sets none: CIFAR-FS's ``cifar100`` line,
--data.way 20)."""

PAPER_SCALE = {"omniglot": 10.0, "miniimagenet": 1e-4, "cifarfs": 10.0}
"""experiments.sh --base_learner.init_adj_scale, per suite (CIFAR-FS: 1e1)."""


def ridge_weights(support: "torch.Tensor", targets: "torch.Tensor", penalty: "torch.Tensor") -> "torch.Tensor":
    """The ridge-regression solution ``W`` ``[..., D, C]`` of ``targets`` ``[..., N, C]`` on ``support`` ``[..., N, D]``,
    minimising ``|X W - Y|^2 + penalty |W|^2``: in the Woodbury form ``X^T (X X^T + penalty I)^-1 Y`` (an N x N system)
    when N <= D, else ``(X^T X + penalty I)^-1 X^T Y`` (D x D), as the reference picks."""
    import torch

    examples, width = support.shape[-2:]
    transposed = support.transpose(-1, -2)
    if examples <= width:
        gram = support @ transposed + penalty * torch.eye(examples, dtype=support.dtype, device=support.device)
        return transposed @ torch.linalg.solve(gram, targets)
    gram = transposed @ support + penalty * torch.eye(width, dtype=support.dtype, device=support.device)
    return torch.linalg.solve(gram, transposed @ targets)


def with_bias_feature(features: "torch.Tensor") -> "torch.Tensor":
    """``features`` ``[..., N, D]`` with a column of ones appended (the ridge head's bias)."""
    import torch

    return torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)


class R2D2(HeadLearner):
    """R2-D2: each episode fits ridge regression from the embedding to one-hot labels in closed form; logits alpha XW + beta.

    Per episode (Bertinetto et al. 2019; fewshots/models/r2d2.py): the N support embeddings with a bias
    feature of ones, X, and their one-hot labels, Y, both divided by sqrt(N) as the reference does (the same
    solution as the penalty N x lambda on the unscaled ones); W = X^T (X X^T + lambda I)^-1 Y (the Woodbury form,
    N x N, when N <= D + 1, else the D x D form); query logits alpha [Z, 1] W + beta. lambda, alpha and beta are
    meta-learned with the embedding, end to end through the solve, on the query cross-entropy. Nothing adapts at
    test time: the curve is the single point at step 0.

    The embedding is the suite's backbone without its final linear head, not the paper's own 4-layer CNN (96, 192,
    384, 512 filters, leaky ReLU, dropout, features of its last two blocks concatenated): the suites' Conv-4 gives
    64 features on Omniglot, 800 on mini-ImageNet. The reference draws a random number of shots (1 to 9) for each
    training episode; here they are the setting's. The reference's optional augmentation (Omniglot rotations are
    the suite's classes already) is not used.
    """

    def adapted_parameter_count(self) -> int:
        """The ridge solution W fitted to each episode: (width + 1, for the bias feature) x ways."""
        return self.ways * (self.width + 1)

    Config = R2D2Config
    label = "r2d2"
    method = "fits a ridge-regression classifier to one-hot labels"

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """experiments.sh's training ways, queries (the images per class after the setting's shots) and scale; on a
        variable setting the scale only (its episodes draw their own ways, shots and queries)."""
        if suite.name not in REFERENCE_IMAGES_PER_CLASS:
            return {}
        ways, images = REFERENCE_IMAGES_PER_CLASS[suite.name]
        if setting.variable is not None:
            return {"init_scale": PAPER_SCALE[suite.name]}
        return {"train_ways": ways, "train_query": images - setting.shots, "init_scale": PAPER_SCALE[suite.name]}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: ``lr``, a decade either side of the reference's 5e-3; ``init_lambda``, a decade either side
        of its 50; ``init_scale``, the span of the reference's own values (1e-4 on mini-ImageNet to 10 on Omniglot and
        CIFAR-FS). The paper reports no ranges. Regression: nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"lr": FloatRange(5e-4, 5e-2, log=True), "init_lambda": FloatRange(5.0, 500.0, log=True),
                "init_scale": FloatRange(1e-4, 10.0, log=True)}

    def build_head(self, ctx: MetaTrainContext, width: int) -> "nn.Module":
        """The meta-learned scalars: the ridge penalty lambda (fixed unless ``learn_lambda``), the logits' scale alpha
        and bias beta."""
        import torch
        from torch import nn

        head = nn.Module()
        head.penalty = nn.Parameter(torch.tensor(self.config.init_lambda), requires_grad=self.config.learn_lambda)
        head.scale = nn.Parameter(torch.tensor(self.config.init_scale))
        head.bias = nn.Parameter(torch.tensor(self.config.init_bias))
        return head

    def classifier(self, support: "torch.Tensor", labels: "torch.Tensor", ways: int, training: bool) -> Classifier:
        """alpha [Z, 1] W + beta, W the ridge solution of the support set (scaled by 1 / sqrt(N), as the reference)."""
        from torch.nn import functional as F

        root = math.sqrt(support.shape[-2])
        targets = F.one_hot(labels, ways).to(support.dtype) / root
        weights = ridge_weights(with_bias_feature(support) / root, targets, self.head.penalty)
        return lambda query: self.head.scale * (with_bias_feature(query) @ weights) + self.head.bias
