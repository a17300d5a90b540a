"""learn2learn's MAML and Meta-SGD in their documented clone/adapt usage, registered as the learners
``l2l-maml`` and ``l2l-metasgd`` (entry point ``l2l``) so that every report can show the built-ins beside
the reference implementation; ``bench perf`` also times the built-ins against them.

They share the built-ins' hyper-parameter defaults (whose docstrings say where each comes from), their search
spaces and the suite's seeded backbone, so a run compares like with like. Without learn2learn they are listed as
unavailable (``requires``) and skipped by ``--learners all``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import typing
from abc import abstractmethod
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from bench_plugins.learners._gradient import adam_outer_loop, inner_loss_scale
from bench_plugins.learners.maml import MAML, FirstOrderMAML
from bench_plugins.learners.metasgd import MetaSGD

from bench import hookimpl
from bench.api import (
    Episode,
    Learner,
    MetaGradient,
    MetaTrainContext,
    Predictor,
    SearchRange,
    Setting,
    Support,
    TaskKind,
    TaskSuite,
    config_fields,
)

if TYPE_CHECKING:
    import torch


VECTORISATION = ("chunk_tasks", "compile")
"""The built-ins' options for how their vectorised meta-gradient is computed; learn2learn's usage has neither."""


def reference_config(builtin: type[Learner]) -> type:
    """The built-in's Config without the ``VECTORISATION`` fields: the same names, types, defaults and checks,
    as ``LearnToLearn<its name>`` (assign it to that name in this module, so that it pickles)."""
    config, hints = builtin.Config, typing.get_type_hints(builtin.Config)
    fields = [(field.name, hints[field.name],
               dataclasses.field(default=field.default, default_factory=field.default_factory))
              for field in dataclasses.fields(config) if field.name not in VECTORISATION]
    namespace = {"__module__": __name__,
                 "__doc__": f"The built-in {builtin.__name__}'s hyper-parameters that apply to learn2learn's usage."}
    if hasattr(config, "__post_init__"):
        namespace["__post_init__"] = config.__post_init__
    return dataclasses.make_dataclass(f"LearnToLearn{config.__name__}", fields, namespace=namespace)


LearnToLearnMAMLConfig = reference_config(MAML)
LearnToLearnMetaSGDConfig = reference_config(MetaSGD)


def import_learn2learn() -> ModuleType:
    """``import learn2learn``, without the notice that its dependency gym prints on stderr at every import."""
    with contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
    return learn2learn


class LearnToLearnLearner(Learner, MetaGradient):
    """A learn2learn algorithm wrapper: per task ``clone()``, ``adapt(loss)`` per inner step, the query loss;
    Adam on the meta-batch mean. Subclasses say which wrapper (``wrap``) and which built-in it mirrors."""

    Config: ClassVar[type]
    builtin: ClassVar[type[Learner]]
    """The built-in learner of the same algorithm, whose defaults this one shares."""
    requires = ("learn2learn",)
    in_all = False  # one task at a time, several times slower than the built-in it checks: run when named
    install_hint = "pip install 'metabench[l2l]' on Python < 3.11; on 3.11+, make setup builds it from source"
    implementation = "learn2learn"
    first_order: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        """Takes this class's Config or the built-in's (as ``bench perf`` hands it); keeps the fields that apply."""
        super().__init__(self.Config(**{name: getattr(config, name) for name in config_fields(self.Config)}))

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """The built-in's defaults for this setting (e.g. the paper's), where they apply."""
        fields = config_fields(cls.Config)
        return {key: value for key, value in cls.builtin.suite_defaults(suite, setting).items() if key in fields}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """The built-in's search space, where it applies."""
        fields = config_fields(cls.Config)
        return {key: value for key, value in cls.builtin.search_space(kind).items() if key in fields}

    @abstractmethod
    def wrap(self, model: "torch.nn.Module", ctx: MetaTrainContext) -> "torch.nn.Module":
        """The learn2learn wrapper (``MAML``, ``MetaSGD``) around the suite's backbone."""

    def build(self, ctx: MetaTrainContext) -> None:
        self.model = self.wrap(ctx.backbone(), ctx)
        self.loss = ctx.suite.loss
        self.support_scale = inner_loss_scale(self.config, ctx)  # the built-in's inner loss (``inner_loss``)

    def meta_parameters(self) -> list["torch.Tensor"]:
        return list(self.model.parameters())

    def meta_loss(self, batch: Episode) -> "torch.Tensor":
        """Mean query loss over the batch, one task at a time, as learn2learn's examples do."""
        import torch

        losses = []
        for task in range(batch.support_x.shape[0]):
            learner = self.model.clone()
            for _ in range(self.config.inner_steps):
                learner.adapt(self.support_scale * self.loss(learner(batch.support_x[task]), batch.support_y[task]))
            losses.append(self.loss(learner(batch.query_x[task]), batch.query_y[task]))
        return torch.stack(losses).mean()

    def accumulate_meta_gradient(self, batch: Episode) -> "torch.Tensor":
        """Back-propagate the meta-loss of ``batch`` into the meta-parameters' ``.grad``; return the loss."""
        loss = self.meta_loss(batch)
        loss.backward()
        return loss.detach()

    def meta_train(self, ctx: MetaTrainContext) -> None:
        self.build(ctx)
        # The built-ins' outer loop (fused Adam): the same update rule, so only the meta-gradients differ.
        adam_outer_loop(ctx, self.meta_parameters(), self.config, self.accumulate_meta_gradient)

    def state_dict(self) -> dict[str, Any]:
        """The wrapper's module (the meta-learned weights; Meta-SGD's rates too), by reference."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def adapted_parameter_count(self) -> int:
        """Every weight of the wrapped network (Meta-SGD's rates stay fixed at test time)."""
        return sum(weight.numel() for weight in self.model.module.parameters())

    def adapt(self, support: Support, steps: int) -> Iterator[Predictor]:
        """A clone adapted on the support set (first order: nothing back-propagates at test time)."""
        learner = self.model.clone()
        yield _snapshot(learner)
        for _ in range(steps):
            learner.adapt(self.support_scale * self.loss(learner(support.x), support.y), first_order=True)
            yield _snapshot(learner)


def _snapshot(learner: "torch.nn.Module") -> Predictor:
    """The learner's current weights as a predictor; ``adapt`` rebinds a clone's weights, never mutates them."""
    from torch.func import functional_call

    module = learner.module
    weights = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return lambda x: functional_call(module, weights, (x,))


class LearnToLearnMAML(LearnToLearnLearner):
    """learn2learn's MAML, the reference implementation of maml: learn2learn.algorithms.MAML, clone/adapt per task."""

    Config = LearnToLearnMAMLConfig
    builtin = MAML

    def wrap(self, model: "torch.nn.Module", ctx: MetaTrainContext) -> "torch.nn.Module":
        learn2learn = import_learn2learn()
        return learn2learn.algorithms.MAML(model, lr=self.config.inner_lr, first_order=self.first_order)


class LearnToLearnFirstOrderMAML(LearnToLearnMAML):
    """learn2learn's first-order MAML (``first_order=True``): ``bench perf``'s reference for fomaml; not registered."""

    first_order = True
    builtin = FirstOrderMAML


class LearnToLearnMetaSGD(LearnToLearnLearner):
    """learn2learn's Meta-SGD, the reference implementation of metasgd: learn2learn.algorithms.MetaSGD, clone/adapt.

    Its per-weight rates (``lrs``) start as the built-in metasgd's alpha: uniform in [``alpha_low``,
    ``alpha_high``], drawn from the seeded generator right after the backbone, so both start identical.
    """

    Config = LearnToLearnMetaSGDConfig
    builtin = MetaSGD

    def wrap(self, model: "torch.nn.Module", ctx: MetaTrainContext) -> "torch.nn.Module":
        import torch

        learn2learn = import_learn2learn()
        rates = [
            torch.nn.Parameter(torch.empty(weight.shape, dtype=weight.dtype)
                               .uniform_(self.config.alpha_low, self.config.alpha_high, generator=ctx.generator)
                               .to(weight.device))
            for weight in model.parameters()
        ]
        return learn2learn.algorithms.MetaSGD(model, lrs=torch.nn.ParameterList(rates))


@hookimpl
def register_learners(register):
    register("l2l-maml", LearnToLearnMAML)
    register("l2l-metasgd", LearnToLearnMetaSGD)
