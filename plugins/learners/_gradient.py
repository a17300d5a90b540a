"""The meta-training loop shared by the gradient-based meta-learners (MAML family, adaptation layer).

Subclasses build their model in ``build`` and say which parameters the inner loop adapts (*fast*)
and which stay fixed within a task (*slow*); the outer loop here is the same for all of them:
Adam on the mean query loss of a vectorised meta-batch, differentiating through the inner loop.
"""
from __future__ import annotations

import dataclasses
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar

from bench.api import Episode, FloatRange, Learner, MetaGradient, MetaTrainContext, Predictor, Support

if TYPE_CHECKING:
    import torch

    from bench.nn.functional import InnerLoop, Params


OUTER_LR_RANGE = FloatRange(1e-4, 1e-2, log=True)
"""The outer Adam step ``bench tune`` searches: a decade either side of the 1e-3 that MAML, Meta-SGD, CAVIA and ANIL
all use (none of them reports a range)."""


@dataclasses.dataclass
class OuterLoopConfig:
    """What every gradient-based meta-learner has: the inner steps of meta-training and the outer loop."""

    inner_steps: int = 1
    meta_batch: int = 25
    outer_lr: float = 1e-3
    chunk_tasks: int = 0
    """Vectorise at most this many tasks at a time (0: the whole meta-batch); less memory, same gradient."""
    compile: bool = False
    """Compute the meta-gradient with a ``torch.compile``-d ``torch.func`` graph: a one-off compile
    (tens of seconds; needs a C++ compiler on CPU), then much less per-step overhead. Same gradient."""


@dataclasses.dataclass
class GradientConfig(OuterLoopConfig):
    """An outer loop around inner SGD steps at a fixed learning rate."""

    inner_lr: float = 0.01


def adam_outer_loop(ctx: MetaTrainContext, parameters: list["torch.Tensor"], outer_lr: float, meta_batch: int,
                    accumulate: Callable[[Episode], "torch.Tensor"]) -> None:
    """Fused Adam at ``outer_lr`` on ``parameters``, one step per batch of ``meta_batch`` episodes;
    ``accumulate`` fills their ``.grad`` with the batch's meta-gradient and returns its meta-loss."""
    import torch

    optimizer = torch.optim.Adam(parameters, lr=outer_lr, fused=True)
    saved = ctx.restore()
    if saved:  # a checkpoint of this cell: go on from there, as if never interrupted
        with torch.no_grad():
            for parameter, value in zip(parameters, saved["parameters"], strict=True):
                parameter.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
    for batch in ctx.batches(meta_batch):
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate(batch)
        optimizer.step()
        ctx.log(loss)
        ctx.checkpoint(lambda: {"parameters": [parameter.detach() for parameter in parameters],
                                "optimizer": optimizer.state_dict()})


class GradientMetaLearner(Learner, MetaGradient):
    first_order: ClassVar[bool] = False
    loop: "InnerLoop"
    fast: "Params"
    slow: "Params"

    @abstractmethod
    def build(self, ctx: MetaTrainContext) -> None:
        """Create the model and set ``loop``, ``fast`` (initial adapted weights) and ``slow``."""

    def meta_parameters(self) -> list["torch.Tensor"]:
        return [tensor for tensor in (*self.fast.values(), *self.slow.values()) if tensor.requires_grad]

    def meta_loss(self, batch: Episode) -> "torch.Tensor":
        """Mean query loss of a batch of episodes after the inner loop; its gradient is the meta-gradient."""
        return self.loop.meta_loss(self.fast, self.slow, batch, self.config.inner_steps, self.first_order)

    def accumulate_meta_gradient(self, batch: Episode) -> "torch.Tensor":
        """Back-propagate the meta-loss of ``batch`` into the meta-parameters' ``.grad``, ``chunk_tasks``
        tasks at a time (each chunk weighted by its share of the batch); return the meta-loss."""
        tasks = batch.support_x.shape[0]
        chunk = self.config.chunk_tasks or tasks
        total = 0.0
        for start in range(0, tasks, chunk):
            part = Episode(*(field[start : start + chunk] for field in batch))
            share = part.support_x.shape[0] / tasks
            loss = None
            if self.config.compile and part.support_x.shape[0] == chunk:
                loss = self._compiled_backward(part, share)
            if loss is None:  # eager: not compiled, a short last chunk (a new shape would cost a recompile), or the
                # compile failed
                loss = self.meta_loss(part) * share
                loss.backward()
            total = total + loss.detach()
        return total

    def _compiled_backward(self, batch: Episode, share: float) -> "torch.Tensor | None":
        """Add ``share`` x the meta-gradient to ``.grad`` through the compiled graph; return share x loss. None when
        the graph does not compile (no C++ compiler, an unsupported operation): a warning says so once, and the
        learner goes on eagerly, with the same gradient."""
        import torch

        from bench.cache import use_inductor_cache
        from bench.nn.functional import detached

        if not hasattr(self, "_compiled_meta_gradient"):
            def meta_loss(fast: "Params", slow: "Params", batch: Episode) -> "torch.Tensor":
                return self.loop.pure_meta_loss(fast, slow, batch, self.config.inner_steps, self.first_order)

            use_inductor_cache()
            self._compiled_meta_gradient = torch.compile(torch.func.grad_and_value(meta_loss, argnums=(0, 1)))
        if self._compiled_meta_gradient is None:
            return None
        try:
            # Detached inputs: the compiled graph is then a plain inference graph (nothing kept for a backward).
            (fast_grads, slow_grads), loss = self._compiled_meta_gradient(detached(self.fast), detached(self.slow),
                                                                          batch)
        except Exception as error:  # torch.compile raises many types (BackendCompilerFailed, InductorError, ...)
            warnings.warn(f"{type(self).__name__}: compile=true failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); meta-training goes on eagerly, with "
                          "the same gradient", RuntimeWarning, stacklevel=2)
            self._compiled_meta_gradient = None
            return None
        for params, grads in ((self.fast, fast_grads), (self.slow, slow_grads)):
            for name, tensor in params.items():
                if tensor.requires_grad:
                    step = grads[name] * share
                    tensor.grad = step if tensor.grad is None else tensor.grad + step
        return loss * share

    def meta_train(self, ctx: MetaTrainContext) -> None:
        self.build(ctx)
        adam_outer_loop(ctx, self.meta_parameters(), self.config.outer_lr, self.config.meta_batch,
                        self.accumulate_meta_gradient)

    def state_dict(self) -> dict[str, "Params"]:
        """The initial adapted weights and the fixed ones, by reference (Adam updates them in place)."""
        return {"fast": self.fast, "slow": self.slow}

    def load_state_dict(self, state: dict[str, "Params"]) -> None:
        import torch

        with torch.no_grad():
            for params, saved in ((self.fast, state["fast"]), (self.slow, state["slow"])):
                for name, tensor in params.items():
                    tensor.copy_(saved[name])

    batched = True

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        return self.loop.trajectory(self.fast, self.slow, support, steps, batched=batched)
