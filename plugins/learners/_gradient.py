"""The meta-training loop shared by the gradient-based meta-learners (MAML family, adaptation layer).

Subclasses build their model in ``build`` and say which parameters the inner loop adapts (*fast*)
and which stay fixed within a task (*slow*); the outer loop here is the same for all of them:
Adam on the mean query loss of a vectorised meta-batch, differentiating through the inner loop (optionally with
the meta-gradient clamped and the learning rate decayed in steps, as some reference implementations do).

The outer loss is always the mean query loss: Adam's step is invariant to a constant factor on the loss (up to its
epsilon, 1e-8), so a reference's other scaling of it changes nothing but where a gradient clamp bites, which
``clip_grad`` states in units of the mean.
"""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from bench.api import (Episode, FloatRange, Learner, MetaGradient, MetaTrainContext, Predictor, SeedGroup,
                       SeedsApart, Support, TaskKind)

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
    inner_loss: Literal["mean", "class_sum"] = "mean"
    """The inner loop's loss on a classification support set: ``mean``, the suite's loss (the mean over the support
    examples); ``class_sum``, the sum over the N classes of each class's mean loss, N x the mean on the balanced
    support sets of N-way K-shot episodes (cbfinn/maml utils.xent: softmax cross-entropy / K per example, which
    ``tf.gradients`` sums). A reference's inner step size means what it meant only with the reference's loss.
    Regression: the suite's loss either way."""
    clip_grad: float = 0.0
    """Clamp every entry of the meta-gradient (of the mean query loss over the meta-batch) to
    [-clip_grad, clip_grad] before each Adam step; 0: no clamp."""
    outer_lr_decay: float = 1.0
    outer_lr_decay_every: int = 0
    """Multiply the outer learning rate by ``outer_lr_decay`` after every ``outer_lr_decay_every`` Adam steps
    (``torch.optim.lr_scheduler.StepLR``); 0: a constant rate."""

    def __post_init__(self) -> None:
        if self.clip_grad < 0 or self.outer_lr_decay_every < 0 or not 0 < self.outer_lr_decay <= 1:
            raise ValueError(f"need clip_grad >= 0, outer_lr_decay_every >= 0 and 0 < outer_lr_decay <= 1, got "
                             f"{self.clip_grad}, {self.outer_lr_decay_every} and {self.outer_lr_decay}")


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


def inner_loss_scale(config: OuterLoopConfig, ctx: MetaTrainContext) -> float:
    """What the inner loop multiplies the suite's (mean) support loss by, for ``config.inner_loss``: the number of
    classes for ``class_sum`` on a classification suite, else 1."""
    if config.inner_loss == "class_sum" and ctx.suite.kind is TaskKind.CLASSIFICATION:
        return float(ctx.setting.ways)
    return 1.0


def inner_loop_options(config: OuterLoopConfig, ctx: MetaTrainContext) -> dict[str, Any]:
    """The ``InnerLoop`` fields the cell's setting decides: on fixed ways its ``support_scale`` (``inner_loss_scale``);
    on a ``variable`` setting (Meta-Dataset's episodes) ``episode_classes``, and for ``class_sum`` the sum over each
    episode's own classes of their mean losses (``class_balanced``)."""
    if ctx.setting.variable is None:
        return {"support_scale": inner_loss_scale(config, ctx)}
    return {"episode_classes": True, "class_balanced": config.inner_loss == "class_sum"}


OuterConfig = TypeVar("OuterConfig", bound=OuterLoopConfig)


def as_run_on(config: OuterConfig, ctx: MetaTrainContext) -> OuterConfig:
    """``config`` as its outer loop runs on the cell's setting. On a ``variable`` setting the episodes differ in shape:
    they come one a step (``MetaTrainContext.batches``), so the meta-batch is 1 and a step decay of the rate comes
    after as many episodes as configured; and they are not compiled (each new shape would compile again). A note
    says what changed."""
    if ctx.setting.variable is None:
        return config
    changes: dict[str, Any] = {"compile": "false"}
    if config.meta_batch > 1:
        changes.update(meta_batch=1, outer_lr_decay_every=config.outer_lr_decay_every * config.meta_batch)
        ctx.note(f"meta-batch {config.meta_batch} -> 1 on '{ctx.setting.name}' (its episodes vary in ways and shots "
                 "and cannot be stacked; one episode a step, as Meta-Dataset trains)"
                 + (f"; the outer rate decays every {changes['outer_lr_decay_every']} steps, the episodes configured"
                    if config.outer_lr_decay_every else ""))
    if str(config.compile).lower() != "false":
        ctx.note(f"compile={config.compile} -> false on '{ctx.setting.name}': every episode has its own shapes")
    return dataclasses.replace(config, **changes)


