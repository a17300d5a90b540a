"""The fine-tuning baseline: supervised pre-training, then adaptation on each task's support set."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.api import (
    Learner,
    MetaTrainContext,
    Predictor,
    Setting,
    Support,
    TaskKind,
    TaskSuite,
)

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class FinetuneConfig:
    """Pre-training: Adam 1e-3 on the examples of 25 tasks per step. Test: plain SGD with ``inner_lr``."""

    batch_tasks: int = 25
    pretrain_lr: float = 1e-3
    inner_lr: float = 0.01
    head: str = "linear"
    cosine_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.head not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {self.head!r}")


class Finetune(Learner):
    """Fine-tuning baseline: pre-train on pooled meta-training data, then fine-tune on the support set.

    Pre-training is an ordinary supervised problem on every labelled example of the meta-training
    tasks (support and query), under the same budget of tasks seen as the meta-learners.

    Regression: the backbone regresses all points of all tasks; at test time every weight takes
    plain SGD steps (lr ``inner_lr``) on the support loss.

    Classification (Chen et al. 2019, "Baseline"): the backbone with a softmax head over all
    meta-training classes; at test time the backbone is frozen and a fresh head over the episode's
    ways is trained on the support features, one full-batch SGD step (lr ``inner_lr``, default 0.1)
    per adaptation step. ``head="linear"`` starts from zero weights (step 0 is chance);
    ``head="cosine"`` is Baseline++: logits ``cosine_scale * cos(w_c, f)`` in pre-training and at test
    time, the fresh head's rows unit vectors from a fixed seed.
    """

    Config = FinetuneConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        return {"inner_lr": 0.1} if suite.kind is TaskKind.CLASSIFICATION else {}

    def meta_train(self, ctx: MetaTrainContext) -> None:
        import torch
        from torch import nn
        from torch.func import functional_call

        from bench.nn.backbones import CosineClassifier
        from bench.nn.functional import InnerLoop

        self.classification = ctx.suite.kind is TaskKind.CLASSIFICATION
        model = ctx.backbone()
        if self.classification:  # replace the N-way output layer by one over every training class
            width, classes = model[-1].in_features, ctx.suite.num_classes("train")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))
                head = (CosineClassifier(width, classes, self.config.cosine_scale) if self.config.head == "cosine"
                        else nn.Linear(width, classes))
            model[-1] = head.to(ctx.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.pretrain_lr)
        for batch in ctx.batches(self.config.batch_tasks):
            inputs, targets = self._pooled(batch)
            loss = ctx.suite.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.log(loss.detach())
        model.requires_grad_(False)
        self.ways = ctx.setting.ways
        if self.classification:
            self.features = model[:-1]
            self.loop = InnerLoop(forward=self._head_logits, loss=ctx.suite.loss, lr=self.config.inner_lr)
        else:
            self.weights = dict(model.named_parameters())
            self.loop = InnerLoop(
                forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
                loss=ctx.suite.loss,
                lr=self.config.inner_lr,
            )

    def _pooled(self, batch) -> tuple["torch.Tensor", "torch.Tensor"]:
        """All examples of a batch of episodes; classification labels become training-split class ids."""
        import torch

        inputs = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        targets = torch.cat([batch.support_y, batch.query_y], dim=1)
        if self.classification:
            targets = torch.gather(batch.classes, 1, targets)
        return inputs, targets.flatten(0, 1)

    def _head_logits(self, head: dict[str, "torch.Tensor"], slow: dict, features: "torch.Tensor") -> "torch.Tensor":
        from bench.nn.backbones import cosine_logits

        if self.config.head == "cosine":
            return cosine_logits(head["weight"], features, self.config.cosine_scale)
        return features @ head["weight"].T + head["bias"]

    def _fresh_head(self, width: int, like: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Linear: zero weights (step 0 is chance). Cosine: unit-norm rows drawn from a fixed seed."""
        import torch
        from torch.nn import functional as F

        if self.config.head == "cosine":
            generator = torch.Generator().manual_seed(0)
            return {"weight": F.normalize(torch.randn(self.ways, width, generator=generator), dim=-1).to(like)}
        return {"weight": like.new_zeros(self.ways, width), "bias": like.new_zeros(self.ways)}

    batched = True

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        from torch.func import vmap

        if not self.classification:
            yield from self.loop.trajectory(self.weights, {}, support, steps, batched=batched)
            return
        backbone = vmap(self.features) if batched else self.features
        seen: dict[str, "torch.Tensor"] = {}

        def features(x: "torch.Tensor") -> "torch.Tensor":
            """The frozen backbone's features, computed once for the query set all steps share."""
            if seen.get("x") is not x:
                seen.update(x=x, features=backbone(x))
            return seen["features"]

        support_features = backbone(support.x)
        head = self._fresh_head(support_features.shape[-1], support_features)
        for predictor in self.loop.trajectory(head, {}, Support(support_features, support.y), steps, batched=batched):
            yield lambda x, predictor=predictor: predictor(features(x))
