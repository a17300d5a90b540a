"""What the embedding-and-head learners share (protonet, r2d2, metaoptnet, matchingnet): the suite's backbone without
its final linear head as the embedding, and a classifier built per episode from the embedded support set (prototypes,
a ridge-regression or SVM solution, attention over the support set) with no gradient step at test time; embedding and
head parameters meta-trained end to end on the query loss, one optimiser step per batch of episodes.

Heads work on embeddings with a leading episode dimension, ``[T, N, D]``: one episode is a batch of one, and a batch of
episodes (meta-training, ``adapt(batched=True)``) is one call. The embedding runs under ``vmap`` over episodes, so
that batch norm normalises each episode's support and query sets with their own statistics.
"""
from __future__ import annotations

import contextlib
import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from bench.api import Learner, MetaTrainContext, Predictor, Setting, Support, TaskKind, TaskSuite, episode_ways

if TYPE_CHECKING:
    import torch
    from torch import nn

Classifier = Callable[["torch.Tensor"], "torch.Tensor"]
"""An episode's classifier: query embeddings ``[T, Q, D]`` to logits ``[T, Q, ways]``."""


def embedding_network(model: "nn.Module", learner: str, suite: str) -> "nn.Sequential":
    """``model`` without its final linear head; a TypeError naming the suite when it is not an ``nn.Sequential``
    ending in one."""
    from torch import nn

    if not (isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)):
        raise TypeError(f"{learner} needs a backbone that is an nn.Sequential ending in a linear head; "
                        f"suite '{suite}' gives {type(model).__name__}")
    return model[:-1]


@contextlib.contextmanager
def seeded(ctx: MetaTrainContext) -> Iterator[None]:
    """Torch's global generators seeded from ``ctx.generator`` inside the block (restored after): modules built in it
    (e.g. an LSTM's default initialisation) and random masks drawn in it are a function of the cell's seed."""
    import torch

    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))
        yield


@contextlib.contextmanager
def regularised(network: "nn.Module", ctx: MetaTrainContext) -> Iterator[None]:
    """``network``'s training-time regularisers (``bench.nn.backbones.Switched``: the dropout and DropBlock of
    ``resnet12-dropblock``) on inside the block, their masks drawn from generators ``seeded`` from the cell's; a
    network without them is left alone (and ``ctx.generator`` untouched)."""
    from bench.nn.backbones import regularise

    if not regularise(network, False):
        yield
        return
    with seeded(ctx):
        regularise(network, True)
        try:
            yield
        finally:
            regularise(network, False)


