"""The fine-tuning baseline: supervised pre-training, then adaptation on each task's support set."""
from __future__ import annotations

import dataclasses
import math
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
    episode_ways,
)

if TYPE_CHECKING:
    import torch

HEADS = ("linear", "cosine")
PROTOCOLS = ("chen", "cheap")
BATCH_NORMS = ("episode", "running")
HEAD_SEED = 0
"""The seed of every test episode's initial head and batch order."""
PAPER_EPOCHS = {"omniglot": (5, 1100 * 4 * 20), "miniimagenet": (400, 64 * 600)}
"""Chen et al.'s pre-training epochs (train.py's stop_epoch for baseline and baseline++) and the images of the suite's
training split (Omniglot: 1,100 characters x 4 rotations x 20 drawings; mini-ImageNet: 64 classes x 600)."""


@dataclasses.dataclass
class FinetuneConfig:
    """Where each default comes from.

    Regression: MAML's pretrained baseline (Finn et al. 2017, section 5.1; github.com/cbfinn/maml main.py, its
    "sinusoid baselines" usage line and maml.py's pretrain_op): Adam at --meta_lr 1e-3 (``pretrain_lr``) on
    --meta_batch_size 25 tasks a step (``batch_tasks``; MAML pre-trains on the support points only, here on every
    labelled point), then at test time ``--steps`` plain SGD steps on every weight at ``inner_lr`` 0.01, MAML's
    sinusoid inner step size (the code fine-tunes the baseline with the same --update_lr flag as MAML's inner loop;
    the paper tuned the baseline's step size automatically and does not report it). The other fields are for
    classification. Not tuned.

    Classification: Chen et al. 2019 (github.com/wyharveychen/CloserLookFewShot). Pre-training (train.py,
    methods/baselinetrain.py): a head over every training class, Adam at torch's default 1e-3 (``pretrain_lr``) on
    shuffled batches of 16 images (``pretrain_batch``: train.py's SimpleDataManager(batch_size=16)). Chen's loader
    shuffles the whole training set for a number of epochs (5 on Omniglot, 400 on mini-ImageNet); here the images are
    those of the meta-training tasks the budget gives every learner (support and query), drawn ``batch_tasks`` tasks
    at a time, shuffled, and split into batches of ``pretrain_batch`` (a ``pretrain_batch`` at least the
    ``batch_tasks`` tasks' examples takes one step per draw, metabench's earlier pre-training). The ``paper`` profile
    gives Chen's epochs as tasks holding as many images (``paper_budget``); the others give every learner one budget
    (``quick`` on Omniglot 5-way 1-shot: 3,200 tasks, 32,000 images, 0.36 of an epoch). The state tested is chosen on
    meta-validation like every learner's (Chen tests the baseline's last epoch on Omniglot and mini-ImageNet).
    Test, ``protocol="chen"`` (methods/baselinefinetune.py): a fresh head on the frozen backbone's features, as
    nn.Linear initialises one, trained for ``epochs`` 100 epochs over the support set in shuffled batches of
    ``head_batch`` 4 by SGD at ``inner_lr`` 0.01, ``momentum`` 0.9, ``dampening`` 0.9, ``weight_decay`` 1e-3: 100 x
    ceil(N*K/4) adaptation steps whatever ``--steps`` (200 for 5-way 1-shot, 700 for 5-way 5-shot, 500 and 2,500 for
    20-way), the curve scored after steps 0..``--steps`` and at 20, 50, 100, 200, ... and the last. The initial head
    and the batch order come from a fixed seed, the same for every episode (Chen draws them from the global
    generator), so that an episode's numbers do not depend on the episodes adapted with it.
    ``protocol="cheap"``: metabench's earlier test, ``--steps`` full-batch steps of plain SGD at ``inner_lr`` from a
    zero linear head (Baseline++: the seeded head above); ``epochs``, ``head_batch``, ``momentum``, ``dampening``
    and ``weight_decay`` do not apply. A tenth of Chen's steps and still climbing at step 10.
    Baseline++ (``head="cosine"``, backbone.py distLinear): logits ``scale * g_c * cos(v_c, features)`` with a
    learnable norm g_c per class (WeightNorm on the linear layer, g initialised to the rows' norms), in pre-training
    and at test time; ``cosine_scale`` None: distLinear's rule by the head's classes, 2 for at most 200 and 10 above
    (pre-training: 10 on Omniglot's 4,400 training classes, 2 on mini-ImageNet's 64; a test head of N ways: 2).
    Batch norm, ``batch_norm="episode"`` (the default): the shared rule, every learner normalises with the statistics
    of the batch it is given (the support set's when adapting, the query set's when predicting), which differs from
    Chen's; ``"running"``: Chen's, running averages (momentum 0.1) kept in pre-training and used for every feature at
    test time (save_features.py's ``model.eval()``). Not tuned.
    """

    batch_tasks: int = 25
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 16
    inner_lr: float = 0.01
    head: str = "linear"
    cosine_scale: float | None = None
    protocol: str = "chen"
    epochs: int = 100
    head_batch: int = 4
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 1e-3
    batch_norm: str = "episode"

    def __post_init__(self) -> None:
        for name, options in (("head", HEADS), ("protocol", PROTOCOLS), ("batch_norm", BATCH_NORMS)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be {' or '.join(map(repr, options))}, got {getattr(self, name)!r}")


class Finetune(Learner):
    """Fine-tuning baseline: pre-train on pooled meta-training data, then fine-tune on the support set.

    Pre-training is an ordinary supervised problem on every labelled example of the meta-training
    tasks (support and query), under the same budget of tasks seen as the meta-learners.

    Regression: the backbone regresses all points of all tasks; at test time every weight takes
    plain SGD steps (lr ``inner_lr``) on the support loss.

    Classification (Chen et al. 2019, "Baseline"): the backbone with a head over all meta-training
    classes; at test time the backbone is frozen and a fresh head over the episode's ways is trained
    on the support features: by default Chen et al.'s 100 epochs of batch-4 SGD with momentum and
    weight decay (its own number of adaptation steps, ``adaptation_steps``), or ``protocol="cheap"``.
    ``head="cosine"`` is Baseline++ (distLinear) in pre-training and at test time. On a variable setting (``vary``,
    Meta-Dataset's episodes): the test head covers each episode's own ways and trains Chen et al.'s epochs over its own
    support set; the curve has the steps of the largest support set, an episode's head kept after its last step.
    """

    Config = FinetuneConfig
    batched = True
    batched_on_cpu = True  # adapts only a head, on features computed once per episode
    variable_episodes = True  # a head over each episode's own ways, trained for its own support set's epochs
    variable: bool = False
    """Whether the cell's setting is ``variable`` (set by ``meta_train``): each test head then covers its episode's
    own ways."""

    @classmethod
    def paper_budget(cls, suite: type[TaskSuite], setting: Setting) -> dict[str, int]:
        """Chen et al.'s pre-training, 5 epochs on Omniglot and 400 on mini-ImageNet, as the meta-training tasks that
        hold as many images (each of ways x (shots + meta-training queries)): Omniglot 5-way 1-shot 44,000 tasks.
        Other suites: the suite's budget."""
        if suite.name not in PAPER_EPOCHS or setting.variable is not None:
            return {}
        epochs, images = PAPER_EPOCHS[suite.name]
        per_task = setting.ways * (setting.shots + setting.query_for("train"))
        return {"meta_train_tasks": math.ceil(epochs * images / per_task)}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """pretrain_lr: a decade either side of the references' Adam 1e-3. inner_lr: from a decade below 0.01 (MAML's
        step; Chen et al.'s) to a decade above for regression, two for classification. Classification also
        pretrain_batch, from 4 images to 256 (Chen et al.: 16). Neither reference reports a range."""
        if kind is TaskKind.REGRESSION:
            return {"pretrain_lr": FloatRange(1e-4, 1e-2, log=True), "inner_lr": FloatRange(1e-3, 0.1, log=True)}
        return {"pretrain_lr": FloatRange(1e-4, 1e-2, log=True), "inner_lr": FloatRange(1e-3, 1.0, log=True),
                "pretrain_batch": IntRange(4, 256, log=True)}

    def adaptation_steps(self, setting: Setting, steps: int) -> int:
        """Chen et al.'s protocol on classification: ``epochs`` epochs of ceil(N*K / ``head_batch``) batches, whatever
        ``steps`` (a variable setting: of its largest support set; each episode trains for its own, ``adapt``);
        otherwise ``steps``."""
        if setting.ways is None or self.config.protocol == "cheap":
            return steps
        support = setting.ways * setting.shots if setting.variable is None else setting.variable.max_support
        return self._epoch_steps(support)

    def _epoch_steps(self, support: int) -> int:
        """Chen et al.'s steps on a support set of ``support`` examples: ``epochs`` x ceil(support / ``head_batch``)."""
        return self.config.epochs * math.ceil(support / self.config.head_batch)

    def meta_train(self, ctx: MetaTrainContext) -> None:
        import torch
        from bench_plugins.learners._heads import Head
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop

        self.classification = ctx.suite.kind is TaskKind.CLASSIFICATION
        self.loss = ctx.suite.loss
        model = ctx.backbone()
        if self.classification:  # replace the N-way output layer by one over every training class
            if self.config.batch_norm == "running":
                from bench_plugins.learners._running_norm import with_running_statistics

                with_running_statistics(model)
            self.width, classes = width, classes = model[-1].in_features, ctx.suite.num_classes("train")
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))
            model[-1] = Head(self.config.head, width, classes, self._scale(classes), generator).to(ctx.device)
            self.ways, self.variable = ctx.setting.ways, ctx.setting.variable is not None
            self.features = self.network = model[:-1]  # what adapt uses, ready now: meta-validation adapts mid-training
        else:
            self.network = model
            self.weights = dict(model.named_parameters())
            self.loop = InnerLoop(forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
                                  loss=ctx.suite.loss, lr=self.config.inner_lr)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.pretrain_lr)
        for batch in ctx.batches(self.config.batch_tasks):
            inputs, targets = self._pooled(batch)
            for chunk in self._chunks(len(targets), ctx.generator):
                model.train()
                loss = ctx.suite.loss(model(inputs[chunk]), targets[chunk])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ctx.log(loss.detach())
        model.requires_grad_(False)

    def _scale(self, classes: int) -> float:
        """Baseline++'s scale for a head over ``classes`` classes: ``cosine_scale``, or distLinear's rule."""
        from bench_plugins.learners._heads import cosine_scale

        return cosine_scale(classes) if self.config.cosine_scale is None else self.config.cosine_scale

    def _chunks(self, count: int, generator: "torch.Generator") -> list["torch.Tensor | slice"]:
        """The examples of each pre-training step: classification, shuffled batches of ``pretrain_batch``; regression,
        all of them (MAML's one step per meta-batch)."""
        import torch

        if not self.classification:
            return [slice(None)]
        return list(torch.randperm(count, generator=generator).split(self.config.pretrain_batch))

    def _pooled(self, batch) -> tuple["torch.Tensor", "torch.Tensor"]:
        """All examples of a batch of episodes; classification labels become training-split class ids."""
        import torch

        inputs = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        targets = torch.cat([batch.support_y, batch.query_y], dim=1)
        if self.classification:
            targets = torch.gather(batch.classes, 1, targets)
        return inputs, targets.flatten(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """The pre-trained network adapt starts from: the features (classification; with their running statistics
        where kept) or every weight (regression)."""
        return {"network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])

    def adapted_parameter_count(self) -> int:
        """Classification: the fresh head's weights and biases (Baseline++: directions and norms), ways x (width + 1);
        regression: every weight."""
        if self.classification:
            return self.ways * (self.width + 1)
        return sum(weight.numel() for weight in self.weights.values())

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        import itertools

        import torch
        from bench_plugins.learners._heads import SGD, Params, head_logits, initial_head, shuffled_batches, train_head

        if not self.classification:
            yield from self.loop.trajectory(self.weights, {}, support, steps, batched=batched)
            return
        self.features.eval()  # running statistics where kept (save_features.py's model.eval()); else no effect
        seen: dict[str, "torch.Tensor"] = {}

        def features(x: "torch.Tensor") -> "torch.Tensor":
            """The frozen backbone's features [episodes, examples, width], one episode at a time (each its own batch
            statistics; the numbers of adapting it alone); the query set's computed once for all steps."""
            if seen.get("x") is not x:
                seen.update(x=x, features=torch.stack([self.features(episode) for episode in (x if batched else [x])]))
            return seen["features"]

        support_features = features(support.x)
        seen.clear()
        labels = support.y if batched else support.y.unsqueeze(0)
        count, width = support_features.shape[1:]
        config, generator = self.config, torch.Generator().manual_seed(HEAD_SEED)
        cheap = config.protocol == "cheap"
        ways = episode_ways(support.y) if self.variable else self.ways
        own = min(steps, self._epoch_steps(count)) if self.variable and not cheap else steps
        initial = initial_head(config.head, ways, width, generator, zero=cheap)
        head = {name: tensor.to(support_features).expand(support_features.shape[0], *tensor.shape)
                for name, tensor in initial.items()}
        sgd = SGD(config.inner_lr) if cheap else SGD(config.inner_lr, config.momentum, config.dampening,
                                                      config.weight_decay)
        batches = (itertools.repeat(slice(None)) if cheap
                   else shuffled_batches(count, config.head_batch, generator))
        logits = head_logits(config.head, self._scale(ways))

        def predictor(head: Params) -> Predictor:
            def predict(x: "torch.Tensor") -> "torch.Tensor":
                scores = logits(head, features(x))
                return scores if batched else scores[0]
            return predict

        for trained in train_head(head, support_features, labels, logits, self.loss, sgd, batches, own):
            yield predictor(trained)
        for _ in range(steps - own):  # a variable setting's episode with a smaller support set: trained, kept
            yield predictor(trained)