class OuterOptimizer:
    """Fused Adam at ``config.outer_lr`` on ``parameters``, with ``config``'s clamp of the meta-gradient
    (``clip_grad``) and step decay of the learning rate (``outer_lr_decay`` every ``outer_lr_decay_every`` steps)."""

    def __init__(self, parameters: list["torch.Tensor"], config: OuterLoopConfig) -> None:
        import torch

        self.parameters, self.clip = parameters, config.clip_grad
        self.adam = torch.optim.Adam(parameters, lr=config.outer_lr, fused=True)
        every = config.outer_lr_decay_every
        self.schedule = torch.optim.lr_scheduler.StepLR(self.adam, step_size=every or 1,
                                                        gamma=config.outer_lr_decay if every else 1.0)

    @property
    def steps_taken(self) -> int:
        """Adam steps taken so far, a checkpoint's included (the step schedule's counter, saved with the state)."""
        return self.schedule.last_epoch

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next step (a learner's own schedule; with ``outer_lr_decay`` 1 the step
        schedule keeps it)."""
        for group in self.adam.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.clip:
            for parameter in self.parameters:
                if parameter.grad is not None:
                    parameter.grad.clamp_(-self.clip, self.clip)
        self.adam.step()
        self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {"adam": self.adam.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adam.load_state_dict(state["adam"])
        self.schedule.load_state_dict(state["schedule"])


def adam_outer_loop(ctx: MetaTrainContext, parameters: list["torch.Tensor"], config: OuterLoopConfig,
                    accumulate: Callable[[Episode], "torch.Tensor"],
                    schedule: "Callable[[float, OuterOptimizer], None] | None" = None) -> None:
    """``OuterOptimizer`` on ``parameters``, one step per batch of ``config.meta_batch`` episodes;
    ``accumulate`` fills their ``.grad`` with the batch's meta-gradient and returns its meta-loss. ``schedule``, where
    given, is called before each batch's meta-gradient with the fraction of ``ctx.task_budget`` done before that batch
    (counted from the optimiser's steps, so it goes on from a checkpoint) and the optimiser (e.g. to set its rate)."""
    optimizer = OuterOptimizer(parameters, config)
    _restore(ctx, parameters, optimizer)
    for batch in ctx.batches(config.meta_batch):
        if schedule is not None:
            schedule(min(optimizer.steps_taken * config.meta_batch / ctx.task_budget, 1.0), optimizer)
        optimizer.zero_grad()
        loss = accumulate(batch)
        optimizer.step()
        _log_and_checkpoint(ctx, loss, parameters, optimizer)


def _restore(ctx: MetaTrainContext, parameters: list["torch.Tensor"], optimizer: OuterOptimizer) -> None:
    """Load the context's checkpoint, if it has one, into ``parameters`` and ``optimizer``: training goes on from
    there, as if never interrupted."""
    import torch

    saved = ctx.restore()
    if saved:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved["parameters"], strict=True):
                parameter.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])


def _log_and_checkpoint(ctx: MetaTrainContext, loss: "torch.Tensor", parameters: list["torch.Tensor"],
                        optimizer: OuterOptimizer) -> None:
    ctx.log(loss)
    ctx.checkpoint(lambda: {"parameters": [parameter.detach() for parameter in parameters],
                            "optimizer": optimizer.state_dict()})


