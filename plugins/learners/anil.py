"""ANIL (Raghu et al. 2019, "Rapid learning or feature reuse?", ICLR 2020): MAML whose inner loop adapts only the head."""
from __future__ import annotations

from bench_plugins.learners._gradient import inner_loop_options
from bench_plugins.learners.maml import MAML, zero_head

from bench.api import MetaTrainContext


class ANIL(MAML):
    """ANIL (almost no inner loop): as maml, but only the head (the backbone's last layer) adapts per task.

    The body's weights are meta-learned in the outer loop only, second order through the head's inner
    SGD steps; at test time the body is frozen and the head takes SGD steps on the support loss.

    Defaults, per suite kind, and search space: maml's (``MAMLConfig`` says where each comes from), because
    Raghu et al. train ANIL with MAML's hyper-parameters (from memory of the paper, not re-checked; it reports no
    sinusoid experiment, so the regression values are MAML's sinusoid ones, not ANIL's). That includes MAML's
    inner loss (``inner_loss=class_sum``, the sum over classes of each class's mean cross-entropy), the one MAML's
    step sizes were chosen for; the authors' code (github.com/aniruddhraghu/rapid-learning-or-feature-reuse)
    could not be read here. learn2learn's ANIL example (examples/vision/anil_fc100.py) takes a mean cross-entropy
    with its own step, 0.1, on FC100: ``--set anil.inner_loss=mean`` with that ``inner_lr``.
    """

    @classmethod
    def reference(cls) -> type | None:
        """None: learn2learn's MAML adapts every weight, so it is not the same algorithm."""
        return None

    def build(self, ctx: MetaTrainContext) -> None:
        from torch.func import functional_call

        from bench.nn.functional import InnerLoop

        model = ctx.backbone()
        if self.config.zero_head:
            zero_head(model)
        head = f"{len(model) - 1}."  # backbones are nn.Sequential stacks whose last module is the head
        weights = dict(model.named_parameters())
        self.loop = InnerLoop(
            forward=lambda fast, slow, x: functional_call(model, {**slow, **fast}, (x,)),
            loss=ctx.suite.loss,
            lr=self.config.inner_lr,
            **inner_loop_options(self.config, ctx),
        )
        self.fast = {name: weight for name, weight in weights.items() if name.startswith(head)}
        self.slow = {name: weight for name, weight in weights.items() if not name.startswith(head)}
