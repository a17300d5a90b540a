"""MetaOptNet (Lee et al. 2019, "Meta-learning with differentiable convex optimization", CVPR): a multi-class linear
SVM head solved per episode as a quadratic program, differentiated through its optimality conditions."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from bench_plugins.learners._metric import Classifier, EpisodeSchedule, HeadLearner

from bench.api import FloatRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch
    from torch import nn


LR_FACTORS = ((20, 1.0), (40, 0.06), (50, 0.012))
"""train.py's ``lambda_epoch``: the factor on the learning rate in epochs below each bound (1-based), 0.0024 after."""
LAST_FACTOR = 0.0024


@dataclasses.dataclass
class MetaOptNetConfig(EpisodeSchedule):
    """Where each default comes from (classification only: metaoptnet declines regression suites): Lee et al. 2019
    and its reference code, github.com/kjunelee/MetaOptNet (read): train.py, test.py, README.md and
    models/classification_heads.py.

    Optimiser (train.py): SGD with Nesterov momentum 0.9 and weight decay 5e-4 on the embedding and the head's scale
    at ``lr`` 0.1, times ``lambda_epoch`` of the epoch (1 before epoch 20, 0.06 before 40, 0.012 before 50, 0.0024
    after; 60 epochs), an epoch 1,000 steps of --episodes-per-batch 8 episodes (``meta_batch`` 8,
    ``lr_epoch_episodes`` 8,000). Head (classification_heads.py ``MetaOptNetHead_SVM_CS``): ``c_reg`` 0.1
    (``C_reg``), ``max_iter`` 15 solver iterations in meta-training (``maxIter``) and ``test_max_iter`` 3 when
    adapting (test.py passes ``maxIter=3`` for the SVM head; train.py's meta-validation keeps 15), and a learned
    logit scale initialised at 1 (``ClassificationHead.scale``). Training episodes: --train-query 6 queries per class
    (``train_query``) and the setting's shots, except on mini-ImageNet (``suite_defaults``), where the README's
    command trains with --train-shot 15 and label smoothing --eps 0.1 (``label_smoothing``; train.py's smoothed
    targets: 1 - eps on the label, eps / (ways - 1) on each other class), and on tieredImageNet, CIFAR-FS and FC100
    (``PAPER_EPISODES``: 10, 5 and 15 training shots). The setting's ways (--train-way 5 = the test's 5). Not tuned.
    """

    lr: float = 0.1
    lr_epoch_episodes: int = 8000
    """Episodes per reference epoch, the unit of the learning-rate schedule; 0 keeps the rate constant."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    meta_batch: int = 8
    c_reg: float = 0.1
    """The SVM's cost C: the bound on each support example's dual variable of its own class."""
    max_iter: int = 15
    """Interior-point iterations of the QP solver in meta-training."""
    test_max_iter: int = 3
    """Interior-point iterations when adapting (meta-validation and test)."""
    label_smoothing: float = 0.0
    train_ways: int = 0
    """Classes per meta-training episode; 0: the setting's."""
    train_shots: int = 0
    """Support examples per class of a meta-training episode; 0: the setting's."""
    train_query: int = 6
    """Query examples per class of a meta-training episode; 0: the suite's for the setting."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.c_reg <= 0 or self.max_iter < 1 or self.test_max_iter < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"need c_reg > 0, max_iter and test_max_iter >= 1 and 0 <= label_smoothing < 1, got "
                             f"{self.c_reg}, {self.max_iter}, {self.test_max_iter} and {self.label_smoothing}")

    def learning_rate(self, episodes: int) -> float:
        """``lr`` times train.py's ``lambda_epoch`` of the epoch that ``episodes`` episodes reach."""
        if not self.lr_epoch_episodes:
            return self.lr
        epoch = episodes // self.lr_epoch_episodes + 1
        return self.lr * next((factor for bound, factor in LR_FACTORS if epoch < bound), LAST_FACTOR)


PAPER_EPISODES = {"miniimagenet": {"train_shots": 15, "label_smoothing": 0.1}, "tieredimagenet": {"train_shots": 10},
                  "cifarfs": {"train_shots": 5}, "fc100": {"train_shots": 15}}
"""README.md's meta-training commands, per data set: mini-ImageNet --train-shot 15 --eps 0.1; tieredImageNet
--train-shot 10; CIFAR-FS --train-shot 5 and FC100 --train-shot 15 (shown there with --head Ridge; the README's
item 2 swaps heads with that flag alone, so the SVM keeps them). CUB: the README has no command (the setting's
shots)."""


