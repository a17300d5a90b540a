"""ProtoMAML (Triantafillou et al. 2020, "Meta-Dataset", ICLR): first-order MAML whose linear head starts, in each
task, as the prototypical network's equivalent linear classifier."""
from __future__ import annotations

import dataclasses

from bench_plugins.learners._gradient import OUTER_LR_RANGE, GradientConfig, GradientMetaLearner, inner_loop_options
from bench_plugins.learners._metric import embedding_network
from bench_plugins.learners.protonet import class_prototypes

from bench.api import FloatRange, IntRange, MetaTrainContext, SearchRange, TaskKind, TaskSuite


@dataclasses.dataclass
class ProtoMAMLConfig(GradientConfig):
    """Where each default comes from (classification only: protomaml declines regression suites): Triantafillou et al.
    2020 and its reference code, github.com/google-research/meta-dataset (read): learners/optimization_learners.py
    (``MAMLLearner``), trainer.py, and the gin files learn/gin/learners/maml_init_with_proto_config.gin and
    learners/learner_config.gin, the configuration the tuned ones start from.

    ``inner_lr`` 0.01 (``MAMLLearner.alpha``), ``inner_steps`` 5 (``num_update_steps``; no extra steps at evaluation,
    ``additional_evaluation_update_steps`` 0), first order (``first_order = True``), the inner loss the mean
    cross-entropy of the support set (``tf.losses.softmax_cross_entropy``: ``inner_loss=mean``). Outer loop
    (trainer.py): Adam at ``outer_lr`` 1e-4 (``Trainer.learning_rate``), decayed in steps by 0.5 every 5,000 updates
    (``decay_learning_rate = True``, ``decay_every``, ``decay_rate``: a staircase ``exponential_decay``), one episode
    an update (``meta_batch`` 1). The tuned gin files (learn/gin/best/maml_init_with_proto_*.gin, a pre-trained
    ResNet-18 on Meta-Dataset's ImageNet or all of its sources) differ: inner_lr 0.0054 and 6 steps, or 0.0199 and 1;
    outer rate 3.6e-4 or 3.0e-4. The same on every classification suite; not tuned.
    """

    inner_steps: int = 5
    meta_batch: int = 1
    outer_lr: float = 1e-4
    outer_lr_decay: float = 0.5
    outer_lr_decay_every: int = 5000
    inner_lr: float = 0.01


class ProtoMAML(GradientMetaLearner):
    """ProtoMAML, first order: per task, the head starts from the support prototypes; head and body adapt by SGD.

    Each task's head starts as W_k = 2 c_k and b_k = -|c_k|^2 from its support prototypes c_k; then the head and the
    body take SGD steps on the support loss. The initial head is the linear form of a prototypical network's classifier (-|z - c_k|^2 = 2 c_k . z - |c_k|^2 -
    |z|^2, the last term the same for every class), so that step 0 predicts as protonet on this embedding. The
    meta-gradient is first order through the inner steps (the query gradient at the adapted weights), and flows into
    the body also through the prototypes of the initial head, as in Meta-Dataset's ``MAMLLearner``, which computes
    them from the body's unadapted weights and stops gradients only in the inner updates. The backbone's own final
    linear layer supplies only the head's shape (its weights are never used); batch-norm weights are meta-learned but
    not adapted in the inner loop (``adapt_batch_norm = False``). On the ``vary`` setting (Meta-Dataset's
    variable-way, variable-shot episodes) the head has the setting's most ways; the classes an episode lacks get a
    zero prototype, and their logits are -inf (``InnerLoop.episode_classes``, as every gradient learner's there), so
    that they never win and take no gradient.

    Deviations: the suites' backbone, not Meta-Dataset's 4-layer convnet (or its tuned ResNet-18); the setting's
    fixed ways and shots unless it runs on ``vary``; no weight decay (the reference's
    1e-4 on every weight); batch norm normalises the query set with its own statistics, as the other learners here
    (the reference uses the support set's moments).
    """

    Config = ProtoMAMLConfig
    first_order = True

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        if suite.kind is TaskKind.CLASSIFICATION:
            return None
        return f"protomaml initialises its head from class prototypes; '{suite.name}' is a {suite.kind.value} suite"

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: inner_lr 0.5-2x the gin default 0.01 (learn2learn's rule of thumb, as maml's; it holds both
        tuned values, 0.0054 and 0.0199); outer_lr ``OUTER_LR_RANGE`` (1e-4 to 1e-2: the default and both tuned rates);
        inner_steps 1 to 6, the tuned files' extremes. Regression: nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"inner_lr": FloatRange(0.005, 0.02, log=True), "outer_lr": OUTER_LR_RANGE,
                "inner_steps": IntRange(1, 6)}

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.backbones import EpisodeBatchNorm
        from bench.nn.functional import InnerLoop, Params

        model = ctx.backbone()
        body, head, ways = embedding_network(model, "protomaml", ctx.suite.name), f"{len(model) - 1}.", ctx.setting.ways
        model[-1].requires_grad_(False)  # replaced in every task by the prototypes' head
        norms = {f"{name}.{weight}" for name, module in model.named_modules()
                 if isinstance(module, EpisodeBatchNorm) for weight, _ in module.named_parameters()}

        def prototype_head(fast: Params, slow: Params, x, y) -> Params:
            """``fast`` with the head of one task's support prototypes (differentiable in the body's weights)."""
            weights = {name: tensor for name, tensor in {**slow, **fast}.items() if not name.startswith(head)}
            prototypes = class_prototypes(functional_call(body, weights, (x,)), y, ways)
            return {**fast, f"{head}weight": 2 * prototypes, f"{head}bias": -prototypes.square().sum(dim=-1)}

        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, {**slow, **fast}, (x,)),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
            **inner_loop_options(self.config, ctx),
            init=prototype_head,
        )
        weights = dict(model.named_parameters())
        self.fast = {name: weight for name, weight in weights.items() if name not in norms}
        self.slow = {name: weight for name, weight in weights.items() if name in norms}
