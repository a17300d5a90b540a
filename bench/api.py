"""The types plugins use: episodes, settings, the Learner, TaskSuite and Executor base classes, and the
MetaGradient protocol that ``bench perf`` checks learners against their reference with.

This module imports no torch at start-up, so that listing plugins stays fast; tensors appear
only in type hints.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

    import numpy
    import torch
    from torch import nn

SPLITS = ("train", "val", "test")
Item = TypeVar("Item")
Result = TypeVar("Result")


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


def episode_rngs(suite: str, split: str, setting: str, seed: int, indices: range) -> "Iterator[numpy.random.Generator]":
    """``episode_rng`` of each episode in ``indices``, the same streams, several times faster (for a suite that
    samples a batch of small episodes in ``sample_batch``). One generator is re-positioned for each episode: draw
    from it before asking for the next."""
    from bench.seeding import generators

    return generators([episode_entropy(suite, split, setting, seed, index) for index in indices])


class TaskKind(str, enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


@dataclasses.dataclass(frozen=True)
class FloatRange:
    """A real hyper-parameter searched between ``low`` and ``high`` (on a log scale when ``log``)."""

    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer hyper-parameter searched from ``low`` to ``high`` inclusive (on a log scale when ``log``)."""

    low: int
    high: int
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    """A hyper-parameter searched among ``options`` (numbers, strings or booleans)."""

    options: tuple[Any, ...]


SearchRange = FloatRange | IntRange | Choice
"""One dimension of a learner's search space (``Learner.search_space``)."""


VARY = "vary"
"""What ``--shots`` says to select the settings whose episodes vary in ways and shots (``Setting.variable``)."""


