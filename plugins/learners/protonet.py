"""Prototypical networks (Snell et al. 2017): nearest class prototype in a meta-learned embedding."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from bench_plugins.learners._metric import Classifier, EpisodeSchedule, HeadLearner

from bench.api import FloatRange, IntRange, SearchRange, Setting, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class ProtoNetConfig(EpisodeSchedule):
    """Where each default comes from (classification only: protonet declines regression suites): Snell et al. 2017
    and its reference code, github.com/jakesnell/prototypical-networks scripts/train/few_shot/run_train.py: Adam at
    --train.learning_rate 1e-3 (``lr``), halved (train.py's StepLR, gamma 0.5, stepped as each epoch starts) every
    --train.decay_every 20 epochs of --data.train_episodes 100 (``lr_halve_every`` 2,000 episodes; the paper: "cut
    the learning rate in half every 2000 episodes"), one episode a step (``meta_batch`` 1); the same on every
    classification suite. It leaves the rate negligible long before a long budget ends (1e-3 / 2^25 after 50,000
    episodes): the reference stops earlier, when the meta-validation loss has not improved for --train.patience
    200 epochs (20,000 episodes). Training episodes (``PAPER_EPISODES``): the paper matches the training shot to the
    test's and trains with more ways: Omniglot (section 3.1 and run_train.py's --data.way 60, --data.query 5) 60
    ways and 5 queries per class for every test setting; mini-ImageNet (section 3.2) 30 ways for 1-shot and 20 for
    5-shot, 15 queries per class. Other suites: the setting's ways and the suite's meta-training queries. Not
    tuned."""

    lr: float = 1e-3
    lr_halve_every: int = 2000
    """Halve the learning rate every this many meta-training episodes (tasks seen); 0 keeps it constant."""
    meta_batch: int = 1
    train_ways: int = 0
    """Classes per meta-training episode; 0: the setting's. More classes than the meta-training split holds is an
    error (the suite's, at the first episode); nothing caps it."""
    train_query: int = 0
    """Query examples per class of a meta-training episode; 0: the suite's for the setting."""


PAPER_EPISODES = {
    # Snell et al. 2017, per (suite, shots): training ways and queries per class (section 3.1, Omniglot, as
    # run_train.py's defaults; section 3.2, mini-ImageNet).
    ("omniglot", 1): {"train_ways": 60, "train_query": 5},
    ("omniglot", 5): {"train_ways": 60, "train_query": 5},
    ("miniimagenet", 1): {"train_ways": 30, "train_query": 15},
    ("miniimagenet", 5): {"train_ways": 20, "train_query": 15},
}


def class_prototypes(embeddings: "torch.Tensor", labels: "torch.Tensor", ways: int) -> "torch.Tensor":
    """The mean embedding of each class, [..., ways, D], from embeddings [..., N, D] and labels [..., N]; zero for a
    class without examples."""
    import torch

    members = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(embeddings.dtype)
    return (members.transpose(-1, -2) @ embeddings) / members.sum(dim=-2).clamp(min=1).unsqueeze(-1)


def prototype_logits(embeddings: "torch.Tensor", prototypes: "torch.Tensor") -> "torch.Tensor":
    """Logits [..., Q, ways]: minus the squared Euclidean distance of each embedding to each prototype."""
    return -(embeddings.unsqueeze(-2) - prototypes.unsqueeze(-3)).square().sum(dim=-1)


class ProtoNet(HeadLearner):
    """Prototypical networks: classify by the nearest class-mean embedding; nothing adapts at test time.

    The embedding is the suite's standard backbone without its final linear head (the Conv-4's
    flattened features: 64 on Omniglot, 800 on mini-ImageNet with the suite's 32 filters). Meta-training
    (Snell et al. 2017): per episode, prototypes are the mean support embedding of each class, the
    logits minus the squared Euclidean distance of each query to each prototype, and the loss the
    suite's (cross-entropy) on the query; Adam, ``lr`` halved every ``lr_halve_every`` episodes, one
    episode a step. Meta-training episodes have the setting's shots and ``train_ways`` classes with
    ``train_query`` queries each (the paper's on Omniglot and mini-ImageNet: 60 ways and 5 queries; 30
    or 20 ways and 15 queries), drawn from the host's seeded stream of that setting (``ctx.batches(...,
    setting=...)``); each counts one task of the budget, however many classes it has. Meta-validation
    and the test use the setting's ways. Batch norm normalises support and query separately, each with
    its own batch statistics, in meta-training and at test time alike (as the other learners: support
    statistics when adapting, the query set's when predicting). At test time the prototypes are computed once:
    the curve is the single point at step 0.
    """

    Config = ProtoNetConfig
    label = "protonet"
    method = "classifies by nearest class prototype"

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """``PAPER_EPISODES``' training ways and queries; none on a variable setting (its episodes draw their own)."""
        return {} if setting.variable is not None else dict(PAPER_EPISODES.get((suite.name, setting.shots), {}))

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: ``lr``, a decade either side of the paper's 1e-3, and ``lr_halve_every``, a quarter to
        four times its 2,000 episodes (no range is reported). Regression: nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"lr": FloatRange(1e-4, 1e-2, log=True), "lr_halve_every": IntRange(500, 8000, log=True)}

    def classifier(self, support: "torch.Tensor", labels: "torch.Tensor", ways: int, training: bool) -> Classifier:
        """Logits of the nearest of the ``ways`` class prototypes."""
        prototypes = class_prototypes(support, labels, ways)
        return lambda query: prototype_logits(query, prototypes)
