"""Adaptation layers: small per-task parameters that modulate a meta-learned backbone."""
from __future__ import annotations

import math

import torch
from torch import nn


def _width(layer: nn.Module) -> int:
    for attribute in ("out_features", "out_channels", "num_features"):
        if hasattr(layer, attribute):
            return getattr(layer, attribute)
    raise ValueError(f"cannot tell the output width of {type(layer).__name__}; choose a Linear or Conv layer")


class ContextShifted(nn.Module):
    """A ``nn.Sequential`` backbone whose layer ``layer`` output is shifted by ``W @ context`` (CAVIA).

    Shifting the first layer's pre-activation by ``W @ context`` is exactly CAVIA's concatenation of
    the context vector to the input. The shift broadcasts over the spatial dimensions of conv maps.
    """

    def __init__(self, backbone: nn.Sequential, context_dim: int, layer: int, generator: torch.Generator) -> None:
        super().__init__()
        if not -len(backbone) <= layer < len(backbone):
            raise ValueError(f"layer {layer} is out of range for a backbone of {len(backbone)} modules")
        layer %= len(backbone)
        self.context_dim = context_dim
        self.head, self.tail = backbone[: layer + 1], backbone[layer + 1 :]
        self.context_map = nn.Linear(context_dim, _width(backbone[layer]), bias=False)
        bound = 1.0 / math.sqrt(context_dim)
        with torch.no_grad():
            self.context_map.weight.uniform_(-bound, bound, generator=generator)

    def initial_context(self) -> torch.Tensor:
        """The context every task starts from: zero (so the shift starts at zero)."""
        return self.context_map.weight.new_zeros(self.context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = self.head(x)
        shift = self.context_map(context)
        return self.tail(hidden + shift.view(shift.shape[-1], *[1] * (hidden.dim() - 2)))
