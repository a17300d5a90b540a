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


class ContextModulated(nn.Module):
    """A ``nn.Sequential`` backbone whose module ``layer`` output is modulated by a context vector (CAVIA).

    ``h -> (1 + W_scale @ context) * h + W_shift @ context`` (FiLM), per feature or channel; without
    ``scale`` only the shift. Shifting the first layer's pre-activation by ``W_shift @ context`` is
    exactly CAVIA's concatenation of the context to the input. A zero context leaves the backbone as is.
    """

    def __init__(self, backbone: nn.Sequential, context_dim: int, layer: int, scale: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        if not -len(backbone) <= layer < len(backbone):
            raise ValueError(f"layer {layer} is out of range for a backbone of {len(backbone)} modules")
        layer %= len(backbone)
        self.context_dim = context_dim
        self.head, self.tail = backbone[: layer + 1], backbone[layer + 1 :]
        width = _width(backbone[layer])
        self.shift = nn.Linear(context_dim, width, bias=False)
        self.scale = nn.Linear(context_dim, width, bias=False) if scale else None
        bound = 1.0 / math.sqrt(context_dim)
        with torch.no_grad():
            for linear in filter(None, (self.shift, self.scale)):
                linear.weight.uniform_(-bound, bound, generator=generator)

    def initial_context(self) -> torch.Tensor:
        """The context every task starts from: zero."""
        return self.shift.weight.new_zeros(self.context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = self.head(x)
        per_feature = [-1, *[1] * (hidden.dim() - 2)]
        if self.scale is not None:
            hidden = hidden * (1 + self.scale(context).view(per_feature))
        return self.tail(hidden + self.shift(context).view(per_feature))
