"""learn2learn's MAML in its documented usage (clone, adapt, one task at a time): the reference that
``bench perf`` times and checks the built-in MAML against. Not registered as a learner."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bench.api import Episode, MetaTrainContext, Predictor, Support
from bench_plugins.learners.maml import MAML

if TYPE_CHECKING:
    import torch


class LearnToLearnMAML(MAML):
    """learn2learn.algorithms.MAML: per task ``clone()``, ``adapt(loss)`` per inner step, query loss."""

    implementation = "learn2learn"
    batched = False

    def __init__(self, config: MAML.Config) -> None:
        super().__init__(dataclasses.replace(config, compile=False))  # learn2learn's documented, eager usage

    def build(self, ctx: MetaTrainContext) -> None:
        import learn2learn

        self.model = learn2learn.algorithms.MAML(ctx.backbone(), lr=self.config.inner_lr, first_order=self.first_order)
        self.loss = ctx.suite.loss
        self.fast, self.slow = dict(self.model.named_parameters()), {}

    def meta_loss(self, batch: Episode) -> "torch.Tensor":
        import torch

        losses = []
        for task in range(batch.support_x.shape[0]):
            learner = self.model.clone()
            for _ in range(self.config.inner_steps):
                learner.adapt(self.loss(learner(batch.support_x[task]), batch.support_y[task]))
            losses.append(self.loss(learner(batch.query_x[task]), batch.query_y[task]))
        return torch.stack(losses).mean()

    def adapt(self, support: Support, steps: int) -> Iterator[Predictor]:
        learner = self.model.clone()
        yield learner
        for _ in range(steps):
            learner.adapt(self.loss(learner(support.x), support.y), first_order=True)
            yield learner


class LearnToLearnFirstOrderMAML(LearnToLearnMAML):
    """learn2learn.algorithms.MAML with first_order=True."""

    first_order = True
