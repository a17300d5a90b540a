"""Prototypical networks (Snell et al. 2017): nearest class prototype in a meta-learned embedding."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from bench.api import FloatRange, IntRange, Learner, MetaTrainContext, Predictor, SearchRange, Support, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class ProtoNetConfig:
    """Where each default comes from (classification only: protonet declines regression suites): Snell et al. 2017
    and its reference code, github.com/jakesnell/prototypical-networks scripts/train/few_shot/run_train.py: Adam at
    --train.learning_rate 1e-3 (``lr``), halved (train.py's StepLR, gamma 0.5) every --train.decay_every 20 epochs
    of 100 episodes (``lr_halve_every`` 2,000), one episode a step (``meta_batch`` 1). The same on every
    classification suite; not tuned."""

    lr: float = 1e-3
    lr_halve_every: int = 2000
    """Halve the learning rate every this many meta-training episodes (tasks seen); 0 keeps it constant."""
    meta_batch: int = 1

    def learning_rate(self, episodes: int) -> float:
        """The learning rate after ``episodes`` meta-training episodes."""
        return self.lr * 0.5 ** (episodes // self.lr_halve_every) if self.lr_halve_every else self.lr


def class_prototypes(embeddings: "torch.Tensor", labels: "torch.Tensor", ways: int) -> "torch.Tensor":
    """The mean embedding of each class, [..., ways, D], from embeddings [..., N, D] and labels [..., N]."""
    import torch

    members = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(embeddings.dtype)
    return (members.transpose(-1, -2) @ embeddings) / members.sum(dim=-2).unsqueeze(-1)


def prototype_logits(embeddings: "torch.Tensor", prototypes: "torch.Tensor") -> "torch.Tensor":
    """Logits [..., Q, ways]: minus the squared Euclidean distance of each embedding to each prototype."""
    return -(embeddings.unsqueeze(-2) - prototypes.unsqueeze(-3)).square().sum(dim=-1)


class ProtoNet(Learner):
    """Prototypical networks: classify by the nearest class-mean embedding; nothing adapts at test time.

    The embedding is the suite's standard backbone without its final linear head (the Conv-4's
    flattened features: 64 on Omniglot, 800 on mini-ImageNet with the suite's 32 filters). Meta-training
    (Snell et al. 2017): per episode, prototypes are the mean support embedding of each class, the
    logits minus the squared Euclidean distance of each query to each prototype, and the loss the
    suite's (cross-entropy) on the query; Adam, ``lr`` halved every ``lr_halve_every`` episodes, one
    episode a step. Episodes have the setting's ways and the suite's meta-training queries (the paper
    trains with more ways, 60 on Omniglot and 20 on mini-ImageNet, and also reports training with the
    test ways). Batch norm normalises support and query separately, each with its own batch
    statistics, in meta-training and at test time alike (as the other learners: support statistics
    when adapting, the query set's when predicting). At test time the prototypes are computed once:
    the curve is the single point at step 0.
    """

    Config = ProtoNetConfig
    max_adaptation_steps: ClassVar[int | None] = 0
    batched = True

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: ``lr``, a decade either side of the paper's 1e-3, and ``lr_halve_every``, a quarter to
        four times its 2,000 episodes (no range is reported). Regression: nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"lr": FloatRange(1e-4, 1e-2, log=True), "lr_halve_every": IntRange(500, 8000, log=True)}

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        if suite.kind is TaskKind.CLASSIFICATION:
            return None
        return f"protonet classifies by nearest class prototype; '{suite.name}' is a {suite.kind.value} suite"

    def meta_train(self, ctx: MetaTrainContext) -> None:
        import torch
        from torch import nn

        model = ctx.backbone()
        if not (isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)):
            raise TypeError(f"protonet needs a backbone that is an nn.Sequential ending in a linear head; "
                            f"suite '{ctx.suite.name}' gives {type(model).__name__}")
        self.embedding, self.ways = model[:-1], ctx.setting.ways
        optimizer = torch.optim.Adam(self.embedding.parameters(), lr=self.config.lr, fused=True)
        episodes = 0
        for batch in ctx.batches(self.config.meta_batch):
            (predict,) = self.adapt(batch.support, 0, batched=True)
            loss = ctx.suite.loss(predict(batch.query_x).flatten(0, 1), batch.query_y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.log(loss.detach())
            episodes += batch.support_x.shape[0]
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate(episodes)
        self.embedding.requires_grad_(False)

    def state_dict(self) -> dict[str, Any]:
        """The embedding, by reference."""
        return {"embedding": self.embedding.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.embedding.load_state_dict(state["embedding"])

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        """One predictor (``max_adaptation_steps = 0``): nearest prototype of the support set (batch norm per task)."""
        from torch.func import vmap

        embed = vmap(self.embedding) if batched else self.embedding
        prototypes = class_prototypes(embed(support.x), support.y, self.ways)
        yield lambda x: prototype_logits(embed(x), prototypes)