def adam_outer_loop_seeds(contexts: Sequence[MetaTrainContext], parameters: Sequence[list["torch.Tensor"]],
                          configs: Sequence[OuterLoopConfig], step: "MetaGradientStep") -> None:
    """``adam_outer_loop`` for several members at once (seeds, or tuning trials): member i has its own context,
    weights ``parameters[i]`` and ``OuterOptimizer`` of ``configs[i]`` (their ``meta_batch`` equal); each step takes
    the next batch of every member's own stream, in lockstep, and ``step`` computes all their meta-gradients as one
    vectorised batch. A member whose stream ends (its budget spent, or stopped at a validation point) leaves the
    group, and so does one whose context refuses its non-finite loss (the others are independent of it); each member
    logs its own loss and checkpoints and restores exactly as ``adam_outer_loop`` does. Raises ``SeedsApart`` when the
    members' batches differ in shape."""
    import torch

    optimizers = [OuterOptimizer(weights, config) for weights, config in zip(parameters, configs, strict=True)]
    for ctx, weights, optimizer in zip(contexts, parameters, optimizers, strict=True):
        _restore(ctx, weights, optimizer)  # members may be at different points
    streams = [ctx.batches(configs[0].meta_batch) for ctx in contexts]
    active = list(range(len(contexts)))
    while True:
        batches = {member: next(streams[member], None) for member in active}
        active = [member for member in active if batches[member] is not None]
        if not active:
            return
        if len({tuple(batches[member].support_x.shape) for member in active}) > 1:
            raise SeedsApart("the members' batches differ in shape")
        step.keep(active)
        for member in active:
            optimizers[member].zero_grad()
        losses = step(Episode(*(torch.stack(field) for field in zip(*(batches[member] for member in active)))))
        for row, member in enumerate(active):
            optimizers[member].step()
            try:
                _log_and_checkpoint(contexts[member], losses[row], parameters[member], optimizers[member])
            except Exception:
                if bool(torch.isfinite(losses[row])):
                    raise
                # This member diverged and its context said so: it leaves the group (its context keeps the
                # non-finite loss, so the host fails it alone) and the others go on.
                active = [other for other in active if other != member]


def _clock(batch: Episode) -> float:
    """Seconds, once the device of ``batch`` has finished its queued work."""
    if batch.support_x.is_cuda:
        import torch

        torch.cuda.synchronize(batch.support_x.device)
    return time.perf_counter()


class MetaGradientStep:
    """Adds the meta-gradient of a batch of episodes to the ``.grad`` of the meta-learned weights among ``fast`` and
    ``slow`` and returns the meta-loss: eagerly or through a compiled graph, ``chunk_tasks`` tasks at a time (each
    chunk weighted by its share of the batch).

    A group (``members``, one ``(fast, slow)`` pair of weight dicts per seed or trial) is one model with a leading
    member dimension: the members' weights are stacked at every step (differentiably, so each member's own tensors
    get its gradient), the batch has the same leading dimension, and the meta-loss is one number per member."""

    def __init__(self, loop: "InnerLoop", config: OuterLoopConfig, first_order: bool, fast: "Params | None" = None,
                 slow: "Params | None" = None, members: Sequence[tuple["Params", "Params"]] = (), steps: int = 0,
                 note: Callable[[str], None] = lambda message: None) -> None:
        """``steps``: the meta-gradient steps the budget holds (what ``compile=auto`` weighs); ``note``: where to say
        how it runs (``MetaTrainContext.note``)."""
        self.loop, self.config, self.first_order = loop, config, first_order
        self.grouped = bool(members)
        self.members = list(members)
        self.active = list(range(len(self.members)))
        self.fast, self.slow = fast or {}, slow or {}
        self.steps, self.note = steps, note
        self.compiling: bool | None = {"true": True, "false": False, "auto": None}[str(config.compile).lower()]
        """Whether the meta-gradient goes through the compiled graph; None while ``auto`` still times eager steps."""
        self._eager_seconds: list[float] = []
        self._compiled: Callable | None = None
        self._marked = False

    def keep(self, members: list[int]) -> None:
        """Compute only these members (indices into ``members``) from now on, in this order."""
        self.active = members

    def _weights(self) -> tuple["Params", "Params"]:
        """The fast and slow weights the step differentiates: its own, or the active members' stacked."""
        import torch

        if not self.grouped:
            return self.fast, self.slow
        fast, slow = zip(*(self.members[member] for member in self.active))
        stacked = [{name: torch.stack([part[name] for part in parts]) for name in parts[0]} for parts in (fast, slow)]
        return stacked[0], stacked[1]

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
                          self.loop.lr is None, self.loop.support_scale, self.config.inner_steps,
                          self.config.chunk_tasks, self.first_order, self.grouped, torch.__version__,
                          str(batch.support_x.device),
                          [(name, tuple(t.shape), str(t.dtype)) for part in self._weights()
                           for name, t in sorted(part.items())],
                          [(tuple(field.shape), str(field.dtype)) for field in batch]))
        return cache_dir() / "compiled" / hashlib.sha256(signature.encode()).hexdigest()[:32]

    def _accumulate(self, batch: Episode, compiled: bool) -> "torch.Tensor":
        task_dim = int(self.grouped)
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
        meta_loss = self.loop.seeds_meta_loss if self.grouped else self.loop.meta_loss
        return meta_loss(*self._weights(), batch, self.config.inner_steps, self.first_order)

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
            self._compiled = torch.compile(torch.func.vmap(gradient) if self.grouped else gradient)
        try:
            # Detached inputs: the compiled graph is then a plain inference graph (nothing kept for a backward).
            fast, slow = self._weights()
            (fast_grads, slow_grads), loss = self._compiled(detached(fast), detached(slow), batch)
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
        owners = ([(self.fast, self.slow, None)] if not self.grouped
                  else [(*self.members[member], row) for row, member in enumerate(self.active)])
        for fast, slow, row in owners:
            for params, grads in ((fast, fast_grads), (slow, slow_grads)):
                for name, tensor in params.items():
                    if tensor.requires_grad:
                        step = (grads[name] if row is None else grads[name][row]) * share
                        tensor.grad = step if tensor.grad is None else tensor.grad + step
        return loss * share


