"""The adaptation-layer (model-dependent) meta-learner, in the CAVIA design (Zintgraf et al. 2019)."""
from __future__ import annotations

import dataclasses
from typing import Any

from bench_plugins.learners._gradient import OUTER_LR_RANGE, GradientConfig, GradientMetaLearner, inner_loop_options

from bench.api import FloatRange, IntRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite


@dataclasses.dataclass
class AdaptationLayerConfig(GradientConfig):
    """Where each default comes from: CAVIA's reference code, github.com/lmzintgraf/cavia (Zintgraf et al. 2019).

    Regression (regression/arguments.py): context_dim 5 (--num_context_params), the context on the first layer
    (``layer`` 0: regression/cavia_model.py concatenates it to the input), inner_lr 1.0 (--lr_inner), inner_steps
    1 (--num_inner_updates), meta_batch 25 (--tasks_per_metaupdate), outer_lr 1e-3 with Adam (--lr_meta). Not
    followed: regression/cavia.py clamps each task's meta-gradient to +-10 before the mean over the meta-batch
    (this learner computes only the batch's gradient: ``clip_grad`` clamps the mean).

    Classification (classification/arguments.py, CAVIA's mini-ImageNet experiment; ``IMAGE_DEFAULTS``,
    ``CLASSIFICATION_DEFAULTS``): context_dim 100 (--num_context_params), FiLM (``film``; classification/models.py,
    ``ContextModulated`` says how) after the third conv block's batch norm and max-pool (--context_in),
    inner_lr 1.0 (--lr_inner), inner_steps 2 (--num_grad_steps_inner), meta_batch 16 (--tasks_per_metaupdate),
    outer_lr 1e-3 (--lr_meta) decayed by 0.9 (--lr_meta_decay) every 5,000 steps (main.py's StepLR, which it steps
    before each update, so its first decay comes one update earlier), and the mean meta-gradient clamped to +-10
    (main.py: ``param.grad.data.clamp_(-10, 10)`` on the network's weights, not on the context).
    inner_loss ``mean``: main.py's ``F.cross_entropy`` (as regression's ``F.mse_loss``). CAVIA has no Omniglot
    experiment: Omniglot takes the mini-ImageNet values (the same Conv-4 design). Not tuned.
    """

    inner_lr: float = 1.0
    context_dim: int = 5
    layer: int = 0
    film: bool = False


IMAGE_SUITES = ("omniglot", "miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub", "digits")
"""The built-in suites whose standard backbone is the Conv-4 (module 9: the third block's batch norm)."""
RESNET12_FILM_LAYER = 2
"""FiLM on the output of ResNet-12's third residual block (modules: blocks 0-3, pooling, head)."""
CAVIA_CLASSIFICATION = {"context_dim": 100, "film": True, "inner_lr": 1.0, "inner_steps": 2, "meta_batch": 16,
                        "outer_lr_decay": 0.9, "outer_lr_decay_every": 5000, "clip_grad": 10.0}
"""CAVIA's classification settings (classification/arguments.py, main.py), but for where the context acts."""
IMAGE_DEFAULTS = {
    # CAVIA's FiLM after the third conv block's batch norm: module 9 of the standard Conv-4 (conv, norm, relu, pool
    # per block); ContextModulated runs the block's max-pool before its ReLU, so that FiLM acts after the pool.
    **CAVIA_CLASSIFICATION, "layer": 9,
}
CLASSIFICATION_DEFAULTS = {
    # A backbone of unknown layout: FiLM on module -3, the last hidden layer before its activation and the head
    # (for an MLP), the nearest to CAVIA's placement (a late hidden layer's pre-activation) such a backbone allows.
    **CAVIA_CLASSIFICATION, "layer": -3,
}


class AdaptationLayer(GradientMetaLearner):
    """Adaptation layer (CAVIA): a meta-learned network; each task adapts only a small context vector.

    Design: a context vector phi (``context_dim`` numbers) is reset to zero for every task and
    modulates the output of backbone module ``layer``: a shift ``W @ phi`` (sinusoid default: the first
    layer, exactly CAVIA's concatenation of phi to the input), or with ``film`` CAVIA's FiLM, a scale and a
    shift per channel from one linear map with bias, ``(gamma, beta) = W @ phi + b`` (image default: 100
    context numbers after the third conv block's batch norm and max-pool, as CAVIA). Inner loop:
    phi <- phi - lr * grad_phi L(theta, phi; support). Outer loop: Adam on theta (backbone, W and b) through
    the inner loop, second order. The initial phi stays zero, as in CAVIA.
    """

    Config = AdaptationLayerConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """Classification: CAVIA's image settings, with its FiLM placement on the Conv-4 image suites and its
        generic form on other classification suites. On ResNet-12 (``--backbone resnet12``: four residual blocks,
        the pooling, the head) FiLM modulates the third block's output, ``layer=2``: CAVIA's "third block" placement,
        after the block's activation and pool (a block is one module), where the Conv-4's is before its ReLU."""
        if suite.kind is not TaskKind.CLASSIFICATION:
            return {}
        defaults = dict(IMAGE_DEFAULTS if suite.name in IMAGE_SUITES else CLASSIFICATION_DEFAULTS)
        if suite.chosen_backbone() == "resnet12":
            defaults["layer"] = RESNET12_FILM_LAYER
        return defaults

    @classmethod
    def paper_budget(cls, suite: type[TaskSuite], setting: Setting) -> dict[str, int]:
        """CAVIA's regression/arguments.py: --n_iter 50,000 x --tasks_per_metaupdate 25 on sinusoid (MAML: 70,000
        x 25). Other suites: the suite's budget."""
        return {"meta_train_tasks": 50_000 * 25} if suite.name == "sinusoid" else {}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """inner_lr: a decade either side of CAVIA's 1.0 (its code states no range); outer_lr:
        ``OUTER_LR_RANGE``; inner_steps: 1 to 5 (CAVIA uses 1 and 2, MAML up to 5)."""
        return {"inner_lr": FloatRange(0.1, 10.0, log=True), "outer_lr": OUTER_LR_RANGE, "inner_steps": IntRange(1, 5)}

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop
        from bench.nn.modulation import ContextModulated

        config = self.config
        network = ContextModulated(ctx.backbone(), config.context_dim, config.layer, config.film, ctx.generator)
        network.to(ctx.device)
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(network, slow, (x, fast["context"])),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
            **inner_loop_options(self.config, ctx),
        )
        self.fast = {"context": network.initial_context()}
        self.slow = dict(network.named_parameters())
