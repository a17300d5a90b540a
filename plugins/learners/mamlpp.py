"""MAML++ (Antoniou, Edwards and Storkey 2019, "How to train your MAML", ICLR): MAML with a multi-step loss, per-step
batch-norm weights and biases, learned per-layer per-step inner learning rates, derivative-order annealing and a
cosine-annealed outer learning rate."""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench_plugins.learners._gradient import (OUTER_LR_RANGE, GradientConfig, GradientMetaLearner, MetaGradientStep,
                                              OuterOptimizer, adam_outer_loop, as_run_on,
                                              inner_loop_options)

from bench.api import (Episode, FloatRange, IntRange, MetaTrainContext, Predictor, SearchRange, Setting, Support,
                       TaskKind, TaskSuite)

if TYPE_CHECKING:
    import torch

    from bench.nn.functional import InnerLoop, Params

REFERENCE = "github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch"


@dataclasses.dataclass
class MAMLPlusPlusConfig(GradientConfig):
    """Where each default comes from: Antoniou et al. 2019 (the paper's text from memory, not re-checked here) and its
    reference code, github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch (read): few_shot_learning_system.py,
    inner_loop_optimizers.py, meta_neural_network_architectures.py and the experiment_config JSONs of MAML++
    (``omniglot_maml++-omniglot_*.json``, ``mini-imagenet_maml++-mini-imagenet_*.json``).

    Regression (the dataclass defaults): the paper has no regression experiment, so MAML's sinusoid values
    (``MAMLConfig``: cbfinn/maml main.py): inner_steps 1, inner_lr 0.01, meta_batch 25, outer_lr 1e-3; the schedules
    as on Omniglot. With one inner step the multi-step loss is the last step's loss, and the sinusoid MLP has no batch
    norm: there maml++ is MAML with a learned rate per weight tensor, derivative-order annealing and a cosine rate.

    Classification (``PAPER_DEFAULTS``, from the JSONs; every other classification suite gets Omniglot's, not tuned):
    inner_steps 5 (``number_of_training_steps_per_iter``); inner_lr, the learned rates' initial value
    (``init_inner_loop_learning_rate``), 0.1 Omniglot, 0.01 mini-ImageNet; meta_batch (``batch_size``) 8 Omniglot,
    2 mini-ImageNet; outer_lr 1e-3 (``meta_learning_rate``, Adam); min_outer_lr (``min_learning_rate``) 1e-5 Omniglot,
    1e-3 mini-ImageNet (so the released mini-ImageNet runs keep the rate constant); msl_fraction: MSL for
    ``multi_step_loss_num_epochs`` of ``total_epochs`` = 10 / 100 Omniglot, 15 / 100 mini-ImageNet; clip_grad 10 on
    mini-ImageNet (``meta_update`` clamps every meta-gradient entry to +-10 when the data set is ImageNet's, of the
    mean over tasks of the weighted query losses: our units); inner_loss ``mean`` (``F.cross_entropy``).

    msl_min_share 0.03: ``get_per_step_loss_importance_vector``'s floor of every non-final weight, 0.03 / inner_steps
    (hard-coded there; the JSONs' ``minimum_per_task_contribution`` 0.01 is unused).

    first_order_fraction 1/3: the paper's derivative-order annealing, first order for the first 50 of 150 epochs
    (section 4, from memory). The code differs: the released JSONs set ``first_order_to_second_order_epoch`` -1
    (second order from the start: 0 here), the README's template 80 of 150 epochs (0.53).

    per_step_bn and learn_inner_lr True: the JSONs' ``per_step_bn_statistics``, ``learnable_bn_gamma`` /
    ``learnable_bn_beta`` and ``learnable_per_layer_per_step_inner_loop_learning_rate``; batch-norm weights are not
    adapted in the inner loop (``enable_inner_loop_optimizable_bn_params`` false).
    """

    min_outer_lr: float = 1e-5
    """The outer rate anneals by a cosine from ``outer_lr`` to this over the budget; ``outer_lr``: a constant rate."""
    msl_fraction: float = 0.1
    """The multi-step loss runs over this fraction of the budget, its weights annealing toward the last step; after
    it, the outer loss is the last step's query loss. 0: no multi-step loss."""
    msl_min_share: float = 0.03
    """While the multi-step loss runs, each non-final step's weight stays at least ``msl_min_share / inner_steps``."""
    first_order_fraction: float = 1 / 3
    """First-order meta-gradients over this fraction of the budget, second order after. 0: always second order."""
    per_step_bn: bool = True
    """Each inner step its own batch-norm weights and biases (meta-learned); False: one set shared by the steps."""
    learn_inner_lr: bool = True
    """Meta-learn the inner rates (one per weight tensor and step); False: every rate stays ``inner_lr``."""

    def __post_init__(self) -> None:
        GradientConfig.__post_init__(self)
        fractions = (self.msl_fraction, self.msl_min_share, self.first_order_fraction)
        if not all(0 <= value <= 1 for value in fractions):
            raise ValueError(f"msl_fraction, msl_min_share and first_order_fraction must lie in [0, 1], got "
                             f"{self.msl_fraction}, {self.msl_min_share} and {self.first_order_fraction}")
        if self.inner_steps < 1 or not 0 <= self.min_outer_lr <= self.outer_lr:
            raise ValueError(f"need inner_steps >= 1 and 0 <= min_outer_lr <= outer_lr, got {self.inner_steps}, "
                             f"{self.min_outer_lr} and {self.outer_lr}")
        if self.outer_lr_decay_every:
            raise ValueError("maml++ anneals the outer rate by a cosine (min_outer_lr): outer_lr_decay_every must be 0, "
                             f"got {self.outer_lr_decay_every}")