class GradientMetaLearner(Learner, MetaGradient, SeedGroup):
    first_order: ClassVar[bool] = False
    loop: "InnerLoop"
    fast: "Params"
    slow: "Params"

    @abstractmethod
    def build(self, ctx: MetaTrainContext) -> None:
        """Create the model and set ``loop`` (its ``support_scale``: ``inner_loss_scale``), ``fast`` (initial adapted
        weights) and ``slow``."""

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

    variable_episodes = True  # episode_classes and class_balanced (inner_loop_options), one episode a step (as_run_on)

    def meta_train(self, ctx: MetaTrainContext) -> None:
        self.build(ctx)
        config = as_run_on(self.config, ctx)
        self._meta_gradient = MetaGradientStep(self.loop, config, self.first_order, self.fast, self.slow,
                                               steps=-(-ctx.task_budget // config.meta_batch), note=ctx.note)
        adam_outer_loop(ctx, self.meta_parameters(), config, self.accumulate_meta_gradient)

    together_fields: ClassVar[tuple[str, ...]] = ("inner_lr", "outer_lr")
    """Config fields in which learners meta-trained together may differ (tuning trials as one population): the outer
    learning rate (each member has its own Adam) and the inner one (a per-member rate); the others must be equal."""

    @classmethod
    def meta_train_seeds(cls, learners: Sequence[Learner], contexts: Sequence[MetaTrainContext]) -> None:
        """Every member's own weights stacked along a leading member dimension at each step, one vectorised
        meta-batch of members x tasks, each member's own fused Adam. The members may differ in
        ``together_fields`` (a population of tuning trials); ``SeedsApart`` when they differ in anything else."""
        import torch

        from bench.nn.functional import LR_PREFIX

        members = [learner for learner in learners if isinstance(learner, GradientMetaLearner)]
        if len(members) < len(learners):
            raise SeedsApart("not all learners are gradient learners")
        if contexts[0].setting.variable is not None:
            raise SeedsApart(f"the episodes of '{contexts[0].setting.name}' vary in shape: they cannot be stacked")
        first = members[0]
        differ = {field.name for learner in members for field in dataclasses.fields(first.config)
                  if getattr(learner.config, field.name) != getattr(first.config, field.name)}
        apart = sorted(differ - set(cls.together_fields))
        if apart:
            raise SeedsApart(f"the learners differ in {', '.join(apart)}, which cannot be vectorised")
        for learner, ctx in zip(members, contexts, strict=True):
            learner.build(ctx)
        loop, weights = first.loop, [(learner.fast, learner.slow) for learner in members]
        if "inner_lr" in differ and loop.lr is not None:  # each member's rate as a constant per weight
            loop = dataclasses.replace(loop, lr=None)
            weights = [(fast, {**slow, **{LR_PREFIX + name: torch.full_like(tensor, learner.config.inner_lr).detach()
                                          for name, tensor in fast.items()}})
                       for learner, (fast, slow) in zip(members, weights)]
        step = MetaGradientStep(loop, first.config, cls.first_order, members=weights,
                                steps=-(-contexts[0].task_budget // first.config.meta_batch),
                                note=lambda message: [ctx.note(message) for ctx in contexts])
        adam_outer_loop_seeds(contexts, [learner.meta_parameters() for learner in members],
                              [learner.config for learner in members], step)

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

    def adapted_parameter_count(self) -> int:
        """The inner loop's weights (``fast``)."""
        return sum(tensor.numel() for tensor in self.fast.values())

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        return self.loop.trajectory(self.fast, self.slow, support, steps, batched=batched)
