"""The meta-training loop shared by the gradient-based meta-learners (MAML family, adaptation layer).

Subclasses build their model in ``build`` and say which parameters the inner loop adapts (*fast*)
and which stay fixed within a task (*slow*); the outer loop here is the same for all of them:
Adam on the mean query loss of a vectorised meta-batch, differentiating through the inner loop.
"""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from bench.api import (Episode, FloatRange, Learner, MetaGradient, MetaTrainContext, Predictor, SeedGroup,
                       SeedsApart, Support)

if TYPE_CHECKING:
    from pathlib import Path

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
    compile: Literal["auto", "true", "false"] = "auto"
    """``true``: compute the meta-gradient with a ``torch.compile``-d ``torch.func`` graph: a one-off compile (tens of
    seconds; needs a C++ compiler on a CPU), then much less per-step overhead; same gradient. ``auto`` (default):
    time the first steps eagerly, then compile when the rest of the budget would take at least
    ``COMPILE_PAYS_AFTER_S`` eagerly and a compiler is found; the cell's notes say which and why."""


@dataclasses.dataclass
class GradientConfig(OuterLoopConfig):
    """An outer loop around inner SGD steps at a fixed learning rate."""

    inner_lr: float = 0.01


COMPILE_PAYS_AFTER_S = 30.0
"""``compile=auto`` compiles when the steps left in the budget, at the measured eager speed, would take at least this
many seconds of meta-gradient. Measured on the 2-core CPU (README, "Fast by default"): the sinusoid MLP's compile costs
19.7 s with Inductor's cache cold and makes the meta-gradient 2.4x faster, so it pays back from ~34 s."""

COMPILE_PAYS_AFTER_WARM_S = 10.0
"""The same where this graph was compiled on this machine before (its kernels are in the metabench cache): the
compile then costs 5.4 s (measured, sinusoid MLP), which pays back from ~9 s."""

AUTO_TIMED_STEPS = 5
"""``compile=auto`` times this many eager steps, after a first untimed one, before it decides."""

CXX_COMPILERS = ("c++", "g++", "clang++")


def compiler_found(device: "torch.device") -> str | None:
    """What ``torch.compile`` needs to generate code on ``device``, where found: a C++ compiler on a CPU ($CXX first),
    Triton on a GPU; None when missing."""
    import importlib.util
    import os

    if device.type == "cuda":
        return "triton" if importlib.util.find_spec("triton") else None
    for name in filter(None, (os.environ.get("CXX"), *CXX_COMPILERS)):
        path = shutil.which(name)
        if path:
            return path
    return None


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


def adam_outer_loop_seeds(contexts: Sequence[MetaTrainContext], parameters: list["torch.Tensor"], outer_lr: float,
                          meta_batch: int, accumulate: Callable[[Episode], "torch.Tensor"]) -> None:
    """``adam_outer_loop`` for several seeds at once: ``parameters`` hold every seed's weights stacked along a leading
    seed dimension, each step takes the next batch of every seed's own stream (``contexts``, one per seed, in
    lockstep) and ``accumulate`` returns one meta-loss per seed. Each seed logs its loss and checkpoints its own
    slice of the weights and of Adam's state, in ``adam_outer_loop``'s format. Raises ``SeedsApart`` when the seeds'
    checkpoints are not at the same step."""
    import torch

    from bench.nn.seeds import seed_optimizer_state, seed_slice, stack_optimizer_states

    optimizer = torch.optim.Adam(parameters, lr=outer_lr, fused=True)
    saved = [ctx.restore() for ctx in contexts]
    if any(state is not None for state in saved):
        if any(state is None for state in saved):
            raise SeedsApart("only some of the seeds have a checkpoint")
        try:
            optimizer.load_state_dict(stack_optimizer_states([state["optimizer"] for state in saved]))
        except ValueError as error:
            raise SeedsApart(str(error)) from None
        with torch.no_grad():
            for index, parameter in enumerate(parameters):
                parameter.copy_(torch.stack([state["parameters"][index] for state in saved]))
    streams = [ctx.batches(meta_batch) for ctx in contexts]
    for batches in zip(*streams):
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate(Episode(*(torch.stack(field) for field in zip(*batches))))
        optimizer.step()
        for seed, ctx in enumerate(contexts):
            ctx.log(losses[seed])
            ctx.checkpoint(lambda seed=seed: {"parameters": seed_slice(parameters, seed),
                                              "optimizer": seed_optimizer_state(optimizer.state_dict(), seed)})
    for stream in streams[1:]:  # the first stream has ended: so must the others (the same budget)
        if next(stream, None) is not None:
            raise SeedsApart("the seeds' episode streams ended at different points")