@dataclasses.dataclass(frozen=True)
class VariableEpisodes:
    """Meta-Dataset's episode sampler (Triantafillou et al. 2020, section 3.2; google-research/meta-dataset
    meta_dataset/data/sampling.py, defaults from learn/gin/setups/data_config_common.gin): every episode draws its own
    ways, queries per class and class-imbalanced support shots.

    ways N ~ Uniform{min_ways..min(max_ways, classes of the split)}; queries per class q = min(max_query,
    floor(smallest chosen class / 2)); support size S = min(max_support, sum over the chosen classes of
    floor(beta * min(max_contribution, |c| - q)) + 1), beta ~ U[0, 1); shares R_c ∝ exp(alpha_c) |c| with
    alpha_c ~ U[min_log_weight, max_log_weight]; shots k_c = min(floor(R_c (S - N)) + 1, |c| - q).
    """

    min_ways: int = 5
    """EpisodeDescriptionConfig.min_ways."""
    max_ways: int = 50
    """EpisodeDescriptionConfig.max_ways_upper_bound."""
    max_query: int = 10
    """EpisodeDescriptionConfig.max_num_query."""
    max_support: int = 500
    """EpisodeDescriptionConfig.max_support_set_size."""
    max_contribution: int = 100
    """EpisodeDescriptionConfig.max_support_size_contrib_per_class."""
    min_log_weight: float = math.log(0.5)
    """EpisodeDescriptionConfig.min_log_weight (the log-weights alpha_c scale each class's share of the support)."""
    max_log_weight: float = math.log(2)
    """EpisodeDescriptionConfig.max_log_weight."""

    def ways(self, rng: "numpy.random.Generator", classes: int) -> int:
        """sampling.py's ``sample_num_ways_uniformly``: an episode's ways among ``classes`` available classes."""
        return int(rng.integers(self.min_ways, min(self.max_ways, classes) + 1))

    def shots(self, rng: "numpy.random.Generator", sizes: "numpy.ndarray") -> "tuple[numpy.ndarray, int]":
        """Support shots per class and queries per class for chosen classes of ``sizes`` images each
        (sampling.py's ``compute_num_query``, ``sample_support_set_size``, ``sample_num_support_per_class``)."""
        import numpy

        query = min(self.max_query, int(sizes.min()) // 2)
        remaining = sizes - query
        beta = rng.uniform()
        support = min(int(numpy.floor(beta * numpy.minimum(self.max_contribution, remaining) + 1).sum()),
                      self.max_support)
        weights = sizes * numpy.exp(rng.uniform(self.min_log_weight, self.max_log_weight, size=sizes.shape))
        desired = numpy.floor(weights / weights.sum() * (support - len(sizes))).astype(numpy.int64) + 1
        return numpy.minimum(desired, remaining), query


@dataclasses.dataclass(frozen=True)
class Setting:
    """One few-shot configuration of a suite, e.g. K=10 regression or 5-way 1-shot.

    ``shots``, ``query`` and ``train_query`` count examples per class for classification, per task for regression.
    A setting with ``variable`` set (Meta-Dataset's sampler) draws each episode's ways, shots and queries: then
    ``ways`` is the most classes an episode can have (labels are 0..n-1 < ways: a fixed head of ``ways`` outputs fits
    every episode, the unused logits simply lose), ``shots`` the most support examples of one class and ``query`` the
    most queries per class; its episodes differ in shape and cannot be stacked (``TaskSuite.sample_batch``).
    """

    name: str
    shots: int
    query: int
    """Query points of a test episode."""
    ways: int | None = None
    train_query: int | None = None
    """Query points of a meta-train or meta-validation episode; None: ``query``."""
    variable: VariableEpisodes | None = None
    """Meta-Dataset's variable ways and shots; None: every episode has ``ways`` x (``shots`` + queries) examples."""

    def query_for(self, split: str) -> int:
        """Query points of an episode of ``split`` (one of SPLITS): what ``sample_episode`` draws."""
        return self.query if split == "test" or self.train_query is None else self.train_query


def episode_ways(labels: "torch.Tensor") -> int:
    """The classes of an episode of a ``variable`` setting, from its support ``labels`` (0..n-1, any leading
    dimensions): n (this reads the labels: a device sync)."""
    return int(labels.max()) + 1


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
    """What learners, suites and executors share: the optional modules they need to run."""

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
    test_only: ClassVar[bool] = False
    """Whether the suite has only a test split (e.g. a cross-domain target): it runs as ``bench run --test-suites
    NAME``, never as a meta-training suite. Set ``in_all = False`` too, to keep it out of ``--suites all``."""
    budgets: ClassVar[dict[str, dict[str, int]]] = {}
    """Per profile name, budget fields (``meta_train_tasks``, ``test_episodes``) where the suite differs from the defaults
    (``budget`` reads it; override ``budget`` where a setting needs its own)."""

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """The budget fields of ``profile`` where this suite differs from the profile's defaults, for one setting
        (e.g. the ``paper`` profile with each published setting's own budget). Default: ``budgets[profile]``."""
        return dict(cls.budgets.get(profile, {}))

    def learner_defaults(self, learner: str, setting: Setting) -> dict[str, Any]:
        """Hyper-parameters this suite suggests to the learner registered as ``learner`` (any plugin's, by name) on
        one setting, e.g. a smaller step size for targets of a larger scale: applied after the learner's own
        ``suite_defaults`` and before ``bench tune``'s values and ``--set``; a key the learner's ``Config`` does not
        have is refused, naming the suite. Default: {}."""
        return {}

    def __init__(self, data_dir: "Path | None" = None) -> None:
        self.data_dir = data_dir

    @abstractmethod
    def settings(self) -> list[Setting]:
        """The settings this suite offers, in the order reports list them."""

    @abstractmethod
    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        """Episode ``index`` of ``split`` (one of SPLITS), on the CPU."""

    backbone_names: ClassVar[tuple[str, ...]] = ()
    """The networks ``backbone`` can build, by name, the default first (``bench run --backbone NAME`` chooses one);
    empty: the suite offers one standard network and no choice."""
    backbone_name: str | None = None
    """The network this instance's ``backbone`` builds: one of ``backbone_names``, None for the default. The host
    sets it from ``--backbone`` after checking it is offered."""

    def chosen_backbone(self) -> str | None:
        """The name of the network ``backbone`` builds: ``backbone_name``, else the first of ``backbone_names``
        (None when the suite offers no choice)."""
        return self.backbone_name or (self.backbone_names[0] if self.backbone_names else None)

    @abstractmethod
    def backbone(self, setting: Setting) -> "nn.Module":
        """A freshly initialised network of the field for this setting: the one ``chosen_backbone`` names."""

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

    @classmethod
    def data_instructions(cls) -> str | None:
        """Where the suite's data set comes from and how to stage it for ``--data-dir``: text (lines allowed) that
        ``bench data NAME`` prints, and ``--download`` prints where the suite has no downloader. Default: None (the
        suite says nothing, e.g. it generates its tasks)."""
        return None

    def sample_batch(self, split: str, setting: Setting, seed: int, indices: range) -> Episode:
        """Episodes ``indices`` stacked along a new first dimension.

        Override for speed; the result must equal stacking ``sample_episode`` calls. A ``variable`` setting's
        episodes differ in shape: a batch of more than one is a ValueError.
        """
        import torch

        if setting.variable is not None and len(indices) > 1:
            raise ValueError(f"setting '{setting.name}' of suite '{self.name}' draws episodes of varying ways and "
                             f"shots, which cannot be stacked: sample them one at a time ({len(indices)} asked)")
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
    def batches(self, meta_batch: int, *, setting: Setting | None = None) -> Iterator[Episode]:
        """Meta-training episodes in batches, on ``device``, until the task budget is spent. ``setting``: episodes of
        another setting of the same suite (e.g. more ways, as prototypical networks train; it need not be one the
        suite lists) instead of the cell's; the stream is drawn as the cell's, episode i the suite's pure function of
        (train split, that setting, the cell's seed, i), and each episode counts one task of the budget. Episodes of a
        ``variable`` setting come one a batch whatever ``meta_batch`` (they cannot be stacked; Meta-Dataset trains on
        one a step), and the host notes it."""

    @abstractmethod
    def backbone(self) -> "nn.Module":
        """The suite's standard backbone for this setting, initialised from ``generator``, on ``device``."""

    @abstractmethod
    def log(self, loss: "torch.Tensor") -> None:
        """Report the latest training loss; a non-finite loss fails the cell."""

    def note(self, message: str) -> None:
        """Say, in one line, how the learner chose to run (e.g. compiled or eager, and why): ``bench run`` prints it
        with the cell and keeps it in the cell's metadata (``notes``)."""

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
    def paper_budget(cls, suite: type[TaskSuite], setting: Setting) -> dict[str, int]:
        """Budget fields (``meta_train_tasks``) of this learner's paper on one suite setting, where they differ from
        the suite's ``paper`` budget (``TaskSuite.budget``); used by the ``paper`` profile only, so that every other
        profile gives every learner the same budget. Default: {} (the suite's)."""
        return {}

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        """Why this learner cannot run on ``suite`` (its cells are reported "n/a"), or None."""
        return None

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """The hyper-parameters ``bench tune`` searches on suites of ``kind``, by ``Config`` field name, each with its
        range; every learner of a study gets the same number of trials and tasks per trial. {} (the default): nothing
        to tune, the learner runs with its defaults. Must not import torch."""
        return {}

    @abstractmethod
    def meta_train(self, ctx: MetaTrainContext) -> None:
        """Learn from the meta-training split only, within ``ctx.task_budget`` tasks.

        The host scores meta-validation episodes (through ``adapt``) when the learner asks ``ctx.batches`` for the
        batch after a validation point, and once after ``meta_train`` returns: by then the learner must have
        finished its update on every batch it received."""

    def state_dict(self) -> "dict[str, Any] | None":
        """A reference to everything ``adapt`` uses (meta-learned weights, learned rates, ...): tensors, numbers,
        strings and lists / dicts of them; or None (the default) when the learner cannot hand its state over.

        Model selection (``bench run --select best-val``) copies it at the best meta-validation point and gives
        the copy back through ``load_state_dict`` before the test; a learner returning None is scored at its last
        state, and the report says so. Called only once ``meta_train`` has begun."""
        return None

    def load_state_dict(self, state: "dict[str, Any]") -> None:
        """Make ``adapt`` use ``state``, a copy of what ``state_dict`` returned earlier in this process (its tensors
        on the same device)."""
        raise NotImplementedError(f"{type(self).__name__} does not load states (its state_dict() returns None)")

    @abstractmethod
    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        """Adapt to one task; yield a predictor after each of 0..steps adaptation steps.

        ``batched=True`` (passed only to a learner that sets ``batched = True``): ``support`` holds many tasks,
        every tensor with a leading task dimension, as do the predictors' inputs and outputs; the numbers must
        be those of adapting to each task alone. A learner that does not batch may omit the keyword.
        """

    max_adaptation_steps: ClassVar[int | None] = None
    """The most adaptation steps this learner takes at test time: None follows the protocol's steps;
    0 for a learner with nothing to adapt at test time (e.g. a metric learner such as protonet), whose
    curve is the single point at step 0. The default ``adaptation_steps`` is min(protocol's steps, this)."""

    def adapted_parameter_count(self) -> int | None:
        """How many numbers adapt to each test task, once meta-trained: every weight (MAML), a context vector (CAVIA),
        the head (ANIL), none (ProtoNet: 0). The cost table reports it. Default: None (not stated)."""
        return None

    def adaptation_steps(self, setting: Setting, steps: int) -> int:
        """How many steps ``adapt`` takes on a test task of ``setting`` when the protocol's are ``steps`` (``--steps``):
        by default ``steps``, capped by ``max_adaptation_steps``. A learner whose own protocol fixes the number (e.g.
        Chen et al.'s fine-tuning: 100 epochs of batch-4 steps) returns it, more or fewer; its curve is then scored
        after each of steps 0..min(steps, its own) and at 20, 50, 100, 200, 500, ... up to its last step
        (``bench.protocol.curve_steps``)."""
        cap = self.max_adaptation_steps
        return steps if cap is None else min(steps, cap)

    @classmethod
    def reference(cls) -> "type | None":
        """Another implementation of the same algorithm (e.g. in learn2learn), a Learner whose constructor takes
        this learner's config, that ``bench perf`` times beside this one; None when there is none. The meta-gradients
        are checked to be the same when both implement ``MetaGradient``."""
        return None

    implementation: ClassVar[str | None] = None
    """Whose implementation of the algorithm this is, as ``bench perf`` labels its rows (e.g. ``"learn2learn"``
    for a wrapper of that library); None: the distribution that registered the learner (a reference that
    declares none: its qualified class name)."""

    variable_episodes: ClassVar[bool] = False
    """Whether the learner handles a ``variable`` setting (Meta-Dataset's episodes: each its own ways, class-imbalanced
    shots and queries; meta-training batches of one episode; labels 0..n-1 with n at most ``Setting.ways``). The
    host declines the others on such a setting (``declined``), before any training."""

    in_all: ClassVar[bool] = True
    """Whether ``--learners all`` includes this learner. False for one that duplicates another, slower (e.g. a
    reference implementation such as ``l2l-maml``): it runs only when named."""

    batched: ClassVar[bool] = False
    """Whether ``adapt`` accepts ``batched=True``; the host then adapts many test episodes at once."""

    batched_on_cpu: ClassVar[bool] = False
    """Whether batching also pays on a CPU for image suites (``batched`` learners only). By default the host batches
    there for regression only: per-episode convolution weights under ``vmap`` become grouped convolutions, slower on a
    CPU than one episode at a time. True for a learner whose batched path adapts no convolution weights (e.g. one that
    trains a head on features computed once)."""


def declined(learner: type[Learner], suite: TaskSuite, setting: Setting) -> str | None:
    """Why ``learner`` cannot run on ``suite``'s ``setting`` (its cells are reported "n/a"), or None: its
    ``unsupported_reason``, or a ``variable`` setting it does not handle (``Learner.variable_episodes``)."""
    reason = learner.unsupported_reason(suite)
    if reason or setting.variable is None or learner.variable_episodes:
        return reason
    return (f"{learner.__name__} does not handle episodes of varying ways and shots (setting '{setting.name}': "
            "Meta-Dataset's sampler); run it on a fixed setting")


class MetaGradient(ABC):
    """A learner whose meta-gradient can be computed on its own, so that ``bench perf`` can check it against
    the one of its ``reference()`` (mixed into a Learner: ``class MyMAML(Learner, MetaGradient)``).

    When a learner and its reference both implement it, ``bench perf`` builds each from the same seeded
    backbone in float64, accumulates the meta-gradient of one identical batch, and reports the largest
    difference relative to the reference's largest entry (above 1e-5 the command fails).
    """

    @abstractmethod
    def build(self, ctx: MetaTrainContext) -> None:
        """Create the model from ``ctx.backbone()`` as ``meta_train`` starts, without training it."""

    @abstractmethod
    def meta_parameters(self) -> "list[torch.Tensor]":
        """The meta-learned tensors, in the same order as every other implementation of the algorithm lists
        them (the gradients are compared entry by entry)."""

    @abstractmethod
    def accumulate_meta_gradient(self, batch: Episode) -> "torch.Tensor":
        """Add the meta-gradient of ``batch`` (a batch of episodes) to the ``.grad`` of ``meta_parameters()``,
        without an optimiser step; return the meta-loss."""


class SeedsApart(Exception):
    """Raised by ``SeedGroup.meta_train_seeds`` when these learners cannot meta-train together (e.g. their configs
    differ in the number of inner steps): the host then meta-trains them one by one, and their cells say why."""


class SeedGroup(ABC):
    """A learner that can meta-train several seeds of one cell configuration together, as one vectorised model
    (mixed into a Learner: ``class MyMAML(Learner, SeedGroup)``). ``bench run`` then trains up to
    ``--seeds-together`` seeds of each (suite, setting, learner) at once; each seed keeps its own cell, numbers,
    meta-validation, checkpoints and test."""

    @classmethod
    @abstractmethod
    def meta_train_seeds(cls, learners: "Sequence[Learner]", contexts: "Sequence[MetaTrainContext]") -> None:
        """Meta-train ``learners[i]`` on ``contexts[i]`` (one seed each: its own backbone generator, episode stream,
        meta-validation and checkpoint) for all i at once, leaving each learner as its own ``meta_train`` would
        have, to float rounding.

        Take the seeds' batches in lockstep (ask every context for its next batch before updating any seed),
        ``log`` each seed's loss to its own context, and offer each context its own seed's state in the format
        ``meta_train`` checkpoints, so that a group resumes as a group and a seed alone resumes from it. Raise
        ``SeedsApart`` when the seeds cannot train together."""


def trains_seeds_together(learner_class: type) -> bool:
    """Whether ``learner_class`` meta-trains seeds together: a ``SeedGroup`` whose ``meta_train_seeds`` is defined
    no higher in its class hierarchy than its ``meta_train`` (a subclass that overrides ``meta_train`` only, e.g. to
    wrap it, would be bypassed by the inherited ``meta_train_seeds``: its seeds train one by one)."""
    if not (isinstance(learner_class, type) and issubclass(learner_class, SeedGroup)):
        return False
    order = learner_class.__mro__

    def owner(method: str) -> int:
        return next(index for index, klass in enumerate(order) if method in vars(klass))

    return owner("meta_train_seeds") <= owner("meta_train")


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    """How the user asked cells to be spread (``bench run --workers``, ``--ray-address``)."""

    workers: int = 1
    """Parallel calls (worker processes, or Ray tasks at a time)."""
    address: str | None = None
    """A cluster to connect to (Ray: ``--ray-address``); None starts a local one where that applies."""


class Executor(PluginClass, ABC):
    """Runs the cells of a run: in this process, in worker processes, on a cluster.

    The host hands ``map`` a work function and the items to apply it to (the cells still to run); both pickle,
    so they can travel to other processes and machines, and the work function returns failures as results
    rather than raising. The host writes each result as it arrives, so an executor never writes into the run
    folder. Results must not depend on the executor: a cell is a pure function of its configuration and seed.
    The first line of a subclass's docstring is what ``bench plugins`` shows.
    """

    shows_progress: ClassVar[bool] = False
    """Whether the work can draw progress bars (only where it runs in this process)."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    @abstractmethod
    def map(self, work: Callable[[Item], Result], items: Sequence[Item], *, gpus: int = 0) -> Iterator[Result]:
        """Yield ``work(item)`` for every item as each call finishes, in any order (``concurrent.futures``'
        ``map``, in order of completion). ``gpus``: how many GPUs each call needs, for executors that reserve
        resources per call (Ray). Stopping the iteration early (an error, Ctrl-C) must cancel the calls still
        queued or running: see ``close``."""

    def close(self) -> None:
        """Stop every call still running and release the workers; called however the run ends."""


def config_fields(config_class: type) -> dict[str, dataclasses.Field]:
    """The hyper-parameters of a learner's Config dataclass, by name."""
    return {field.name: field for field in dataclasses.fields(config_class)}