def listed(words: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = list(words)
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


class EpisodeSchedule:
    """Config mixin: the meta-training episodes and the learning rate of an embedding-and-head learner.

    The dataclass using it declares ``lr``, ``train_ways`` and ``train_query`` (0: the setting's ways, the suite's
    meta-training queries), and may declare ``train_shots`` (0: the setting's shots) and ``lr_halve_every`` (halve
    ``lr`` every this many meta-training episodes; 0: constant).
    """

    lr: float
    train_ways: int
    train_query: int
    train_shots: int = 0
    lr_halve_every: int = 0

    def __post_init__(self) -> None:
        counts = {name: getattr(self, name) for name in ("train_ways", "train_shots", "train_query")
                  if name in {field.name for field in dataclasses.fields(self)}}  # type: ignore[arg-type]
        if min(counts.values()) < 0:
            raise ValueError(f"{listed(counts)} must be 0 (the setting's) or positive, "
                             f"got {listed(map(str, counts.values()))}")

    def learning_rate(self, episodes: int) -> float:
        """The learning rate after ``episodes`` meta-training episodes."""
        return self.lr * 0.5 ** (episodes // self.lr_halve_every) if self.lr_halve_every else self.lr

    def training_setting(self, setting: Setting) -> Setting:
        """The setting of the meta-training episodes for a test ``setting``: ``setting`` itself when the training ways,
        shots and queries are its own (then its episode stream is the one every learner of the cell trains on), and
        always for a ``variable`` setting, whose episodes draw their own (a ValueError if any is set)."""
        if setting.variable is not None:
            given = [name for name in ("train_ways", "train_shots", "train_query") if getattr(self, name, 0)]
            if given:
                raise ValueError(f"{listed(given)} must be 0 on setting '{setting.name}': its episodes draw their own "
                                 "ways, shots and queries (Meta-Dataset's sampler)")
            return setting
        ways, shots = self.train_ways or setting.ways, self.train_shots or setting.shots
        query = self.train_query or setting.query_for("train")
        if (ways, shots, query) == (setting.ways, setting.shots, setting.query_for("train")):
            return setting
        return dataclasses.replace(setting, name=f"{ways}-way {shots}-shot, {query} queries", ways=ways, shots=shots,
                                   train_query=query)


class HeadLearner(Learner):
    """An embedding (the backbone without its head) and a classifier fitted per episode on the embedded support set.

    Subclasses say what the classifier is (``classifier``), which parameters it meta-learns (``build_head``), and,
    where their paper differs, the optimiser and the query loss. Nothing adapts by gradient at test time: the curve is
    the single point at step 0.
    """

    label: ClassVar[str]
    """The registered name, as messages say it."""
    method: ClassVar[str]
    """What the learner does, for the message on a regression suite (e.g. "classifies by nearest class prototype")."""
    fits_linear_head: ClassVar[bool] = False
    """Whether the classifier is a linear head fitted to each episode's support set (ridge regression, an SVM): then
    its ways x width weights are what adapts; else (prototypes, attention) nothing does."""
    max_adaptation_steps: ClassVar[int | None] = 0
    batched = True
    variable_episodes = True  # the classifier covers each episode's own ways (``episode_ways``)
    variable: bool = False
    """Whether the cell's setting is ``variable`` (set by ``meta_train``): each episode then has its own ways."""

    @classmethod
    def unsupported_reason(cls, suite: TaskSuite) -> str | None:
        if suite.kind is TaskKind.CLASSIFICATION:
            return None
        return f"{cls.label} {cls.method}; '{suite.name}' is a {suite.kind.value} suite"

    def build_head(self, ctx: MetaTrainContext, width: int) -> "nn.Module":
        """The classifier's meta-learned parameters, as a module, for embeddings of ``width`` features (on the CPU;
        moved to ``ctx.device``). Default: none."""
        from torch import nn

        return nn.Module()

    @abstractmethod
    def classifier(self, support: "torch.Tensor", labels: "torch.Tensor", ways: int, training: bool) -> Classifier:
        """The classifier of episodes with support embeddings ``[T, N, D]`` and labels ``[T, N]`` in 0..ways-1;
        ``training``: called in meta-training (else adapting)."""

    def query_loss(self, ctx: MetaTrainContext, logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """The meta-training loss of query logits ``[T, Q, ways]``: the suite's, over every query of the batch."""
        return ctx.suite.loss(logits.flatten(0, 1), labels.flatten())

    def optimizer(self, parameters: list["torch.Tensor"]) -> "torch.optim.Optimizer":
        """Adam at the config's ``lr``."""
        import torch

        return torch.optim.Adam(parameters, lr=self.config.lr, fused=True)

    def meta_train(self, ctx: MetaTrainContext) -> None:
        model = ctx.backbone()
        self.embedding, self.ways = embedding_network(model, self.label, ctx.suite.name), ctx.setting.ways
        self.variable = ctx.setting.variable is not None
        self.width = model[-1].in_features
        self.head = self.build_head(ctx, self.width).to(ctx.device)
        training = self.config.training_setting(ctx.setting)
        if training is not ctx.setting:
            ctx.note(self._training_note(training, ctx.setting))
        optimizer = self.optimizer([*self.embedding.parameters(), *self.head.parameters()])
        episodes = 0
        for batch in ctx.batches(self.config.meta_batch, setting=training):
            ways = episode_ways(batch.support_y) if self.variable else training.ways
            with regularised(self.embedding, ctx):
                predict = self._predictor(batch.support, ways, batched=True, training=True)
                loss = self.query_loss(ctx, predict(batch.query_x), batch.query_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.log(loss.detach())
            episodes += batch.support_x.shape[0]
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate(episodes)
        self.embedding.requires_grad_(False)
        self.head.requires_grad_(False)

    def _training_note(self, training: Setting, setting: Setting) -> str:
        shots = f" {training.shots}-shot" if training.shots != setting.shots else ""
        tested = f" {setting.shots}-shot" if shots else ""
        return (f"{self.label} meta-trains on {training.ways}-way{shots} episodes with {training.train_query} queries "
                f"per class (tests at {setting.ways}-way{tested})")

    def adapted_parameter_count(self) -> int:
        """A fitted linear head's ways x width weights (``fits_linear_head``; a variable setting's: its most ways);
        else 0: the classifier is a summary of the support set (prototypes, attention), nothing is fitted."""
        return self.ways * self.width if self.fits_linear_head else 0

    def state_dict(self) -> dict[str, Any]:
        """The embedding and the head's parameters, by reference."""
        return {"embedding": self.embedding.state_dict(), "head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.embedding.load_state_dict(state["embedding"])
        self.head.load_state_dict(state["head"])

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        """One predictor (``max_adaptation_steps = 0``): the support set's classifier (batch norm per episode) over
        the episode's ways (a variable setting's: its own, from the support labels)."""
        yield self._predictor(support, episode_ways(support.y) if self.variable else self.ways, batched)

    def _predictor(self, support: Support, ways: int, batched: bool, training: bool = False) -> Predictor:
        """Logits of ``support``'s classifier for query inputs (with the leading episode dimension when ``batched``)."""
        from torch.func import vmap

        if batched:  # each episode its own masks where the embedding draws any in training
            embed = vmap(self.embedding, randomness="different" if training else "error")
        else:
            def embed(x: "torch.Tensor") -> "torch.Tensor":
                return self.embedding(x).unsqueeze(0)
        labels = support.y if batched else support.y.unsqueeze(0)
        classify = self.classifier(embed(support.x), labels, ways, training)
        return lambda x: classify(embed(x)) if batched else classify(embed(x)).squeeze(0)
