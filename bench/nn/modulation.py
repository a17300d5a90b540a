"""Adaptation layers: small per-task parameters that modulate a meta-learned backbone."""
from __future__ import annotations

import math

import torch
from torch import nn


def _width(layer: nn.Module) -> int:
    for attribute in ("out_features", "out_channels"):
        if hasattr(layer, attribute):
            return getattr(layer, attribute)
    if hasattr(layer, "weight") and layer.weight.dim() == 1:  # a normalisation layer
        return layer.weight.shape[0]
    raise ValueError(f"cannot tell the output width of {type(layer).__name__}; choose a Linear, Conv or norm layer")


def _pool_first(modules: list[nn.Module], after: int) -> int:
    """Where a ReLU followed by a max-pool starts at ``after``, swap them in place (they commute: the backbone's
    function is unchanged) and return the index just past the pool; else ``after``."""
    pools = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
    if (after + 1 < len(modules) and isinstance(modules[after], nn.ReLU)
            and isinstance(modules[after + 1], pools)):
        modules[after], modules[after + 1] = modules[after + 1], modules[after]
        return after + 1
    return after


class ContextModulated(nn.Module):
    """A ``nn.Sequential`` backbone whose module ``layer`` output is modulated by a context vector (CAVIA).

    Shift (``film=False``): ``h -> h + W @ context`` per feature or channel, W uniform in +-1/sqrt(context_dim), no
    bias: on the first layer's pre-activation exactly CAVIA's concatenation of the context to the input
    (regression/cavia_model.py). A zero context leaves the backbone as is.

    FiLM (``film=True``), as CAVIA's classification/models.py: one ``Linear(context_dim, 2 x width)`` with bias
    gives a scale and a shift per channel, ``(gamma, beta) = W @ context + b``, and ``h -> gamma * h + beta``; W
    Kaiming-uniform for a linear layer, +-sqrt(3 / context_dim) (--nn_initialisation kaiming), b PyTorch's default
    for a Linear, +-1/sqrt(context_dim) (CAVIA does not re-initialise it). So at a zero context the scale is b's
    first half, small and of either sign.

    Where module ``layer`` is followed by a ReLU and then a max-pool (a Conv-4 block's norm), the pool runs first
    and the modulation acts between them: after the pool and before the ReLU, as CAVIA's blocks (conv, batch norm,
    max-pool, FiLM, ReLU). The order matters where gamma is negative.
    """

    def __init__(self, backbone: nn.Sequential, context_dim: int, layer: int, film: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        if not -len(backbone) <= layer < len(backbone):
            raise ValueError(f"layer {layer} is out of range for a backbone of {len(backbone)} modules")
        layer %= len(backbone)
        modules = list(backbone)
        split = _pool_first(modules, layer + 1)
        self.context_dim, self.film = context_dim, film
        self.head, self.tail = nn.Sequential(*modules[:split]), nn.Sequential(*modules[split:])
        width = _width(backbone[layer])
        self.context_map = nn.Linear(context_dim, 2 * width if film else width, bias=film)
        with torch.no_grad():
            bound = math.sqrt(3 / context_dim) if film else 1 / math.sqrt(context_dim)
            self.context_map.weight.uniform_(-bound, bound, generator=generator)
            if film:
                bound = 1 / math.sqrt(context_dim)
                self.context_map.bias.uniform_(-bound, bound, generator=generator)

    def initial_context(self) -> torch.Tensor:
        """The context every task starts from: zero."""
        return self.context_map.weight.new_zeros(self.context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = self.head(x)
        per_channel = [-1, *[1] * (hidden.dim() - 2)]
        modulation = self.context_map(context)
        if self.film:
            gamma, beta = modulation.chunk(2)
            return self.tail(gamma.view(per_channel) * hidden + beta.view(per_channel))
        return self.tail(hidden + modulation.view(per_channel))