def _clock(batch: Episode) -> float:
    """Seconds, once the device of ``batch`` has finished its queued work."""
    if batch.support_x.is_cuda:
        import torch

        torch.cuda.synchronize(batch.support_x.device)
    return time.perf_counter()


class MetaGradientStep:
    """Adds the meta-gradient of a batch of episodes to the ``.grad`` of the meta-learned weights among ``fast`` and
    ``slow`` and returns the meta-loss: eagerly or through a compiled graph, ``chunk_tasks`` tasks at a time (each
    chunk weighted by its share of the batch). With ``seeds``, every weight and batch field has a leading seed
    dimension and the meta-loss is one number per seed (each seed's gradient that of its own meta-loss)."""

    def __init__(self, loop: "InnerLoop", config: OuterLoopConfig, first_order: bool, fast: "Params", slow: "Params",
                 seeds: bool = False, steps: int = 0, note: Callable[[str], None] = lambda message: None) -> None:
        """``steps``: the meta-gradient steps the budget holds (what ``compile=auto`` weighs); ``note``: where to say
        how it runs (``MetaTrainContext.note``)."""
        self.loop, self.config, self.first_order, self.seeds = loop, config, first_order, seeds
        self.fast, self.slow = fast, slow
        self.steps, self.note = steps, note
        self.compiling: bool | None = {"true": True, "false": False, "auto": None}[str(config.compile).lower()]
        """Whether the meta-gradient goes through the compiled graph; None while ``auto`` still times eager steps."""
        self._eager_seconds: list[float] = []
        self._compiled: Callable | None = None
        self._marked = False

    def __call__(self, batch: Episode) -> "torch.Tensor":
        if self.compiling is not None:
            return self._accumulate(batch, self.compiling)
        start = _clock(batch)
        loss = self._accumulate(batch, compiled=False)
        self._eager_seconds.append(_clock(batch) - start)
        if len(self._eager_seconds) > AUTO_TIMED_STEPS:
            self._decide(batch)
        return loss

    def _decide(self, batch: Episode) -> None:
        """``compile=auto``: compile when the rest of the budget would take long enough eagerly to pay back the compile
        (``COMPILE_PAYS_AFTER_S``, or ``COMPILE_PAYS_AFTER_WARM_S`` when this graph was compiled here before)."""
        left = self.steps - len(self._eager_seconds)
        eager = statistics.median(self._eager_seconds[1:]) * left
        compiler = compiler_found(batch.support_x.device)
        warm = self._compiled_marker(batch).exists()
        threshold = COMPILE_PAYS_AFTER_WARM_S if warm else COMPILE_PAYS_AFTER_S
        self.compiling = eager >= threshold and compiler is not None
        why = (f"the {max(left, 0)} steps left would take ~{eager:.0f} s eagerly ({'>=' if eager >= threshold else '<'}"
               f" {threshold:.0f} s, when a {'cached' if warm else 'first'} compile pays back)")
        if compiler is None and eager >= threshold:
            why += f", but no {'Triton' if batch.support_x.is_cuda else 'C++ compiler'} was found to compile with"
        self.note(f"compile=auto: {'compiled' if self.compiling else 'eager'}: {why}")

    def _compiled_marker(self, batch: Episode) -> "Path":
        """A file in the metabench cache that says this graph (learner, inner loop, weight and batch shapes, torch
        version) has been compiled on this machine, so that Inductor's cache holds its kernels."""
        import hashlib

        import torch

        from bench.cache import cache_dir

        forward, loss = self.loop.forward, self.loop.loss
        signature = repr((forward.__module__, forward.__qualname__, loss.__module__, loss.__qualname__,
                          self.loop.lr is None, self.config.inner_steps,
                          self.config.chunk_tasks, self.first_order, self.seeds, torch.__version__, str(batch.support_x.device),
                          [(name, tuple(t.shape), str(t.dtype)) for part in (self.fast, self.slow)
                           for name, t in sorted(part.items())],
                          [(tuple(field.shape), str(field.dtype)) for field in batch]))
        return cache_dir() / "compiled" / hashlib.sha256(signature.encode()).hexdigest()[:32]

    def _accumulate(self, batch: Episode, compiled: bool) -> "torch.Tensor":
        task_dim = int(self.seeds)
        tasks = batch.support_x.shape[task_dim]
        chunk = self.config.chunk_tasks or tasks
        total = 0.0
        for start in range(0, tasks, chunk):
            part = Episode(*(field.narrow(task_dim, start, min(chunk, tasks - start)) for field in batch))
            share = part.support_x.shape[task_dim] / tasks
            loss = None
            if compiled and part.support_x.shape[task_dim] == chunk:
                loss = self._compiled_backward(part, share)
            if loss is None:  # eager: not compiled, a short last chunk (a new shape would cost a recompile), or the
                # compile failed
                loss = self._eager_loss(part) * share
                loss.sum().backward()
            total = total + loss.detach()
        return total

    def _eager_loss(self, batch: Episode) -> "torch.Tensor":
        meta_loss = self.loop.seeds_meta_loss if self.seeds else self.loop.meta_loss
        return meta_loss(self.fast, self.slow, batch, self.config.inner_steps, self.first_order)

    def _compiled_backward(self, batch: Episode, share: float) -> "torch.Tensor | None":
        """Add ``share`` x the meta-gradient to ``.grad`` through the compiled graph; return share x loss. None when
        the graph does not compile (no C++ compiler, an unsupported operation): a warning says so once, and the
        learner goes on eagerly, with the same gradient."""
        import torch

        from bench.cache import use_inductor_cache
        from bench.nn.functional import detached

        if self._compiled is None:
            def meta_loss(fast: "Params", slow: "Params", batch: Episode) -> "torch.Tensor":
                return self.loop.pure_meta_loss(fast, slow, batch, self.config.inner_steps, self.first_order)

            gradient = torch.func.grad_and_value(meta_loss, argnums=(0, 1))
            use_inductor_cache()
            self._compiled = torch.compile(torch.func.vmap(gradient) if self.seeds else gradient)
        try:
            # Detached inputs: the compiled graph is then a plain inference graph (nothing kept for a backward).
            (fast_grads, slow_grads), loss = self._compiled(detached(self.fast), detached(self.slow), batch)
        except Exception as error:  # torch.compile raises many types (BackendCompilerFailed, InductorError, ...)
            message = (f"compile failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''});"
                       " meta-training goes on eagerly, with the same gradient")
            warnings.warn(message, RuntimeWarning, stacklevel=4)
            self.note(message)
            self.compiling = False
            return None
        if not self._marked:
            self._marked = True
            marker = self._compiled_marker(batch)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        for params, grads in ((self.fast, fast_grads), (self.slow, slow_grads)):
            for name, tensor in params.items():
                if tensor.requires_grad:
                    step = grads[name] * share
                    tensor.grad = step if tensor.grad is None else tensor.grad + step
        return loss * share


