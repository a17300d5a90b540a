"""The plain fine-tuning baseline: supervised pre-training, then SGD on each task's support set."""
from __future__ import annotations

import dataclasses
from typing import Iterator

from bench.api import Learner, MetaTrainContext, Predictor, Support, TaskKind, TaskSuite


@dataclasses.dataclass
class FinetuneConfig:
    """Pre-training: Adam 1e-3 on the points of 25 tasks per step. Test: SGD with lr 0.01 on every weight."""

    batch_tasks: int = 25
    pretrain_lr: float = 1e-3
    inner_lr: float = 0.01


class Finetune(Learner):
    """Fine-tuning baseline: pre-train the backbone on pooled meta-training data, then fine-tune on the support set.

    Pre-training is an ordinary supervised problem on every labelled point of the meta-training
    tasks (support and query), under the same budget of tasks seen as the meta-learners. At test
    time all weights take ``steps`` plain SGD steps on the support loss.
    """

    Config = FinetuneConfig

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        if suite.kind is not TaskKind.REGRESSION:
            return "pooled pre-training needs suite-wide class labels, which episodes do not carry yet"
        return None

    def meta_train(self, ctx: MetaTrainContext) -> None:
        import torch
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop

        model = ctx.backbone()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.pretrain_lr)
        for batch in ctx.batches(self.config.batch_tasks):
            inputs = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
            targets = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
            loss = ctx.suite.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.log(loss.detach())
        self.weights = dict(model.named_parameters())
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
        )

    def adapt(self, support: Support, steps: int) -> Iterator[Predictor]:
        return self.loop.trajectory(self.weights, {}, support, steps)
