"""Meta-SGD (Li et al. 2017): MAML with a meta-learned learning rate for every weight."""
from __future__ import annotations

import dataclasses
from typing import Any

from bench_plugins.learners._gradient import GradientMetaLearner, OuterLoopConfig
from bench_plugins.learners.maml import MAML

from bench.api import MetaTrainContext, Setting, TaskSuite


@dataclasses.dataclass
class MetaSGDConfig(OuterLoopConfig):
    """Li et al. 2017 (Meta-SGD), as we recall it: alpha initialised uniformly in [0.005, 0.1] (stated for
    their regression set-up; used here everywhere) and one inner step in all their experiments. Not re-checked
    against the paper, so taken from MAML (Finn et al. 2017) as its experiments follow MAML's: meta-batch 25
    and outer Adam 1e-3 on sinusoid; on the image suites MAML's paper meta-batch for the setting (32 for
    Omniglot 5-way, 16 for 20-way, 4 / 2 for mini-ImageNet 1- / 5-shot). ``inner_steps`` is for
    meta-training; the test takes ``--steps`` steps, each with the learned rates."""

    alpha_low: float = 0.005
    alpha_high: float = 0.1

    def __post_init__(self) -> None:
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

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """MAML's paper meta-batch on the image suites; always one inner step (Meta-SGD)."""
        maml = MAML.suite_defaults(suite, setting)
        return {"meta_batch": maml["meta_batch"], "inner_steps": 1} if maml else {}

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
                              loss=ctx.suite.loss, lr=None)
        self.fast = dict(model.named_parameters())
        self.slow = {
            LR_PREFIX + name: torch.empty(weight.shape, dtype=weight.dtype)
            .uniform_(self.config.alpha_low, self.config.alpha_high, generator=ctx.generator)
            .to(weight.device).requires_grad_()
            for name, weight in self.fast.items()
        }
