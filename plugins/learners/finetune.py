"""The fine-tuning baseline: supervised pre-training, then adaptation on each task's support set."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.api import (
    FloatRange,
    IntRange,
    Learner,
    MetaTrainContext,
    Predictor,
    SearchRange,
    Setting,
    Support,
    TaskKind,
    TaskSuite,
)

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class FinetuneConfig:
    """Where each default comes from.

    Regression: MAML's pretrained baseline (Finn et al. 2017, section 5.1; github.com/cbfinn/maml main.py, its
    "sinusoid baselines" usage line and maml.py's pretrain_op): Adam at --meta_lr 1e-3 (``pretrain_lr``) on
    --meta_batch_size 25 tasks a step (``batch_tasks``; MAML pre-trains on the support points only, here on every
    labelled point). inner_lr 0.01: MAML's sinusoid inner step size (the code fine-tunes the baseline with the
    same --update_lr flag as MAML's inner loop; the paper, from memory, tuned the baseline's step size
    automatically and does not report it). Not tuned.

    Classification: Chen et al. 2019 (github.com/wyharveychen/CloserLookFewShot). Test: inner_lr 0.01, the lr of
    methods/baselinefinetune.py's SGD on the new head; its momentum 0.9 with dampening 0.9 leave a steady
    gradient's step at lr x gradient, so plain SGD at 0.01 keeps the step size; it takes 100 epochs of batch-4
    steps (and weight decay 1e-3), here ``--steps`` full-batch steps. pretrain_lr 1e-3: train.py's
    ``Adam(model.parameters())`` at torch's default. batch_tasks 25: not Chen's (16 images a step, less than one
    task here) but the regression value, MAML's; not tuned.
    cosine_scale (Baseline++ only): backbone.py's distLinear scale, 10 for more than 200 training classes
    (Omniglot), 2 otherwise (mini-ImageNet's 64: ``suite_defaults``).
    """

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
    ways is trained on the support features, one full-batch SGD step (lr ``inner_lr``) per adaptation
    step. ``head="linear"`` starts from zero weights (step 0 is chance);
    ``head="cosine"`` is Baseline++: logits ``cosine_scale * cos(w_c, f)`` in pre-training and at test
    time, the fresh head's rows unit vectors from a fixed seed.
    """

    Config = FinetuneConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """Chen et al.'s Baseline++ scale for mini-ImageNet's 64 training classes (at most 200: 2)."""
        return {"cosine_scale": 2.0} if suite.name == "miniimagenet" else {}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """pretrain_lr: a decade either side of the references' Adam 1e-3. inner_lr: from a decade below 0.01 (MAML's
        step; Chen et al.'s) to a decade above for regression, two for classification, where Chen et al.'s 0.01 is
        for hundreds of batch-4 steps and the protocol takes ``--steps`` full-batch ones. Classification also
        batch_tasks, from 1 task (nearest to Chen et al.'s 16 images) to 25. Neither reference reports a range."""
        if kind is TaskKind.REGRESSION:
            return {"pretrain_lr": FloatRange(1e-4, 1e-2, log=True), "inner_lr": FloatRange(1e-3, 0.1, log=True)}
        return {"pretrain_lr": FloatRange(1e-4, 1e-2, log=True), "inner_lr": FloatRange(1e-3, 1.0, log=True),
                "batch_tasks": IntRange(1, 25, log=True)}

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
        self.ways = ctx.setting.ways
        if self.classification:  # what adapt uses, ready from the start: meta-validation adapts mid-training
            self.features = self.network = model[:-1]
            self.loop = InnerLoop(forward=self._head_logits, loss=ctx.suite.loss, lr=self.config.inner_lr)
        else:
            self.network = model
            self.weights = dict(model.named_parameters())
            self.loop = InnerLoop(
                forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
                loss=ctx.suite.loss,
                lr=self.config.inner_lr,
            )
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.pretrain_lr)
        for batch in ctx.batches(self.config.batch_tasks):
            inputs, targets = self._pooled(batch)
            loss = ctx.suite.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.log(loss.detach())
        model.requires_grad_(False)

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

    def state_dict(self) -> dict[str, Any]:
        """The pre-trained network adapt starts from: the features (classification) or every weight (regression)."""
        return {"network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])

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
