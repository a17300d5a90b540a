"""Matching networks (Vinyals et al. 2016, "Matching networks for one shot learning", NeurIPS): attention over the
embedded support set, optionally with full-context embeddings."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from bench_plugins.learners._metric import Classifier, EpisodeSchedule, HeadLearner, seeded

from bench.api import FloatRange, IntRange, MetaTrainContext, SearchRange, Setting, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass
class MatchingNetConfig(EpisodeSchedule):
    """Where each default comes from (classification only: matchingnet declines regression suites): Vinyals et al.
    2016 (cited from memory of the paper, not re-checked here) gives no optimiser, learning rate or number of
    attention steps; two public re-implementations were read: github.com/wyharveychen/CloserLookFewShot
    (methods/matchingnet.py, train.py) and github.com/oscarknagg/few-shot (few_shot/models.py,
    experiments/matching_nets.py).

    ``lr`` 1e-3 with Adam, constant (``lr_halve_every`` 0), one episode a step (``meta_batch`` 1): both
    re-implementations (torch's Adam default rate in CloserLookFewShot; ``Adam(lr=1e-3)`` in oscarknagg/few-shot, whose
    plateau schedule needs meta-validation inside the learner and is not used). Training episodes: the setting's ways
    and shots and the suite's meta-training queries (the paper trains on episodes of the test's N-way K-shot form).
    ``fce``: full-context embeddings, which the paper used on mini-ImageNet and not on Omniglot; off by default,
    on for mini-ImageNet (``suite_defaults``). ``fce_steps`` 0: as many attention steps K as support examples
    (CloserLookFewShot's ``K = G.size(0)``; oscarknagg/few-shot's default is 2). Not tuned.
    """

    lr: float = 1e-3
    lr_halve_every: int = 0
    """Halve the learning rate every this many meta-training episodes; 0 keeps it constant."""
    meta_batch: int = 1
    fce: bool = False
    """Full-context embeddings: a bidirectional LSTM over the support set and an attention LSTM for each query."""
    fce_steps: int = 0
    """Attention steps K of the query's LSTM; 0: the number of support examples."""
    train_ways: int = 0
    """Classes per meta-training episode; 0: the setting's."""
    train_query: int = 0
    """Query examples per class of a meta-training episode; 0: the suite's for the setting."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fce_steps < 0:
            raise ValueError(f"fce_steps must be 0 (the support set's size) or positive, got {self.fce_steps}")


PAPER_DEFAULTS = {"miniimagenet": {"fce": True}}
"""The paper's full-context embeddings: on mini-ImageNet (and its language task), not on Omniglot."""


def attention_log_probabilities(query: "torch.Tensor", support: "torch.Tensor", labels: "torch.Tensor",
                                ways: int) -> "torch.Tensor":
    """log P(y | x, S) ``[..., Q, ways]``: the attention-weighted sum of the support's one-hot labels, the attention a
    softmax over the support set of the cosine similarity of each query embedding ``[..., Q, D]`` to each support
    embedding ``[..., N, D]`` (labels ``[..., N]``). The log of a distribution: its softmax is itself, so it is a
    classifier's logits."""
    from torch.nn import functional as F

    similarity = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(-1, -2)
    return (similarity.softmax(dim=-1) @ F.one_hot(labels, ways).to(query.dtype)).log()


def full_context(width: int) -> "nn.Module":
    """The full-context embeddings' LSTMs for embeddings of ``width`` features (torch's default initialisation)."""
    from torch import nn

    module = nn.Module()
    module.support = nn.LSTM(width, width, batch_first=True, bidirectional=True)
    module.query = nn.LSTMCell(2 * width, width)
    return module


def support_context(lstm: "nn.LSTM", support: "torch.Tensor") -> "torch.Tensor":
    """g(x_i, S) = h_i(forward) + h_i(backward) + g'(x_i): a bidirectional LSTM over the support embeddings
    ``[T, N, D]`` in the episode's order, with a skip connection (the paper's appendix A)."""
    states, _ = lstm(support)
    forward, backward = states.chunk(2, dim=-1)
    return support + forward + backward


