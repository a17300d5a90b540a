"""Meta-SGD (Li et al. 2017): MAML with a meta-learned learning rate for every weight."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from bench_plugins.learners._gradient import OUTER_LR_RANGE, GradientMetaLearner, OuterLoopConfig, inner_loop_options
from bench_plugins.learners.maml import MAML

from bench.api import FloatRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite


@dataclasses.dataclass
class MetaSGDConfig(OuterLoopConfig):
    """Where each default comes from: Li et al. 2017 ("Meta-SGD", from memory, not re-checked here) for what is
    Meta-SGD's own, MAML's sources (``MAMLConfig``) for the rest, since Meta-SGD's experiments follow MAML's.

    Regression: alpha_low / alpha_high 0.005 / 0.1 (Meta-SGD's regression set-up: alpha initialised uniformly in
    [0.005, 0.1]); inner_steps 1 (Meta-SGD takes one inner step in all its experiments); meta_batch 25 and outer_lr
    1e-3 (MAML's sinusoid values: cbfinn/maml main.py defaults).

    Classification: alpha as for regression (the only initialisation we know the paper states; not tuned);
    inner_steps 1; meta_batch MAML's for the setting (main.py usage lines / appendix A.1: 32 Omniglot 5-way,
    16 20-way, 4 / 2 mini-ImageNet 1- / 5-shot; other suites: Omniglot 5-way's 32); outer_lr 1e-3.

    inner_loss ``class_sum`` and, on mini-ImageNet, MAML's clamp of the meta-gradient (``MAMLConfig``): Meta-SGD
    has no official code; its experiments follow MAML's protocol, and the public re-implementations read here
    (github.com/foolyc/Meta-SGD and csyanbin/Meta-SGD: cbfinn/maml's maml.py with learned rates) keep MAML's loss
    (they import its utils.xent, cross-entropy / K per example, summed) and its mini-ImageNet clamp. So alpha's
    initial range means a 5x larger step on the mean cross-entropy of a 5-way task.

    ``inner_steps`` is for meta-training; the test takes ``--steps`` steps, each with the learned rates."""

    alpha_low: float = 0.005
    alpha_high: float = 0.1
    inner_loss: Literal["mean", "class_sum"] = "class_sum"

    def __post_init__(self) -> None:
        OuterLoopConfig.__post_init__(self)  # by name: learn2learn's reference config reuses this method
        if not 0 <= self.alpha_low <= self.alpha_high:
            raise ValueError(f"need 0 <= alpha_low <= alpha_high, got {self.alpha_low} and {self.alpha_high}")


class MetaSGD(GradientMetaLearner):
    """Meta-SGD: as maml, but every weight has its own meta-learned inner learning rate (alpha, same shape).

    Inner step ``w <- w - alpha * grad_w L(support)``; the outer Adam meta-trains the initial weights
    and alpha together, second order through the inner steps. alpha starts uniform in
    [``alpha_low``, ``alpha_high``], drawn from the learner's seeded generator, and is not constrained
    (a rate may turn negative, as in the paper). The rates are learned for ``inner_steps`` steps: more
    test steps can overshoot (sinusoid K=10 after 5,000 tasks: MSE 2.3 after one step, inf after five).
    """

    Config = MetaSGDConfig
    together_fields = (*GradientMetaLearner.together_fields, "alpha_low", "alpha_high")  # alpha's initial range

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """MAML's paper meta-batch and meta-gradient clamp on the image suites; always one inner step (Meta-SGD). On a
        variable setting one episode a step (Meta-Dataset's), Meta-SGD's outer rate and no clamp: MAML's values there
        are Meta-Dataset's MAML's, and its mini-ImageNet clamp is defined for a fixed N and K."""
        if setting.variable is not None:
            return {"meta_batch": 1, "inner_steps": 1}
        maml = MAML.suite_defaults(suite, setting)
        shared = {key: value for key, value in maml.items() if key in ("meta_batch", "clip_grad")}
        return {**shared, "inner_steps": 1} if maml else {}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """outer_lr: ``OUTER_LR_RANGE``. alpha_high, the top of the learned rates' initial range (alpha_low stays
        0.005): 0.5-2x of the paper's 0.1 for regression (maml's inner_lr rule, from learn2learn); for
        classification up to 2x MAML's largest image step, 0.4. No paper reports a range."""
        alpha_high = FloatRange(0.05, 0.2, log=True) if kind is TaskKind.REGRESSION else FloatRange(0.05, 0.8, log=True)
        return {"outer_lr": OUTER_LR_RANGE, "alpha_high": alpha_high}

    @classmethod
    def reference(cls) -> type | None:
        """learn2learn's MetaSGD (``l2l-metasgd``), for ``bench perf``'s side-by-side check."""
        from bench_plugins.learners.l2l import LearnToLearnMetaSGD

        return LearnToLearnMetaSGD

    def build(self, ctx: MetaTrainContext) -> None:
        import torch
        from torch.func import functional_call

        from bench.nn.functional import LR_PREFIX, InnerLoop

        model = ctx.backbone()
        self.loop = InnerLoop(forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
                              loss=ctx.suite.loss, lr=None, **inner_loop_options(self.config, ctx))
        self.fast = dict(model.named_parameters())
        self.slow = {
            LR_PREFIX + name: torch.empty(weight.shape, dtype=weight.dtype)
            .uniform_(self.config.alpha_low, self.config.alpha_high, generator=ctx.generator)
            .to(weight.device).requires_grad_()
            for name, weight in self.fast.items()
        }
