"""The types plugins use: episodes, settings, the Learner and TaskSuite base classes.

This module imports no torch at start-up, so that listing plugins stays fast; tensors appear
only in type hints.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    import numpy
    import torch
    from torch import nn

SPLITS = ("train", "val", "test")


def episode_entropy(suite: str, split: str, setting: str, seed: int, index: int) -> tuple[int, int]:
    """The seed of one episode, a pure function of (suite, split, setting, seed, index).

    Its first word is the split's number, so the seeds of different splits are disjoint by
    construction; the second is a 128-bit hash of the rest.
    """
    key = f"{suite}|{setting}|{seed}|{index}".encode()
    return SPLITS.index(split), int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "little")


def episode_rng(suite: str, split: str, setting: str, seed: int, index: int) -> "numpy.random.Generator":
    """A random generator for one episode, seeded with its full 128-bit-plus entropy.

    (torch's CPU generator keeps only 32 bits of a seed, which would make episodes collide.)
    """
    import numpy

    return numpy.random.default_rng(list(episode_entropy(suite, split, setting, seed, index)))


class TaskKind(str, enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One few-shot configuration of a suite, e.g. K=10 regression or 5-way 1-shot."""

    name: str
    shots: int
    query: int
    ways: int | None = None


class Support(NamedTuple):
    """What a learner may see of a task: the labelled support set."""

    x: "torch.Tensor"
    y: "torch.Tensor"


class Episode(NamedTuple):
    """One task: a support set to adapt on and a query set to score on.

    For classification, labels are 0..ways-1 within the episode and ``classes[label]`` is that
    class's index in the split (what a pre-training baseline needs); for regression ``classes``
    is empty. For a batch of episodes every field has a leading batch dimension.
    """

    support_x: "torch.Tensor"
    support_y: "torch.Tensor"
    query_x: "torch.Tensor"
    query_y: "torch.Tensor"
    classes: "torch.Tensor"

    @property
    def support(self) -> Support:
        return Support(self.support_x, self.support_y)

    def to(self, device: "torch.device | str") -> "Episode":
        return Episode(*(tensor.to(device) for tensor in self))


Predictor = Callable[["torch.Tensor"], "torch.Tensor"]
"""Maps query inputs to predictions (regression values or class logits)."""


class PluginClass:
    """What learners and suites share: the optional modules they need to run."""

    requires: ClassVar[tuple[str, ...]] = ()
    """Modules this class imports when it runs (e.g. ``("learn2learn",)``). Without them it is listed as
    unavailable, with the reason, instead of failing the run."""
    install_hint: ClassVar[str] = ""
    """How to install what ``requires`` names, e.g. ``pip install 'metabench[l2l]'``."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this class cannot run in this environment, or None. Checks ``requires`` without importing it."""
        missing = [module for module in cls.requires if importlib.util.find_spec(module) is None]
        if not missing:
            return None
        hint = f" ({cls.install_hint})" if cls.install_hint else ""
        return f"needs {', '.join(missing)}, which is not installed{hint}"


class TaskSuite(PluginClass, ABC):
    """A family of few-shot tasks with disjoint meta-train / meta-val / meta-test splits.

    ``sample_episode`` must be a pure function of (split, setting, seed, index): the protocol
    relies on it to show every learner the same episodes. ``name`` must be the registered name.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    budgets: ClassVar[dict[str, dict[str, int]]] = {}
    """Per profile name, budget fields (``meta_train_tasks``, ``test_episodes``) where the suite differs from the defaults."""

    def __init__(self, data_dir: "Path | None" = None) -> None:
        self.data_dir = data_dir

    @abstractmethod
    def settings(self) -> list[Setting]:
        """The settings this suite offers, in the order reports list them."""

    @abstractmethod
    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        """Episode ``index`` of ``split`` (one of SPLITS), on the CPU."""

    @abstractmethod
    def backbone(self, setting: Setting) -> "nn.Module":
        """A freshly initialised standard network of the field for this setting."""

    @abstractmethod
    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        """The differentiable training loss (mean over the batch)."""

    @abstractmethod
    def metric(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        """The reported metric of one episode's predictions, as a 0-d tensor."""

    metric_name: ClassVar[str]
    lower_is_better: ClassVar[bool]

    def prepare(self) -> None:
        """Load or check the suite's data before a run; raise ``bench.errors.DataError`` with a clear message."""

    def num_classes(self, split: str) -> int:
        """How many classes ``split`` has (classification suites)."""
        raise NotImplementedError(f"suite '{self.name}' has no classes")

    @classmethod
    def download(cls, target: "Path") -> None:
        """Fetch and stage the suite's data under ``target`` (``bench data NAME --download DIR``)."""
        raise NotImplementedError(f"suite '{cls.name}' has no downloader")

    def sample_batch(self, split: str, setting: Setting, seed: int, indices: range) -> Episode:
        """Episodes ``indices`` stacked along a new first dimension.

        Override for speed; the result must equal stacking ``sample_episode`` calls.
        """
        import torch

        episodes = [self.sample_episode(split, setting, seed, index) for index in indices]
        return Episode(*(torch.stack(field) for field in zip(*episodes)))


class MetaTrainContext(ABC):
    """What the host hands a learner for meta-training."""

    suite: TaskSuite
    setting: Setting
    device: "torch.device"
    generator: "torch.Generator"
    task_budget: int

    @abstractmethod
    def batches(self, meta_batch: int) -> Iterator[Episode]:
        """Meta-training episodes in batches, on ``device``, until the task budget is spent."""

    @abstractmethod
    def backbone(self) -> "nn.Module":
        """The suite's standard backbone for this setting, initialised from ``generator``, on ``device``."""

    @abstractmethod
    def log(self, loss: "torch.Tensor") -> None:
        """Report the latest training loss; a non-finite loss fails the cell."""

    def restore(self) -> "dict[str, Any] | None":
        """The state last offered to ``checkpoint`` before this cell was interrupted, or None. Call it once,
        after building the model and before the first batch: ``batches`` then goes on from that point."""
        return None

    def checkpoint(self, state: "Callable[[], dict[str, Any]]") -> None:
        """Offer a checkpoint after a meta-training step (optional). When one is due (``--checkpoint-every``)
        the host calls ``state()`` (tensors, numbers, strings and lists / dicts of them) and saves it with the
        position in the episode stream and ``generator``'s state."""


class Learner(PluginClass, ABC):
    """A few-shot learner: meta-trains on one suite setting, then adapts to test tasks.

    Subclasses set a docstring whose first line describes them and a ``Config`` dataclass of
    typed hyper-parameters with defaults (overridable with ``--set NAME.KEY=VALUE``); the name is
    the one they are registered under.
    """

    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """Hyper-parameter defaults for one suite setting (e.g. the paper's), before ``--set`` overrides."""
        return {}

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        """Why this learner cannot run on ``suite`` (its cells are reported "n/a"), or None."""
        return None

    @abstractmethod
    def meta_train(self, ctx: MetaTrainContext) -> None:
        """Learn from the meta-training split only, within ``ctx.task_budget`` tasks."""

    @abstractmethod
    def adapt(self, support: Support, steps: int) -> Iterator[Predictor]:
        """Adapt to one task; yield a predictor after each of 0..steps adaptation steps."""

    max_adaptation_steps: ClassVar[int | None] = None
    """The most adaptation steps this learner takes at test time: None follows the protocol's steps;
    0 for a learner with nothing to adapt at test time (e.g. a metric learner such as protonet), whose
    curve is the single point at step 0. The host asks ``adapt`` for min(protocol's steps, this) steps."""

    @classmethod
    def reference(cls) -> "type | None":
        """Another implementation of the same algorithm (e.g. in learn2learn) that ``bench perf`` times
        beside this one and checks for the same meta-gradient; None when there is none."""
        return None

    in_all: ClassVar[bool] = True
    """Whether ``--learners all`` includes this learner. False for one that duplicates another, slower (e.g. a
    reference implementation such as ``l2l-maml``): it runs only when named."""

    batched: ClassVar[bool] = False
    """Whether ``adapt_batch`` is implemented; the host then adapts many test episodes at once."""

    def adapt_batch(self, supports: Support, steps: int) -> Iterator[Predictor]:
        """``adapt`` for a batch of tasks (leading task dimension on every tensor, in and out).

        Optional (set ``batched = True``); it must give the same numbers as ``adapt`` episode by episode.
        """
        raise NotImplementedError


def config_fields(config_class: type) -> dict[str, dataclasses.Field]:
    """The hyper-parameters of a learner's Config dataclass, by name."""
    return {field.name: field for field in dataclasses.fields(config_class)}