class GradientMetaLearner(Learner, MetaGradient, SeedGroup):
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
        """Back-propagate the meta-loss of ``batch`` into the meta-parameters' ``.grad``; return the meta-loss."""
        if getattr(self, "_meta_gradient", None) is None:
            self._meta_gradient = MetaGradientStep(self.loop, self.config, self.first_order, self.fast, self.slow)
        return self._meta_gradient(batch)

    def meta_train(self, ctx: MetaTrainContext) -> None:
        self.build(ctx)
        self._meta_gradient = MetaGradientStep(self.loop, self.config, self.first_order, self.fast, self.slow,
                                               steps=-(-ctx.task_budget // self.config.meta_batch), note=ctx.note)
        adam_outer_loop(ctx, self.meta_parameters(), self.config.outer_lr, self.config.meta_batch,
                        self.accumulate_meta_gradient)

    @classmethod
    def meta_train_seeds(cls, learners: Sequence[Learner], contexts: Sequence[MetaTrainContext]) -> None:
        """The seeds' weights stacked along a leading seed dimension, one vectorised meta-batch of seeds x tasks
        per step, one Adam on the stacked weights (elementwise, so each seed's update is its own); each learner's
        ``fast`` and ``slow`` become views of its seed's slice."""
        members = [learner for learner in learners if isinstance(learner, GradientMetaLearner)]
        for learner, ctx in zip(members, contexts, strict=True):
            learner.build(ctx)
        from bench.nn.seeds import seed_views, stack_seeds

        fast, slow = (stack_seeds([getattr(learner, part) for learner in members]) for part in ("fast", "slow"))
        for seed, learner in enumerate(members):
            learner.fast, learner.slow = seed_views(fast, seed), seed_views(slow, seed)
        first = members[0]
        parameters = [tensor for tensor in (*fast.values(), *slow.values()) if tensor.requires_grad]
        step = MetaGradientStep(first.loop, first.config, cls.first_order, fast, slow, seeds=True,
                                steps=-(-contexts[0].task_budget // first.config.meta_batch),
                                note=lambda message: [ctx.note(message) for ctx in contexts])
        adam_outer_loop_seeds(contexts, parameters, first.config.outer_lr, first.config.meta_batch, step)

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
