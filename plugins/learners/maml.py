"""MAML (Finn et al. 2017), second order, and its first-order approximation."""
from __future__ import annotations

import dataclasses
from typing import Any

from bench_plugins.learners._gradient import GradientConfig, GradientMetaLearner

from bench.api import MetaTrainContext, Setting, TaskKind, TaskSuite


@dataclasses.dataclass
class MAMLConfig(GradientConfig):
    """Defaults of the MAML paper's sinusoid experiment: alpha 0.01, 1 inner step, 25 tasks, Adam 1e-3."""


PAPER_DEFAULTS = {
    # Finn et al. 2017, classification: (suite, ways, shots) -> inner lr, inner steps, meta-batch.
    ("omniglot", 5): {"inner_lr": 0.4, "inner_steps": 1, "meta_batch": 32},
    ("omniglot", 20): {"inner_lr": 0.1, "inner_steps": 5, "meta_batch": 16},
    ("miniimagenet", 5, 1): {"inner_lr": 0.01, "inner_steps": 5, "meta_batch": 4},
    ("miniimagenet", 5, 5): {"inner_lr": 0.01, "inner_steps": 5, "meta_batch": 2},
}


class MAML(GradientMetaLearner):
    """MAML, second order: meta-learns an initialisation; every weight adapts by SGD on the support set.

    The inner loop is a pure function of the weights (``torch.func.grad``), the meta-batch is one
    ``vmap``, and the meta-gradient differentiates through the inner SGD steps.
    """

    Config = MAMLConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """The paper's settings for Omniglot and mini-ImageNet, its Omniglot 5-way ones for other classification
        suites, the sinusoid ones for regression."""
        fallback = PAPER_DEFAULTS[("omniglot", 5)] if suite.kind is TaskKind.CLASSIFICATION else {}
        return dict(PAPER_DEFAULTS.get((suite.name, setting.ways, setting.shots))
                    or PAPER_DEFAULTS.get((suite.name, setting.ways), fallback))

    @classmethod
    def reference(cls) -> type | None:
        """learn2learn's MAML (``l2l-maml``), for ``bench perf``'s side-by-side check."""
        from bench_plugins.learners.l2l import LearnToLearnMAML

        return LearnToLearnMAML

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop

        model = ctx.backbone()
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, fast, (x,)),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
        )
        self.fast = dict(model.named_parameters())
        self.slow = {}


class FirstOrderMAML(MAML):
    """First-order MAML: as maml, but the meta-gradient ignores second derivatives (the query gradient at the adapted weights)."""

    first_order = True

    @classmethod
    def reference(cls) -> type | None:
        from bench_plugins.learners.l2l import LearnToLearnFirstOrderMAML

        return LearnToLearnFirstOrderMAML
