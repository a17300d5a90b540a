"""The adaptation-layer (model-dependent) meta-learner, in the CAVIA design (Zintgraf et al. 2019)."""
from __future__ import annotations

import dataclasses

from bench.api import MetaTrainContext
from bench_plugins.learners._gradient import GradientConfig, GradientMetaLearner


@dataclasses.dataclass
class AdaptationLayerConfig(GradientConfig):
    """CAVIA's sinusoid defaults: 5 context parameters, inner lr 1.0, 1 inner step, 25 tasks, Adam 1e-3."""

    inner_lr: float = 1.0
    context_dim: int = 5
    layer: int = 0


class AdaptationLayer(GradientMetaLearner):
    """Adaptation layer (CAVIA): a meta-learned network; each task adapts only a small context vector.

    Design: a context vector phi (``context_dim`` numbers) is reset to zero for every task and
    shifts the output of backbone module ``layer`` by ``W @ phi`` (for the first layer this is
    exactly CAVIA's concatenation of phi to the input). Inner loop: phi <- phi - beta * grad_phi
    L(theta, phi; support). Outer loop: Adam on theta (backbone and W) through the inner loop, second
    order. The initial phi stays zero, as in CAVIA (a learned one would duplicate the layer's bias).
    """

    Config = AdaptationLayerConfig

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop
        from bench.nn.modulation import ContextShifted

        network = ContextShifted(ctx.backbone(), self.config.context_dim, self.config.layer, ctx.generator)
        network.to(ctx.device)
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(network, slow, (x, fast["context"])),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
        )
        self.fast = {"context": network.initial_context()}
        self.slow = dict(network.named_parameters())
