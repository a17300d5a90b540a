"""The classifier heads of the fine-tuning baseline (Chen et al. 2019, github.com/wyharveychen/CloserLookFewShot) as
functions of their parameters, and their training on frozen features: torch's SGD update and shuffled mini-batches.

A head's parameters may carry a leading episode dimension (many episodes' heads trained at once): the logits of
features ``[..., examples, width]`` are ``[..., examples, classes]``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

Params = dict[str, torch.Tensor]
FEATURE_EPS = 1e-5
"""backbone.py distLinear: ``x.div(x_norm + 0.00001)``."""


def cosine_scale(classes: int) -> float:
    """backbone.py distLinear's fixed scale: 2 for at most 200 output classes, 10 above ("in omniglot, a larger scale
    factor is required to handle >1000 output classes")."""
    return 2.0 if classes <= 200 else 10.0


def linear_logits(head: Params, features: torch.Tensor) -> torch.Tensor:
    """An affine head: ``features @ weight.T + bias``."""
    return features @ head["weight"].transpose(-1, -2) + head["bias"].unsqueeze(-2)


def cosine_logits(head: Params, features: torch.Tensor, scale: float) -> torch.Tensor:
    """Baseline++'s head (distLinear with its class-wise learnable norm): ``scale * norm_c * cos(direction_c, f)``,
    the weight norm-reparametrised as ``torch.nn.utils.weight_norm(dim=0)`` does (``norm_c * v_c / |v_c|``)."""
    directions = head["direction"]
    weight = head["norm"].unsqueeze(-1) * directions / directions.norm(dim=-1, keepdim=True)
    unit = features / (features.norm(dim=-1, keepdim=True) + FEATURE_EPS)
    return scale * unit @ weight.transpose(-1, -2)


def head_logits(kind: str, scale: float) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """The logits function of a head of ``kind`` (``"linear"`` or ``"cosine"``); ``scale``: the cosine head's."""
    if kind == "cosine":
        return lambda head, features: cosine_logits(head, features, scale)
    return linear_logits


def initial_head(kind: str, classes: int, width: int, generator: torch.Generator, *, zero: bool = False) -> Params:
    """A head as ``nn.Linear(width, classes)`` initialises one, U(-1/sqrt(width), 1/sqrt(width)) for the weight and
    the bias, drawn from ``generator`` (CPU, float32). ``"cosine"``: that weight as direction, its rows' norms as the
    norms (``weight_norm``'s initialisation), no bias. ``zero`` (linear only): zero weight and bias."""
    if zero and kind == "linear":
        return {"weight": torch.zeros(classes, width), "bias": torch.zeros(classes)}
    bound = 1 / math.sqrt(width)
    weight = (torch.rand(classes, width, generator=generator) * 2 - 1) * bound
    if kind == "cosine":
        return {"direction": weight, "norm": weight.norm(dim=-1)}
    return {"weight": weight, "bias": (torch.rand(classes, generator=generator) * 2 - 1) * bound}


class Head(nn.Module):
    """A head over every training class, for pre-training: methods/baselinetrain.py's ``nn.Linear`` with its bias
    zeroed, or Baseline++'s distLinear (``"cosine"``), initialised from ``generator`` (``initial_head``)."""

    def __init__(self, kind: str, width: int, classes: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        initial = initial_head(kind, classes, width, generator)
        if kind == "linear":
            initial["bias"].zero_()
        self.params = nn.ParameterDict({name: nn.Parameter(tensor) for name, tensor in initial.items()})
        self.logits = head_logits(kind, scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(dict(self.params), features)


@dataclasses.dataclass(frozen=True)
class SGD:
    """``torch.optim.SGD``'s update (not Nesterov) as a function: ``d = grad + weight_decay * p``; with momentum the
    buffer is ``b = d`` at the first step and ``b = momentum * b + (1 - dampening) * d`` after, and ``d = b``; then
    ``p = p - lr * d``."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0

    def step(self, params: Params, grads: Params, buffers: Params | None) -> tuple[Params, Params | None]:
        """The parameters after one step, and the momentum buffers (None without momentum)."""
        updated, kept = {}, {}
        for name, param in params.items():
            direction = grads[name] + self.weight_decay * param if self.weight_decay else grads[name]
            if self.momentum:
                if buffers is not None:
                    direction = self.momentum * buffers[name] + (1 - self.dampening) * direction
                kept[name] = direction
            updated[name] = param - self.lr * direction
        return updated, kept if self.momentum else None


def shuffled_batches(count: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of at most ``size`` over examples 0..count-1, epoch after epoch without end, each epoch a fresh
    permutation split in order (methods/baselinefinetune.py: ``np.random.permutation``, then ``rand_id[i: i +
    batch_size]``; the last batch of an epoch is smaller where ``size`` does not divide ``count``)."""
    while True:
        yield from torch.randperm(count, generator=generator).split(size)


def train_head(head: Params, features: torch.Tensor, labels: torch.Tensor,
               logits: Callable[[Params, torch.Tensor], torch.Tensor],
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sgd: SGD, batches: Iterator[torch.Tensor],
               steps: int) -> Iterator[Params]:
    """The head after each of 0..steps steps of ``sgd`` on frozen ``features`` [episodes, examples, width] with
    ``labels`` [episodes, examples]; step k on the examples ``next(batches)`` of every episode. Each episode's heads
    follow their own loss: ``loss`` is a mean over examples (``TaskSuite.loss``) and the episodes train on as many
    examples each, so the episodes times the mean over them all is the sum of the episodes' own losses."""
    episodes = features.shape[0]
    yield head
    buffers = None
    for _, index in zip(range(steps), batches):
        params = {name: tensor.detach().requires_grad_() for name, tensor in head.items()}
        scores = logits(params, features[:, index])
        total = episodes * loss(scores.flatten(0, 1), labels[:, index].flatten())
        grads = dict(zip(params, torch.autograd.grad(total, list(params.values()))))
        head, buffers = sgd.step(head, grads, buffers)
        yield head