def query_context(cell: "nn.LSTMCell", query: "torch.Tensor", support: "torch.Tensor", steps: int) -> "torch.Tensor":
    """f(x, S) = h_K: K steps of an LSTM over each query embedding f'(x) ``[T, Q, D]`` with attention over the
    contextual support embeddings g ``[T, N, D]`` (appendix A): r = sum_i softmax_i(h^T g_i) g_i;
    h^, c = LSTM([f'(x), r], (h, c)); h = h^ + f'(x); from h = f'(x), c = 0. The paper writes the LSTM's state as
    the concatenation [h, r]; as in CloserLookFewShot, the read-out r joins f'(x) as the cell's input instead."""
    import torch

    episodes, queries, width = query.shape
    hidden, memory = query, torch.zeros_like(query)
    for _ in range(steps):
        readout = (hidden @ support.transpose(-1, -2)).softmax(dim=-1) @ support
        hidden, memory = cell(torch.cat([query, readout], dim=-1).reshape(-1, 2 * width),
                              (hidden.reshape(-1, width), memory.reshape(-1, width)))
        hidden, memory = hidden.view(episodes, queries, width) + query, memory.view(episodes, queries, width)
    return hidden


class MatchingNet(HeadLearner):
    """Matching networks: a query's class distribution is the cosine attention over the support set applied to its labels.

    Per episode (Vinyals et al. 2016): P(y | x, S) = sum_i a(x, x_i) y_i with a the softmax over the
    support set of the cosine similarity of the embeddings (no temperature, as the paper; CloserLookFewShot scales it by
    100 after a ReLU); the logits are log P, and the loss the suite's cross-entropy, -log P(y | x, S). With ``fce``,
    the support embeddings g(x_i, S) come from a bidirectional LSTM over the support set and the query embeddings
    f(x, S) from K steps of an attention LSTM (appendix A; ``support_context``, ``query_context``), meta-learned with
    the embedding. Nothing adapts at test time: the curve is the single point at step 0.

    The embedding is the suite's backbone without its final linear head (the paper's is also a 64-filter Conv-4 on
    Omniglot; on mini-ImageNet the suite's has 32 filters, 800 features). The LSTMs are initialised as torch does,
    from the cell's seed.
    """

    Config = MatchingNetConfig
    label = "matchingnet"
    method = "classifies by attention over the support set's labels"

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        return dict(PAPER_DEFAULTS.get(suite.name, {}))

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """Classification: ``lr``, a decade either side of the re-implementations' 1e-3, and ``lr_halve_every``, a
        quarter to four times 2,000 episodes: oscarknagg/few-shot halves its rate after 20 epochs of 100 episodes
        without improvement (the paper reports neither a rate nor a range). Regression: nothing (declined)."""
        if kind is not TaskKind.CLASSIFICATION:
            return {}
        return {"lr": FloatRange(1e-4, 1e-2, log=True), "lr_halve_every": IntRange(500, 8000, log=True)}

    def build_head(self, ctx: MetaTrainContext, width: int) -> "nn.Module":
        """With ``fce``, the LSTMs (initialised from the cell's seed); else nothing."""
        from torch import nn

        if not self.config.fce:
            return nn.Module()
        with seeded(ctx):
            return full_context(width)

    def classifier(self, support: "torch.Tensor", labels: "torch.Tensor", ways: int, training: bool) -> Classifier:
        """log P(y | x, S), with the full-context embeddings when ``fce``."""
        if not self.config.fce:
            return lambda query: attention_log_probabilities(query, support, labels, ways)
        context = support_context(self.head.support, support)
        steps = self.config.fce_steps or support.shape[-2]

        def classify(query: "torch.Tensor") -> "torch.Tensor":
            return attention_log_probabilities(query_context(self.head.query, query, context, steps), context,
                                               labels, ways)

        return classify