PAPER_DEFAULTS = {
    # The reference's experiment_config JSONs (MAML++, every ways and shots of each data set alike).
    "omniglot": {"inner_lr": 0.1, "inner_steps": 5, "meta_batch": 8, "min_outer_lr": 1e-5, "msl_fraction": 0.1},
    "miniimagenet": {"inner_lr": 0.01, "inner_steps": 5, "meta_batch": 2, "min_outer_lr": 1e-3, "msl_fraction": 0.15,
                     "clip_grad": 10.0},
}

MSL_WEIGHTS = "msl:weights"
"""The multi-step loss's per-step weights, kept among the slow tensors (not meta-learned: the schedule sets them before
each step) so that a compiled meta-gradient takes them as an input."""


def step_key(name: str, step: int) -> str:
    """The slow-tensor name of step ``step``'s own copy of ``name`` (parameter names never hold an ``@``)."""
    return f"{name}@{step}"


def msl_weights(steps: int, progress: float, min_share: float) -> list[float]:
    """The multi-step loss's weights of the query losses after steps 1..``steps`` at ``progress`` (0 to 1) through its
    annealing: the reference's ``get_per_step_loss_importance_vector`` with current_epoch / multi_step_loss_num_epochs
    = ``progress``. Uniform at 0; each non-final weight falls linearly to its floor ``min_share / steps`` and the last
    rises to 1 - (steps - 1) x that floor at 1."""
    floor = min_share / steps
    early = max((1 - progress) / steps, floor)
    last = min((1 + progress * (steps - 1)) / steps, 1 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


def cosine_lr(start: float, end: float, done: float) -> float:
    """The rate at fraction ``done`` of the budget, annealed from ``start`` to ``end`` by a half cosine
    (``torch.optim.lr_scheduler.CosineAnnealingLR``'s closed form, which the reference steps once an epoch)."""
    return end + (start - end) * (1 + math.cos(math.pi * done)) / 2


@dataclasses.dataclass(frozen=True)
class PerStepLoop:
    """``inner`` (an ``InnerLoop`` with learned rates) in which inner step k reads its own slow tensors: ``slow[
    step_key(name, k)]`` under ``name`` (the step's batch-norm weights and biases and its rates ``LR_PREFIX + weight``),
    next to the slow tensors shared by every step. A step at or beyond ``trained_steps`` reads the last trained step's.

    The query set after step k is predicted with step k's batch-norm weights (the reference's ``net_forward`` of the
    target set with ``num_step=k``); so is the unadapted network. The meta-loss of a task is the sum over the steps of
    each step's query loss weighted by ``slow[MSL_WEIGHTS]`` when ``multi_step``, else the last step's query loss.
    One ``torch.func`` path (``vmap`` over tasks of per-task ``grad`` steps) serves eager and compiled meta-gradients.
    """

    inner: InnerLoop
    trained_steps: int
    multi_step: bool = True

    # What MetaGradientStep reads of an InnerLoop.
    @property
    def forward(self):
        return self.inner.forward

    @property
    def loss(self):
        return self.inner.loss

    @property
    def lr(self) -> float | None:
        return self.inner.lr

    @property
    def support_scale(self) -> float:
        return self.inner.support_scale

    def at_step(self, slow: Params, step: int) -> Params:
        """The slow tensors inner step ``step`` uses, under the names ``inner`` reads."""
        chosen = str(min(step, self.trained_steps - 1))
        view = {}
        for key, tensor in slow.items():
            name, _, owner = key.rpartition("@")
            if not name:
                view[key] = tensor
            elif owner == chosen:
                view[name] = tensor
        return view

    def meta_loss(self, fast: Params, slow: Params, batch: Episode, steps: int, first_order: bool) -> torch.Tensor:
        """The mean over the tasks of ``batch`` of the outer loss; second order through the inner steps unless
        ``first_order``."""
        import torch
        from torch.func import vmap

        def task_loss(fast: Params, slow: Params, episode: Episode) -> torch.Tensor:
            losses = []
            for step in range(steps):
                view = self.at_step(slow, step)
                fast = self.inner.step(fast, view, episode.support_x, episode.support_y, first_order)
                if self.multi_step or step == steps - 1:
                    losses.append(self.inner.loss(self.inner.predict(fast, view, episode.query_x, episode.support_y),
                                                  episode.query_y))
            return (torch.stack(losses) * slow[MSL_WEIGHTS]).sum() if self.multi_step else losses[-1]

        return vmap(task_loss, in_dims=(None, None, 0))(fast, slow, batch).mean()

    pure_meta_loss = meta_loss  # already all torch.func: compiles as is

    def trajectory(self, fast: Params, slow: Params, support: Support, steps: int, *,
                   batched: bool = False) -> Iterator[Predictor]:
        """Test-time adaptation: a predictor after each of 0..steps SGD steps, step k with its own rates and batch
        norm (``at_step``). ``batched``: many tasks at once, as ``InnerLoop.trajectory``."""
        from torch.func import vmap

        from bench.nn.functional import detached, task_predictor

        fast, slow = detached(fast), detached(slow)
        step, predict = functools.partial(self.inner.step, first_order=True), self.inner.predict
        if batched:
            fast = {name: tensor.expand(support.x.shape[0], *tensor.shape) for name, tensor in fast.items()}
            step, predict = vmap(step, in_dims=(0, None, 0, 0)), vmap(predict, in_dims=(0, None, 0, 0))
        yield task_predictor(predict, fast, self.at_step(slow, 0), support.y)
        for index in range(steps):
            view = self.at_step(slow, index)
            fast = detached(step(fast, view, support.x, support.y))
            yield task_predictor(predict, fast, view, support.y)


class MAMLPlusPlus(GradientMetaLearner):
    """MAML++: MAML with a multi-step loss, per-step batch norm, learned per-step rates and annealed order and rate.

    The five changes of Antoniou et al. (2019), as their reference code has them:

    * multi-step loss (MSL): the outer loss is the weighted sum of the query losses after every inner step; the weights
      start uniform and anneal toward the last step over ``msl_fraction`` of the budget (``msl_weights``); after it,
      the last step's query loss alone;
    * per-step batch-norm weights and biases (BNWB): inner step k (its support forward, and the query forward after
      it) uses its own copy of every batch-norm weight and bias, meta-learned and not adapted in the inner loop. The
      backbones here normalise with the statistics of the batch they are given (``EpisodeBatchNorm``: transductive,
      as the reference's ``F.batch_norm(training=True)``, which never reads its per-step running statistics), so no
      per-step running statistics are needed. The sinusoid MLP has no batch norm: there BNWB changes nothing;
    * learned per-layer per-step inner rates (LSLR): one scalar rate per weight tensor and step, initialised at
      ``inner_lr`` and meta-learned (unconstrained, as in the reference);
    * derivative-order annealing (DA): first-order meta-gradients over ``first_order_fraction`` of the budget, second
      order after;
    * cosine annealing (CA) of the outer Adam rate from ``outer_lr`` to ``min_outer_lr`` over the budget.

    The budget is the cell's meta-training tasks; the schedules follow the fraction of it done, updated before every
    outer step (the reference steps them once an epoch). At test time step k adapts with step k's rates and batch
    norm; steps beyond ``inner_steps`` reuse the last trained step's (a choice of ours: the paper adapts for the
    trained number of steps only). Seeds meta-train one by one (each learner follows its own schedule).

    Deviations: the suites' backbone (the reference's is a Conv-4 with max-pooling as ``conv4``, but 64 filters on
    Omniglot and 48 on mini-ImageNet); the reference keeps ``inner_steps`` + 1 rates per weight tensor, the last never
    used (we keep ``inner_steps``); no weight decay (the reference's is 0 too).
    """

    Config = MAMLPlusPlusConfig
    loop: PerStepLoop

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """The reference's Omniglot and mini-ImageNet configurations, Omniglot's for other classification suites;
        none for regression (the dataclass defaults: MAML's sinusoid values)."""
        if suite.kind is not TaskKind.CLASSIFICATION:
            return {}
        return dict(PAPER_DEFAULTS.get(suite.name, PAPER_DEFAULTS["omniglot"]))

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """inner_lr (the rates' initial value): 0.5-2x the defaults (maml's rule, from learn2learn): around 0.01 for
        regression, from 0.5 x 0.01 (mini-ImageNet) to 2 x 0.1 (Omniglot) for classification. outer_lr:
        ``OUTER_LR_RANGE``. inner_steps: 1 to 5 (the paper's 5; MAML's sinusoid 1). No paper reports a range."""
        inner_lr = FloatRange(0.005, 0.02, log=True) if kind is TaskKind.REGRESSION else FloatRange(0.005, 0.2, log=True)
        return {"inner_lr": inner_lr, "outer_lr": OUTER_LR_RANGE, "inner_steps": IntRange(1, 5)}

    def build(self, ctx: MetaTrainContext) -> None:
        """Fast: every backbone weight but the batch norms'. Slow: each step's batch-norm weights and biases (or one
        shared set), each step's rate of each fast tensor, and the multi-step loss's weights."""
        import torch
        from torch.func import functional_call

        from bench.nn.backbones import EpisodeBatchNorm
        from bench.nn.functional import LR_PREFIX, InnerLoop

        config, model = self.config, ctx.backbone()
        norms = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
                 if isinstance(module, EpisodeBatchNorm) for name, _ in module.named_parameters()}
        weights = dict(model.named_parameters())
        steps = range(config.inner_steps)
        self.fast = {name: weight for name, weight in weights.items() if name not in norms}
        if config.per_step_bn:
            self.slow = {step_key(name, step): weights[name].detach().clone().requires_grad_()
                         for name in norms for step in steps}
        else:
            self.slow = {name: weights[name] for name in norms}
        like = next(iter(self.fast.values()))
        for name in self.fast:
            for step in steps:
                self.slow[step_key(LR_PREFIX + name, step)] = torch.full(
                    (), config.inner_lr, dtype=like.dtype, device=like.device, requires_grad=config.learn_inner_lr)
        self.slow[MSL_WEIGHTS] = torch.tensor(msl_weights(config.inner_steps, 0.0, config.msl_min_share),
                                              dtype=like.dtype, device=like.device)
        inner = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, {**fast, **{name: slow[name] for name in norms}}, (x,)),
            loss=ctx.suite.loss,
            lr=None,
            **inner_loop_options(config, ctx),
        )
        self.loop = PerStepLoop(inner, trained_steps=config.inner_steps, multi_step=config.msl_fraction > 0)

    def meta_train(self, ctx: MetaTrainContext) -> None:
        """``GradientMetaLearner.meta_train`` with ``follow_schedule`` before every outer step."""
        self.build(ctx)
        config = as_run_on(self.config, ctx)
        self._meta_gradient = MetaGradientStep(self.loop, config, self.first_order, self.fast, self.slow,
                                               steps=-(-ctx.task_budget // config.meta_batch), note=ctx.note)
        adam_outer_loop(ctx, self.meta_parameters(), config, self.accumulate_meta_gradient,
                        schedule=self.follow_schedule)

    def follow_schedule(self, done: float, optimizer: OuterOptimizer) -> None:
        """Set the multi-step loss (its weights, or the last step alone), the derivative order and the outer rate for
        the next step, at fraction ``done`` of the budget."""
        import torch

        config = self.config
        multi_step = done < config.msl_fraction
        weights = (msl_weights(config.inner_steps, done / config.msl_fraction, config.msl_min_share) if multi_step
                   else [0.0] * (config.inner_steps - 1) + [1.0])  # what the last-step loss amounts to
        with torch.no_grad():
            self.slow[MSL_WEIGHTS].copy_(torch.tensor(weights))
        if multi_step != self.loop.multi_step:
            self.loop = dataclasses.replace(self.loop, multi_step=multi_step)
            self._meta_gradient.loop = self.loop
        self._meta_gradient.first_order = done < config.first_order_fraction
        optimizer.set_lr(cosine_lr(config.outer_lr, config.min_outer_lr, done))