def svm_dual(kernel: "torch.Tensor", labels: "torch.Tensor", ways: int,
             c_reg: float) -> tuple["torch.Tensor", ...]:
    """The Crammer-Singer SVM's dual as qpth's QP ``min 1/2 z^T Q z + p^T z  s.t.  G z <= h, A z = b`` for a batch of
    episodes: ``kernel`` ``[T, N, N]`` (support inner products), ``labels`` ``[T, N]``. The variable z is the N x ways
    matrix alpha flattened row by row (example i, class m at ``i * ways + m``); Q = K (x) I + I, the reference's
    kernel with the identity it adds to keep the solver's matrix positive definite; p = -y (one-hot); alpha_i^m <=
    C y_i^m; sum_m alpha_i^m = 0 for each example i."""
    import torch
    from torch.nn import functional as F

    episodes, examples = labels.shape
    size = examples * ways
    eye = torch.eye(ways, dtype=kernel.dtype, device=kernel.device)
    identity = torch.eye(size, dtype=kernel.dtype, device=kernel.device)
    quadratic = (kernel[:, :, None, :, None] * eye[None, None, :, None, :]).reshape(episodes, size, size) + identity
    one_hot = F.one_hot(labels, ways).to(kernel.dtype).reshape(episodes, size)
    sums = torch.kron(torch.eye(examples, dtype=kernel.dtype, device=kernel.device),
                      torch.ones(1, ways, dtype=kernel.dtype, device=kernel.device))
    return (quadratic, -one_hot, identity.expand(episodes, size, size).contiguous(), c_reg * one_hot,
            sums.expand(episodes, examples, size).contiguous(), kernel.new_zeros(episodes, examples))


class MetaOptNet(HeadLearner):
    """MetaOptNet-SVM: each episode fits a Crammer-Singer multi-class linear SVM on the embedding, solved as a QP.

    Per episode (Lee et al. 2019; ``MetaOptNetHead_SVM_CS``): the dual of the SVM over the support
    embeddings (``svm_dual``), solved by qpth's batched interior-point method (``QPFunction``), whose backward pass
    differentiates the solution through the KKT conditions with respect to the kernel (the labels and constraints
    are constants, detached as in the reference); query logits scale x sum_i alpha_i^m <x_i, q>, the scale
    meta-learned. The embedding and the scale are meta-trained end to end through the solver on the query
    cross-entropy. Nothing adapts at test time: the curve is the single point at step 0.

    The embedding is the suite's backbone without its final linear head; the paper's best results use a ResNet-12
    (its Conv-4 rows use a 64-filter 4-block network, the suites' standard). qpth runs with ``verbose=-1`` (its
    warnings about an inexact solution are not printed; the reference's ``verbose=False`` prints them) and in the
    embedding's precision (float32, as the reference's default). The QP has N x ways variables per episode: 2,000 on
    20-way 5-shot Omniglot, a 2,000 x 2,000 matrix to factorise at every iteration.
    """

    fits_linear_head = True

    Config = MetaOptNetConfig
    label = "metaoptnet"
    variable_episodes = False  # its dual QP has support x ways variables: up to 500 x 50 on a variable setting
    method = "fits a multi-class SVM classifier"
    requires = ("qpth",)
    install_hint = "pip install qpth"

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        return dict(PAPER_EPISODES.get(suite.name, {}))

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: ``lr``, from a decade below the paper's 0.1 to 3x it (SGD with momentum 0.9: a decade above
        is unlikely to be stable; no range is reported); ``c_reg``, a decade either side of its 0.1. Regression:
        nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"lr": FloatRange(0.01, 0.3, log=True), "c_reg": FloatRange(0.01, 1.0, log=True)}

    def build_head(self, ctx: MetaTrainContext, width: int) -> "nn.Module":
        """The logit scale, initially 1 (``ClassificationHead``'s ``enable_scale``)."""
        import torch
        from torch import nn

        head = nn.Module()
        head.scale = nn.Parameter(torch.tensor(1.0))
        return head

    def optimizer(self, parameters: list["torch.Tensor"]) -> "torch.optim.Optimizer":
        """train.py's SGD: Nesterov momentum and weight decay."""
        import torch

        return torch.optim.SGD(parameters, lr=self.config.lr, momentum=self.config.momentum,
                               weight_decay=self.config.weight_decay, nesterov=True)

    def query_loss(self, ctx: MetaTrainContext, logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """With ``label_smoothing``, train.py's smoothed cross-entropy; else the suite's loss."""
        from torch.nn import functional as F

        smoothing = self.config.label_smoothing
        if not smoothing:
            return super().query_loss(ctx, logits, labels)
        ways = logits.shape[-1]
        one_hot = F.one_hot(labels, ways).to(logits.dtype)
        targets = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (ways - 1)
        return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()

    def classifier(self, support: "torch.Tensor", labels: "torch.Tensor", ways: int, training: bool) -> Classifier:
        """scale x <q, sum_i alpha_i x_i>, alpha the SVM dual's solution on the support set."""
        from qpth.qp import QPFunction

        quadratic, linear, *constraints = svm_dual(support @ support.transpose(-1, -2), labels, ways, self.config.c_reg)
        solve = QPFunction(verbose=-1, maxIter=self.config.max_iter if training else self.config.test_max_iter)
        alpha = solve(quadratic, linear, *constraints).view(*labels.shape, ways)
        return lambda query: self.head.scale * (query @ support.transpose(-1, -2)) @ alpha
